"""The netlink reader (porttrap.firewall.objects.NftObjects) in a real kernel: its counters agree
with nft's own listing, with full sets too; it follows the table; and it reads the namespace it
was made in, whichever thread uses it."""

from __future__ import annotations

import json
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
