"""NFLOG message parsing against datagrams recorded from a real kernel (tests/data/nflog/, made
by its record.py), each beside its expected parse; then broken input, which must never raise."""

from __future__ import annotations

import errno
import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porttrap.netlink import NLMSG_DONE, NLMSG_ERROR
from porttrap.sensors.nflog import (
    NFULNL_MSG_PACKET,
    LoggedPacket,
    NflogReceiver,
    bind_failure,
    config_message,
    parse_batch,
    parse_messages,
)

DATA = Path(__file__).parent.parent / "data" / "nflog"
SAMPLES = sorted(path.stem for path in DATA.glob("*.bin"))


def sample(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def as_json(packet: LoggedPacket) -> dict[str, Any]:
    return {
        "family": packet.family,
        "prefix": packet.prefix,
        "hook": packet.hook,
        "timestamp": packet.timestamp,
        "payload": packet.payload.hex(),
    }


def message(kind: int, body: bytes, length: int | None = None) -> bytes:
    """One netlink message; `length` overrides the header's length field."""
    size = 16 + len(body)
    header = struct.pack("=IHHII", size if length is None else length, kind, 0, 0, 0)
    return header + body + b"\0" * (-size % 4)


def attribute(kind: int, value: bytes, length: int | None = None) -> bytes:
    size = 4 + len(value)
    header = struct.pack("=HH", size if length is None else length, kind)
    return header + value + b"\0" * (-size % 4)


def packet_body(*attributes: bytes) -> bytes:
    return bytes([socket.AF_INET, 0, 0, 7]) + b"".join(attributes)


HDR_IPV4 = attribute(1, struct.pack("!HBx", 0x0800, 1))
IPV4_HEADER = bytes.fromhex("450000140000400040110000c0000202c0000201")


def test_the_samples_cover_tcp_udp_both_families_no_prefix_and_a_batch() -> None:
    assert SAMPLES == [
        "tcp4-no-prefix",
        "tcp4-syn",
        "tcp6-syn",
        "udp4",
        "udp4-batch-of-5",
        "udp6",
    ]


@pytest.mark.parametrize("name", SAMPLES)
def test_recorded_datagrams_parse_as_expected(name: str) -> None:
    expected = json.loads((DATA / f"{name}.expected.json").read_text())
    batch = parse_batch(sample(name))
    assert [as_json(p) for p in batch.packets] == expected
    assert (batch.malformed, batch.ignored) == (0, 0)
    assert parse_messages(sample(name)) == batch.packets


@pytest.mark.parametrize("name", ["tcp4-syn", "udp4-batch-of-5"])
def test_a_datagram_cut_anywhere_gives_the_whole_messages_before_the_cut(name: str) -> None:
    data = sample(name)
    whole = parse_messages(data)
    boundaries = _message_ends(data)
    for cut in range(len(data)):
        batch = parse_batch(data[:cut])
        complete = sum(1 for end in boundaries if end <= cut)
        assert batch.packets == whole[:complete], cut
        assert batch.malformed == (0 if cut in (0, *boundaries) else 1), cut


def _message_ends(data: bytes) -> list[int]:
    ends, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("=I", data, offset)
        offset += (length + 3) & ~3
        ends.append(min(offset, len(data)))
    return ends


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x02\x03", "shorter than a netlink header"),
        (message(NFULNL_MSG_PACKET, packet_body(HDR_IPV4), length=0), "zero length"),
        (message(NFULNL_MSG_PACKET, packet_body(HDR_IPV4), length=15), "length below header"),
        (message(NFULNL_MSG_PACKET, packet_body(HDR_IPV4), length=4096), "length past the end"),
        (message(NFULNL_MSG_PACKET, b"\x02\x00"), "no room for nfgenmsg"),
        (message(NFULNL_MSG_PACKET, packet_body()), "no packet header"),
        (message(NFULNL_MSG_PACKET, packet_body(attribute(1, b"\x08"))), "short packet header"),
        (message(NFULNL_MSG_PACKET, packet_body(attribute(9, b"", length=0))), "zero attribute"),
        (message(NFULNL_MSG_PACKET, packet_body(attribute(9, b"abcd", length=200))), "attr past"),
    ],
)
def test_malformed_input_is_skipped_and_counted(data: bytes, why: str) -> None:
    batch = parse_batch(data)
    assert (batch.packets, batch.malformed) == ([], 1), why


def test_a_good_message_after_a_broken_one_in_another_datagram_still_parses() -> None:
    broken = message(NFULNL_MSG_PACKET, packet_body())
    good = message(NFULNL_MSG_PACKET, packet_body(HDR_IPV4, attribute(9, IPV4_HEADER)))
    batch = parse_batch(broken + good)
    assert batch.malformed == 1
    assert batch.packets == [LoggedPacket(4, "", IPV4_HEADER, hook=1)]


def test_acks_and_done_messages_are_not_packets_nor_malformed() -> None:
    batch = parse_batch(message(NLMSG_ERROR, bytes(20)) + message(NLMSG_DONE, bytes(4)))
    assert (batch.packets, batch.malformed, batch.ignored) == ([], 0, 0)


def test_non_ip_packets_are_ignored_and_counted() -> None:
    arp = attribute(1, struct.pack("!HBx", 0x0806, 1))
    batch = parse_batch(message(NFULNL_MSG_PACKET, packet_body(arp, attribute(9, b"arp"))))
    assert (batch.packets, batch.malformed, batch.ignored) == ([], 0, 1)


def test_a_prefix_that_is_not_utf8_is_replaced_not_fatal() -> None:
    prefix = attribute(10, b"scan\xff\x00")
    [packet] = parse_messages(message(NFULNL_MSG_PACKET, packet_body(HDR_IPV4, prefix)))
    assert packet.prefix == "scan\ufffd"
    assert packet.payload == b""


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_batch(data)


@given(st.sampled_from(SAMPLES), st.integers(0, 1000), st.integers(0, 255))
def test_a_recorded_datagram_with_one_byte_changed_never_raises(
    name: str, where: int, value: int
) -> None:
    data = bytearray(sample(name))
    data[where % len(data)] = value
    parse_batch(bytes(data))


def test_the_bind_request_on_the_wire() -> None:
    cmd_bind = struct.pack("=HHB3x", 5, 1, 1)
    assert config_message(9, socket.AF_UNSPEC, 7, cmd_bind).hex(" ", 4) == (
        "1c000000 01040500 09000000 00000000"  # length 28, ULOG config, REQUEST|ACK, seq 9
        " 00000007"  # nfgenmsg: AF_UNSPEC, version 0, group 7 in network order
        " 05000100 01000000"  # NFULA_CFG_CMD = NFULNL_CFG_CMD_BIND
    )


def test_bind_failures_name_the_errno_and_say_what_to_do() -> None:
    assert bind_failure(7, errno.EPERM).strerror == (
        "cannot bind NFLOG group 7: EPERM (Operation not permitted): it needs CAP_NET_ADMIN, "
        "or another process (ulogd2?) has bound the group"
    )
    refused = bind_failure(7, errno.ENODEV)
    assert (refused.errno, refused.strerror) == (
        errno.ENODEV,
        "cannot bind NFLOG group 7: ENODEV (No such device)",
    )


@pytest.mark.parametrize(("group", "limit"), [(-1, 10), (65536, 10), (7, 0)])
def test_receiver_refuses_a_bad_group_or_queue_limit(group: int, limit: int) -> None:
    with pytest.raises(ValueError, match=r"group|queue_limit"):
        NflogReceiver(group, lambda _: None, limit)
