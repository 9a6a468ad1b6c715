"""The nftables JSON porttrap sends, exactly, and the parse of what nft lists (recorded)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from porttrap.firewall.plan import final_states, strongest, timeout_seconds
from porttrap.firewall.ruleset import SETS, Ruleset, parse_element, parse_entries, set_name
from porttrap.model import Ban, Unban, show

DATA = Path(__file__).parent.parent / "data" / "nft"
NOW = 1_800_000_000.0
WHERE = {"family": "inet", "table": "porttrap"}


def ban(target: str, seconds: float | None) -> Ban:
    expires = None if seconds is None else NOW + seconds
    return Ban(ipaddress.ip_network(target), NOW, expires, 1, "trap:tcp/23")


def test_set_names_and_flags() -> None:
    assert {s.name: s.flags for s in SETS} == {
        "ban_v4": ["timeout"],
        "permanent_v4": [],
        "ban_net_v4": ["interval", "timeout"],
        "permanent_net_v4": ["interval"],
        "ban_v6": ["timeout"],
        "permanent_v6": [],
        "ban_net_v6": ["interval", "timeout"],
        "permanent_net_v6": ["interval"],
    }


@pytest.mark.parametrize(
    ("target", "permanent", "name"),
    [
        ("192.0.2.1/32", False, "ban_v4"),
        ("192.0.2.0/24", True, "permanent_net_v4"),
        ("2001:db8::1/128", True, "permanent_v6"),
        ("2001:db8::/32", False, "ban_net_v6"),
    ],
)
def test_set_for_each_kind_of_target(target: str, permanent: bool, name: str) -> None:
    assert set_name(ipaddress.ip_network(target), permanent) == name


def test_replace_recreates_the_table_in_one_batch() -> None:
    bans = strongest([ban("192.0.2.1", 59.2), ban("2001:db8::/48", None)], NOW)
    commands = Ruleset().replace(bans, NOW)
    table = {"table": {"family": "inet", "name": "porttrap"}}
    assert commands[:3] == [{"add": table}, {"delete": table}, {"add": table}]
    assert commands[11] == {
        "add": {"chain": {**WHERE, "name": "prerouting", "type": "filter",
                          "hook": "prerouting", "prio": -350, "policy": "accept"}}
    }  # fmt: skip
    assert commands[12] == {
        "add": {"rule": {**WHERE, "chain": "prerouting", "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": "@ban_v4"}},
            {"drop": None},
        ]}}
    }  # fmt: skip
    assert commands[-2:] == [
        {"add": {"element": {**WHERE, "name": "ban_v4",
                             "elem": [{"elem": {"val": "192.0.2.1", "timeout": 60}}]}}},
        {"add": {"element": {**WHERE, "name": "permanent_net_v6",
                             "elem": [{"prefix": {"addr": "2001:db8::", "len": 48}}]}}},
    ]  # fmt: skip
    assert len(commands) == 3 + 8 + 1 + 8 + 2


def test_update_adds_deletes_then_adds_each_target() -> None:
    states = final_states(
        [ban("192.0.2.1", 60), Unban(ipaddress.ip_network("192.0.2.2"), NOW, "")], NOW
    )
    assert Ruleset("pt").update(states, NOW) == [
        {"add": {"element": {"family": "inet", "table": "pt", "name": "ban_v4", "elem": [
            {"elem": {"val": "192.0.2.1", "timeout": 1}},
            {"elem": {"val": "192.0.2.2", "timeout": 1}},
        ]}}},
        {"add": {"element": {"family": "inet", "table": "pt", "name": "permanent_v4",
                             "elem": ["192.0.2.1", "192.0.2.2"]}}},
        {"delete": {"element": {"family": "inet", "table": "pt", "name": "ban_v4",
                                "elem": ["192.0.2.1", "192.0.2.2"]}}},
        {"delete": {"element": {"family": "inet", "table": "pt", "name": "permanent_v4",
                                "elem": ["192.0.2.1", "192.0.2.2"]}}},
        {"add": {"element": {"family": "inet", "table": "pt", "name": "ban_v4",
                             "elem": [{"elem": {"val": "192.0.2.1", "timeout": 60}}]}}},
    ]  # fmt: skip


def test_remove_never_fails_on_a_missing_table() -> None:
    table = {"table": {"family": "inet", "name": "porttrap"}}
    assert Ruleset().remove() == [{"add": table}, {"delete": table}]


def test_parse_recorded_listing() -> None:
    listing = json.loads((DATA / "list_table.json").read_text())
    expected = json.loads((DATA / "list_table.expected.json").read_text())
    entries = parse_entries(listing["nftables"])
    assert [{"target": show(e.target), "remaining": e.remaining} for e in entries] == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("192.0.2.1", [("192.0.2.1", None)]),
        ({"prefix": {"addr": "2001:db8::", "len": 32}}, [("2001:db8::/32", None)]),
        ({"range": ["192.0.2.0", "192.0.2.5"]}, [("192.0.2.0/30", None), ("192.0.2.4/31", None)]),
        ({"elem": {"val": "2001:db8::1", "timeout": 60, "expires": 42}}, [("2001:db8::1", 42.0)]),
        ({"elem": {"val": "192.0.2.1", "comment": "no timeout"}}, [("192.0.2.1", None)]),
    ],
)
def test_parse_element_forms(raw: object, expected: list[tuple[str, float | None]]) -> None:
    assert [(show(e.target), e.remaining) for e in parse_element(raw)] == expected


def test_parse_ignores_other_objects_and_sets() -> None:
    items: list[dict[str, Any]] = [
        {"table": {"family": "inet", "name": "porttrap"}},
        {"set": {"name": "someone_elses", "elem": ["192.0.2.9"]}},
        {"set": {"name": "ban_v4"}},
        {"chain": {"name": "prerouting"}},
    ]
    assert parse_entries(items) == []


def test_timeout_rounds_up_to_at_least_one_second() -> None:
    assert timeout_seconds(ban("192.0.2.1", 0.001), NOW) == 1
    assert timeout_seconds(ban("192.0.2.1", 60.0), NOW) == 60
    assert timeout_seconds(ban("192.0.2.1", 60.01), NOW) == 61
    assert timeout_seconds(ban("192.0.2.1", None), NOW) is None


def test_final_states_last_change_wins_and_over_bans_lift() -> None:
    target = ipaddress.ip_network("192.0.2.1")
    over = Ban(target, NOW - 100, NOW - 1, 1, "old")
    assert final_states([ban("192.0.2.1", 60), over], NOW) == {target: None}
    assert final_states([Unban(target, NOW, ""), ban("192.0.2.1", 60)], NOW) == {
        target: ban("192.0.2.1", 60)
    }
