"""The netlink half of reading counters: requests and replies as bytes."""

from __future__ import annotations

import struct

import pytest

from porttrap import netlink
from porttrap.errors import FirewallError
from porttrap.firewall import objects


def counter_message(table: str, name: str, packets: int) -> bytes:
    data = netlink.attribute(objects.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets))
    body = struct.pack("!BBH", objects.NFPROTO_INET, 0, 0)
    body += netlink.attribute(objects.NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += netlink.attribute(objects.NFTA_OBJ_NAME, name.encode() + b"\0")
    body += netlink.attribute(objects.NFTA_OBJ_DATA | 0x8000, data)  # NLA_F_NESTED
    kind = objects.NFNL_SUBSYS_NFTABLES << 8 | 20  # NFT_MSG_NEWOBJ, as dumps answer
    return netlink.message(kind, 0, 1, body)


def test_a_dump_reply_gives_packets_per_counter_of_the_table_only() -> None:
    done = netlink.message(netlink.NLMSG_DONE, 0, 1, b"\0" * 4)
    data = counter_message("porttrap", "block_a", 7) + counter_message("other", "quiet", 3)
    assert objects.parse_counters(data, "porttrap") == ({"block_a": 7}, False)
    assert objects.parse_counters(counter_message("porttrap", "quiet", 2**40) + done,
                                  "porttrap") == ({"quiet": 2**40}, True)  # fmt: skip


def test_an_error_reply_says_what_was_read() -> None:
    error = netlink.message(netlink.NLMSG_ERROR, 0, 1, struct.pack("=i", -1) + b"\0" * 16)
    with pytest.raises(FirewallError, match="counters of table inet porttrap: errno 1"):
        objects.parse_counters(error, "porttrap")


def test_the_request_asks_for_counter_objects_of_one_table() -> None:
    messages, bad = netlink.split(objects.counters_request(5, "porttrap"))
    assert bad == 0
    [(kind, seq, body)] = messages
    assert (kind, seq) == (objects.NFNL_SUBSYS_NFTABLES << 8 | objects.NFT_MSG_GETOBJ, 5)
    attrs = netlink.attributes(body, 4) or {}
    assert attrs[objects.NFTA_OBJ_TABLE] == b"porttrap\0"
    assert attrs[objects.NFTA_OBJ_TYPE] == struct.pack("!I", objects.NFT_OBJECT_COUNTER)
