"""The netlink reader (porttrap.firewall.objects.NftObjects) in a real kernel: its counters agree
with nft's own listing, with full sets too; it follows the table; and it reads the namespace it
was made in, whichever thread uses it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from netns import Netns, in_host_netns
from porttrap.firewall.objects import NftObjects

pytestmark = pytest.mark.kernel

RULESET = """
table inet porttrap {
    counter block_a { packets 7 bytes 420 }
    counter quiet { }
    set big { type ipv6_addr; size 70000; }
}
table inet other {
    counter block_a { packets 99 bytes 1 }
}
"""


@contextmanager
def reader_in(ns: Netns) -> Iterator[NftObjects]:
    """A reader made inside `ns`, used from wherever the caller is; closed afterwards."""
    with ns.inside():
        assert not in_host_netns()
        objects = NftObjects()
    try:
        yield objects
    finally:
        objects.close()


def test_counters_match_nfts_listing_and_other_tables_are_left_out(
    netns_factory: Callable[[], Netns], tmp_path: Path
) -> None:
    ns = netns_factory()
    elements = ", ".join(f"2001:db8::{n:x}" for n in range(1, 20001))
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(f"{RULESET}\nadd element inet porttrap big {{ {elements} }}\n")
    ns.run(["nft", "-f", str(ruleset)])
    with reader_in(ns) as objects:
        found = objects.counters("porttrap")
        again = objects.counters("porttrap")  # the same socket answers a second dump
    listed = json.loads(ns.run(["nft", "-j", "list", "counters", "table", "inet", "porttrap"]))
    expected = {
        item["counter"]["name"]: item["counter"]["packets"]
        for item in listed["nftables"]
        if "counter" in item
    }
    assert found == again == expected == {"block_a": 7, "quiet": 0}


def test_a_missing_table_has_no_counters(netns_factory: Callable[[], Netns]) -> None:
    with reader_in(netns_factory()) as objects:
        assert objects.counters("porttrap") == {}


def test_table_exists_follows_the_kernel(netns_factory: Callable[[], Netns]) -> None:
    ns = netns_factory()
    with reader_in(ns) as objects:
        assert not objects.table_exists("porttrap")
        ns.run(["nft", "add", "table", "inet", "porttrap"])
        ns.run(["nft", "add", "table", "ip", "other"])
        assert objects.table_exists("porttrap")
        assert not objects.table_exists("other")  # family ip, not inet
        ns.run(["nft", "delete", "table", "inet", "porttrap"])
        assert not objects.table_exists("porttrap")


def test_the_reader_answers_for_the_namespace_it_was_made_in(
    netns_factory: Callable[[], Netns],
) -> None:
    """Made in A, used from a thread that is in B: it still reads A (a socket opened at each
    read would read B, as the module functions this replaced did)."""
    a, b = netns_factory(), netns_factory()
    a.run(
        ["nft", "add table inet porttrap; add counter inet porttrap block_a { packets 7 bytes 1 }"]
    )
    b.run(
        ["nft", "add table inet porttrap; add counter inet porttrap block_a { packets 3 bytes 1 }"]
    )
    b.run(["nft", "add", "table", "inet", "only_b"])

    def from_inside_b(objects: NftObjects) -> tuple[dict[str, int], bool]:
        with b.inside():
            assert not in_host_netns()
            return objects.counters("porttrap"), objects.table_exists("only_b")

    with reader_in(a) as of_a, reader_in(b) as of_b, ThreadPoolExecutor(1) as pool:
        assert pool.submit(from_inside_b, of_a).result() == ({"block_a": 7}, False)
        assert pool.submit(from_inside_b, of_b).result() == ({"block_a": 3}, True)


SHAPED = """
table inet porttrap {
    set ban_v4 { type ipv4_addr; flags timeout; }
    chain out {
        type filter hook output priority 0; policy accept;
        udp dport 9 counter
        ip daddr @ban_v4 counter drop
    }
}
"""
SEND = (
    "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))"
)


def test_the_shape_ignores_counts_and_elements_and_sees_rules_chains_and_sets(
    netns_factory: Callable[[], Netns], tmp_path: Path
) -> None:
    """What the check compares (the chains, rules and sets porttrap wrote): packets counted
    and elements added change nothing; a flushed chain, a deleted chain, a changed rule or a
    set gone do."""
    ns = netns_factory()
    ruleset = tmp_path / "shaped.nft"
    ruleset.write_text(SHAPED)
    ns.run(["nft", "-f", str(ruleset)])
    with reader_in(ns) as objects:
        written = objects.shape("porttrap")
        ns.run(["ip", "link", "set", "lo", "up"])
        ns.run([sys.executable, "-c", SEND])
        ns.run(["nft", "add", "element", "inet", "porttrap", "ban_v4", "{ 192.0.2.9 }"])
        counted = json.loads(ns.run(["nft", "-j", "list", "chain", "inet", "porttrap", "out"]))
        assert '"packets": 1' in json.dumps(counted), "the datagram was counted"
        assert objects.shape("porttrap") == written
        ns.run(["nft", "flush", "set", "inet", "porttrap", "ban_v4"])
        assert objects.shape("porttrap") == written  # elements: the core compares the bans
        changes = [
            ["nft", "flush", "chain", "inet", "porttrap", "out"],
            ["nft", "delete", "chain", "inet", "porttrap", "out"],
            ["nft", "delete", "set", "inet", "porttrap", "ban_v4"],
        ]
        seen = {written}
        for change in changes:
            ns.run(change)
            seen.add(objects.shape("porttrap"))
        assert len(seen) == 1 + len(changes), "each change gives another shape"
        ns.run(["nft", "-f", str(ruleset)])
        assert objects.shape("porttrap") == written, "the same rules written again"
