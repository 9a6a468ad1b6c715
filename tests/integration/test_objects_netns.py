"""Counters read over netlink (porttrap.firewall.objects) agree with nft's own listing, and
cost the same with full sets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from netns import Netns
from porttrap.firewall.objects import read_counters, table_exists

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


def test_counters_match_nfts_listing_and_other_tables_are_left_out(
    netns_factory: Callable[[], Netns], tmp_path: Path
) -> None:
    ns = netns_factory()
    elements = ", ".join(f"2001:db8::{n:x}" for n in range(1, 20001))
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text(f"{RULESET}\nadd element inet porttrap big {{ {elements} }}\n")
    ns.run(["nft", "-f", str(ruleset)])
    with ns.inside():
        found = read_counters("porttrap")
    listed = json.loads(ns.run(["nft", "-j", "list", "counters", "table", "inet", "porttrap"]))
    expected = {
        item["counter"]["name"]: item["counter"]["packets"]
        for item in listed["nftables"]
        if "counter" in item
    }
    assert found == expected == {"block_a": 7, "quiet": 0}


def test_a_missing_table_has_no_counters(netns_factory: Callable[[], Netns]) -> None:
    ns = netns_factory()
    with ns.inside():
        assert read_counters("porttrap") == {}


def test_table_exists_follows_the_kernel(netns_factory: Callable[[], Netns]) -> None:
    ns = netns_factory()
    with ns.inside():
        assert not table_exists("porttrap")
    ns.run(["nft", "add", "table", "inet", "porttrap"])
    ns.run(["nft", "add", "table", "ip", "other"])
    with ns.inside():
        assert table_exists("porttrap")
        assert not table_exists("other")  # family ip, not inet
