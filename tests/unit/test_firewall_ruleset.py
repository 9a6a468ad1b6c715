"""The nft commands porttrap sends, exactly, and the parse of what nft lists (recorded)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from porttrap.firewall.nftsets import nft_time
from porttrap.firewall.plan import LINGER, Written, final_states, strongest, timeout_seconds
from porttrap.firewall.ruleset import (
    SETS,
    Ruleset,
    parse_element,
    parse_entries,
    place,
)
from porttrap.model import Ban, Change, IPNetwork, Unban, show
from porttrap.testing.clock import FakeClock

DATA = Path(__file__).parent.parent / "data" / "nft"
NOW = 1_800_000_000.0


def ban(target: str, seconds: float | None) -> Ban:
    expires = None if seconds is None else NOW + seconds
    return Ban(ipaddress.ip_network(target), NOW, expires, 1, "trap:tcp/23")


def test_set_names_and_flags() -> None:
    assert {s.name: s.flags for s in SETS} == {
        "ban_v4": ["timeout"],
        "ban_net_v4": ["interval", "timeout"],
        "ban_v6": ["timeout"],
        "ban_net_v6": ["interval", "timeout"],
    }


@pytest.mark.parametrize(
    ("target", "name", "nft_key"),
    [
        ("192.0.2.1/32", "ban_v4", "192.0.2.1"),
        ("192.0.2.0/24", "ban_net_v4", "192.0.2.0/24"),
        ("2001:db8::1/128", "ban_v6", "2001:db8::1"),
        ("2001:db8::/32", "ban_net_v6", "2001:db8::/32"),
        ("2001:db8:0:0:1::/80", "ban_net_v6", "2001:db8:0:0:1::/80"),
        ("::ffff:192.0.2.1/128", "ban_v6", "::ffff:192.0.2.1"),
    ],
)
def test_set_and_key_for_each_kind_of_target(target: str, name: str, nft_key: str) -> None:
    assert place(ipaddress.ip_network(target)) == (name, nft_key)


def test_replace_recreates_the_table_in_one_batch() -> None:
    bans = strongest([ban("192.0.2.1", 59.2), ban("2001:db8::/48", None)], NOW)
    assert Ruleset().replace(bans, NOW) == [
        "add table inet porttrap",
        "delete table inet porttrap",
        "add table inet porttrap",
        "add set inet porttrap ban_v4 { type ipv4_addr; flags timeout; }",
        "add set inet porttrap ban_net_v4 { type ipv4_addr; flags interval,timeout; }",
        "add set inet porttrap ban_v6 { type ipv6_addr; flags timeout; }",
        "add set inet porttrap ban_net_v6 { type ipv6_addr; flags interval,timeout; }",
        "add chain inet porttrap prerouting "
        "{ type filter hook prerouting priority -350; policy accept; }",
        "add rule inet porttrap prerouting ip saddr @ban_v4 drop",
        "add rule inet porttrap prerouting ip saddr @ban_net_v4 drop",
        "add rule inet porttrap prerouting ip6 saddr @ban_v6 drop",
        "add rule inet porttrap prerouting ip6 saddr @ban_net_v6 drop",
        "add element inet porttrap ban_v4 { 192.0.2.1 timeout 60s }",
        "add element inet porttrap ban_net_v6 { 2001:db8::/48 }",
    ]


def test_update_adds_deletes_then_adds_each_target() -> None:
    changes: list[Change] = [
        ban("192.0.2.1", 60),
        Unban(ipaddress.ip_network("192.0.2.2"), NOW, ""),
        ban("192.0.2.3", None),
        ban("2001:db8::/64", 0.5),
    ]
    assert Ruleset("pt").update(final_states(changes, NOW).items(), NOW) == [
        "add element inet pt ban_v4 { 192.0.2.1 timeout 1s, 192.0.2.2 timeout 1s, "
        "192.0.2.3 timeout 1s }",
        "add element inet pt ban_net_v6 { 2001:db8::/64 timeout 1s }",
        "delete element inet pt ban_v4 { 192.0.2.1, 192.0.2.2, 192.0.2.3 }",
        "delete element inet pt ban_net_v6 { 2001:db8::/64 }",
        "add element inet pt ban_v4 { 192.0.2.1 timeout 60s, 192.0.2.3 }",
        "add element inet pt ban_net_v6 { 2001:db8::/64 timeout 1s }",
    ]


def test_update_of_unbans_only_adds_then_deletes() -> None:
    states = final_states([Unban(ipaddress.ip_network("2001:db8::9"), NOW, "")], NOW)
    assert Ruleset().update(states.items(), NOW) == [
        "add element inet porttrap ban_v6 { 2001:db8::9 timeout 1s }",
        "delete element inet porttrap ban_v6 { 2001:db8::9 }",
    ]


def test_remove_never_fails_on_a_missing_table() -> None:
    assert Ruleset().remove() == ["add table inet porttrap", "delete table inet porttrap"]


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
        ({"elem": {"val": "192.0.2.1", "timeout": 60}}, [("192.0.2.1", 60.0)]),
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


@pytest.mark.parametrize(
    ("seconds", "written"),
    [(1, "1s"), (3600, "3600s"), (99_999_999, "99999999s"), (100_000_000, "1157d9h46m40s"),
     (315_360_000, "3650d"), (315_360_061, "3650d1m1s")],
)  # fmt: skip
def test_nft_times_never_have_more_than_8_digits_in_one_unit(seconds: int, written: str) -> None:
    """nft 1.0.6 refuses '315360000s' ("value too large") and takes '3650d'."""
    assert nft_time(seconds) == written


def test_update_only_adds_a_ban_on_a_target_known_absent() -> None:
    changes: list[Change] = [
        ban("192.0.2.1", 60),
        ban("192.0.2.3", None),
        Unban(ipaddress.ip_network("192.0.2.2"), NOW, ""),
    ]
    absent = {ipaddress.ip_network("192.0.2.1"), ipaddress.ip_network("192.0.2.2")}
    assert Ruleset("pt").update(final_states(changes, NOW).items(), NOW, absent) == [
        "add element inet pt ban_v4 { 192.0.2.3 timeout 1s, 192.0.2.2 timeout 1s }",
        "delete element inet pt ban_v4 { 192.0.2.3, 192.0.2.2 }",
        "add element inet pt ban_v4 { 192.0.2.1 timeout 60s, 192.0.2.3 }",
    ]


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_written_knows_nothing_before_a_replace_and_after_a_teardown() -> None:
    written = Written(FakeClock(NOW).monotonic)
    states = list(final_states([ban("192.0.2.1", 60)], NOW).items())
    assert written.writing(states, NOW) == set()  # before a replace: nothing known
    written.replaced({}, NOW)
    assert written.writing(states, NOW) == {net("192.0.2.1")}
    assert written.writing(states, NOW) == set()  # written just now: may be there
    written.forget()
    assert written.writing(states, NOW) == set() and len(written) == 0


def test_written_holds_what_was_replaced_or_written_until_lifted_or_long_expired() -> None:
    def absent(*targets: str) -> set[IPNetwork]:
        """What a (trial) write of bans on `targets` would find absent, on a copy."""
        trial = Written(clock.monotonic)
        trial.replaced({}, clock.now())
        trial._until = dict(written._until or {})
        return trial.writing([(net(t), ban(t, 1)) for t in targets], clock.now())

    clock = FakeClock(NOW)
    written = Written(clock.monotonic)
    written.replaced({net("192.0.2.1"): ban("192.0.2.1", 60)}, NOW)
    everything = ("192.0.2.1", "192.0.2.2", "2001:db8::/64")
    states = [
        (net("192.0.2.2"), ban("192.0.2.2", None)),
        (net("2001:db8::/64"), ban("2001:db8::/64", 5)),
    ]
    assert written.writing(states, NOW) == {net("192.0.2.2"), net("2001:db8::/64")}
    assert absent(*everything) == set() and len(written) == 3
    written.lifted([(net("192.0.2.2"), None), (net("2001:db8::/64"), ban("2001:db8::/64", 5))])
    assert absent(*everything) == {net("192.0.2.2")}
    clock.advance(60 + LINGER)
    written.prune()  # 192.0.2.1's element expired at +60: may linger
    assert absent(*everything) == {net("192.0.2.2"), net("2001:db8::/64")}
    clock.advance(1)
    written.prune()
    assert len(written) == 0
    written.writing([(net("192.0.2.2"), ban("192.0.2.2", None))], clock.now())
    clock.advance(10**9)
    written.prune()  # a permanent ban is never forgotten
    assert absent(*everything) == {net("192.0.2.1"), net("2001:db8::/64")}


def test_written_keeps_a_ban_the_kernel_still_holds_when_the_wall_clock_jumps_forward() -> None:
    """The kernel's timeouts run on a clock that never jumps: a wall clock set 2 days forward
    (NTP on a host that booted with no clock) leaves the elements there for their time left.
    Taken as gone, a longer ban on one would be a bare `add`, and older kernels keep the
    element's old, shorter timeout: the ban would end early in the kernel."""
    clock = FakeClock(NOW)
    written = Written(clock.monotonic)
    written.replaced({}, NOW)
    target = net("192.0.2.1")
    assert written.writing([(target, ban("192.0.2.1", 3600))], NOW) == {target}
    clock.step(2 * 86400)  # the wall clock jumps; 10 s go by on the kernel's clock
    clock.advance(10)
    written.prune()
    longer = Ban(target, clock.now(), clock.now() + 86400, 2, "manual")
    assert written.writing([(target, longer)], clock.now()) == set()  # all three operations
    clock.advance(86400 + LINGER + 1)  # the longer ban's element is long gone
    written.prune()
    assert len(written) == 0
