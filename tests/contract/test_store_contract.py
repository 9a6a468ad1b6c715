"""One contract for every Store: SQLite on a temporary file, the in-memory fake, and the
fleet's shared log in a real PostgreSQL (`FleetLogStore` as host web-1, over TCP with TLS and
the host's own role, as a host connects; one cluster for the module: tests/fleetlog.py).
Fixed timestamps throughout; nothing here reads the clock (the fleet store's reader clock is
a `FakeClock` at T0).

The fleet's log holds no hits (each host keeps its own in SQLite): the tests of hits, and
those that mix hits with bans, take `hits_store` (SQLite and the fake); every test of bans
alone takes `store` (all three). Neither skips a store: each test runs on the stores its
fixture names, all of them under CI (a skip fails there: tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import report_sample as sample
from fleetlog import FleetLog
from porttrap.errors import StoreError
from porttrap.model import Ban, Hit, Outcome, Proto, Unban
from porttrap.report.figures import (
    DAY,
    KindCount,
    Period,
    PortCount,
    ReportFigures,
    SourceFigures,
)
from porttrap.store.base import HistoryEntry, Store, StoredBan
from porttrap.store.sqlite import SQLiteStore
from porttrap.testing.clock import FakeClock
from porttrap.testing.memory_store import MemoryStore

T0 = 1_800_000_000.0
HOUR = 3600.0


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "sqlite":
        return SQLiteStore.open(tmp_path / "state" / "porttrap.db")
    if kind == "memory":
        return MemoryStore()
    # one cluster for the module (tests/conftest.py), started only when a fleet test runs
    fleet: FleetLog = request.getfixturevalue("fleet_log")
    fleet.clear()
    return fleet.store("web-1", FakeClock(T0))


# The fleet's log holds bans, never hits: tests that record hits run on the two others.
@pytest.fixture(params=["sqlite", "memory", "fleet"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, request, tmp_path)
    yield made
    made.close()


@pytest.fixture(params=["sqlite", "memory"])
def hits_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, request, tmp_path)
    yield made
    made.close()


def ban(target: str, at: float = T0, hours: float | None = 1.0, count: int = 1) -> Ban:
    expires = None if hours is None else at + hours * HOUR
    return Ban(ipaddress.ip_network(target), at, expires, count, f"trap:tcp/23 #{count}")


def unban(target: str, at: float, reason: str = "by hand") -> Unban:
    return Unban(ipaddress.ip_network(target), at, reason)


def hit(source: str, at: float = T0, port: int = 23, proto: Proto = Proto.TCP) -> Hit:
    local = "2001:db8::1" if ":" in source else "192.0.2.1"
    return Hit(
        at=at,
        source=ipaddress.ip_address(source),
        source_port=40000 + port,
        local=ipaddress.ip_address(local),
        port=port,
        proto=proto,
        kind="connect" if proto is Proto.TCP else "udp",
    )


def summary(entries: list[HistoryEntry]) -> list[tuple[float, str, str]]:
    """(at, what, address) for each entry: enough to compare order and filtering."""
    out = []
    for entry in entries:
        subject = entry.hit.source if entry.hit else entry.ban.target if entry.ban else None
        out.append((entry.at - T0, entry.what, str(subject)))
    return out


# -- an empty store ----------------------------------------------------------------------


def test_an_empty_store_has_nothing(store: Store) -> None:
    assert store.active_bans(T0) == []
    assert store.bans_since(0.0) == []
    assert store.history() == []
    assert store.counts(T0) == (0, 0)
    assert store.prune_hits(T0) == 0


def test_empty_batches_are_fine(store: Store) -> None:
    store.add_hits([])
    store.add_bans([])
    store.lift([])
    store.record([], [])
    assert store.history() == []


# -- bans --------------------------------------------------------------------------------


def test_bans_come_back_exactly_as_given(store: Store) -> None:
    bans = [
        ban("198.51.100.7", at=T0 + 0.25),
        ban("2001:db8::7", at=T0 + 1, hours=None, count=3),
        ban("203.0.113.0/24", at=T0 + 2, hours=24, count=2),
        ban("2001:db8:1::/48", at=T0 + 3),
    ]
    store.add_bans(bans)
    assert store.active_bans(T0 + 10) == bans


def test_a_ban_is_active_until_the_instant_it_expires(store: Store) -> None:
    store.add_bans([ban("198.51.100.7", hours=1.0)])
    assert len(store.active_bans(T0 + HOUR - 0.001)) == 1
    assert store.active_bans(T0 + HOUR) == []


def test_a_permanent_ban_never_expires(store: Store) -> None:
    store.add_bans([ban("198.51.100.7", hours=None)])
    assert store.active_bans(T0 + 100 * 365 * 86400) == [ban("198.51.100.7", hours=None)]


def test_only_the_newest_active_ban_of_a_target_is_listed(store: Store) -> None:
    first, second = ban("198.51.100.7", T0, 2.0), ban("198.51.100.7", T0 + 60, 4.0, count=2)
    store.add_bans([second, first])  # recorded out of order: banned_at decides
    assert store.active_bans(T0 + 120) == [second]


def test_at_the_same_instant_the_ban_recorded_last_is_newest(store: Store) -> None:
    first, second = ban("198.51.100.7", count=1), ban("198.51.100.7", count=2)
    store.add_bans([first])
    store.add_bans([second])
    assert store.active_bans(T0) == [second]


def test_a_newer_ban_replaces_an_older_one_even_when_shorter(store: Store) -> None:
    # as in the kernel (and the policy): `porttrap ban --for 1h` on a permanently banned
    # address leaves it banned for an hour, then not at all
    permanent = ban("198.51.100.7", T0, None)
    short = ban("198.51.100.7", T0 + 60, 1.0, count=2)
    store.add_bans([permanent, short])
    assert store.active_bans(T0 + 120) == [short]
    assert store.active_bans(T0 + 2 * HOUR) == []
    assert store.counts(T0 + 2 * HOUR) == (0, 0)


def test_active_bans_are_listed_oldest_first(store: Store) -> None:
    bans = [ban(f"198.51.100.{n}", at=T0 + (5 - n)) for n in range(5)]
    store.add_bans(bans)
    assert store.active_bans(T0 + 10) == sorted(bans, key=lambda b: b.banned_at)


def test_counts_match_the_active_bans(store: Store) -> None:
    store.add_bans(
        [
            ban("198.51.100.1", hours=1.0),
            ban("198.51.100.2", hours=None),
            ban("198.51.100.2", at=T0 + 1, hours=2.0, count=2),  # newest of .2: not permanent
            ban("198.51.100.3", at=T0 + 1, hours=None, count=3),
            ban("198.51.100.4", hours=1.5),
        ]
    )
    active = store.active_bans(T0 + HOUR - 1)
    assert store.counts(T0 + HOUR - 1) == (len(active), 1) == (4, 1)
    assert store.counts(T0 + HOUR) == (3, 1)


# -- lifting -----------------------------------------------------------------------------


def test_lift_ends_every_active_ban_of_the_target(store: Store) -> None:
    store.add_bans([ban("198.51.100.7", T0, 2.0), ban("198.51.100.7", T0 + 60, 4.0, count=2)])
    store.add_bans([ban("198.51.100.8")])
    store.lift([unban("198.51.100.7", T0 + 120, "allow-listed")])
    assert store.active_bans(T0 + 121) == [ban("198.51.100.8")]
    lifted = [s for s in store.bans_since(0.0) if s.lifted_at is not None]
    assert [(s.ban.ban_count, s.lifted_at, s.lifted_reason) for s in lifted] == [
        (1, T0 + 120, "allow-listed"),
        (2, T0 + 120, "allow-listed"),
    ]


def test_lift_leaves_expired_and_later_bans_alone(store: Store) -> None:
    expired = ban("198.51.100.7", T0, 0.5)
    later = ban("198.51.100.7", T0 + 2 * HOUR, 1.0, count=2)
    store.add_bans([expired, later])
    store.lift([unban("198.51.100.7", T0 + HOUR)])
    assert store.bans_since(0.0) == [StoredBan(expired), StoredBan(later)]


def test_lifting_twice_keeps_the_first_lift(store: Store) -> None:
    store.add_bans([ban("198.51.100.7", hours=None)])
    store.lift([unban("198.51.100.7", T0 + 10, "first")])
    store.lift([unban("198.51.100.7", T0 + 20, "second")])
    (stored,) = store.bans_since(0.0)
    assert (stored.lifted_at, stored.lifted_reason) == (T0 + 10, "first")


def test_lift_matches_the_target_exactly(store: Store) -> None:
    network, inside = ban("203.0.113.0/24"), ban("203.0.113.9")
    store.add_bans([network, inside])
    store.lift([unban("203.0.113.9", T0 + 1)])
    assert store.active_bans(T0 + 2) == [network]


def test_record_adds_the_bans_then_lifts(store: Store) -> None:
    """One batch of the daemon's changes, in one write: the same as `add_bans` then `lift`,
    so a lift in it also ends a ban made in it."""
    earlier, left = ban("198.51.100.7", T0), ban("198.51.100.8", T0 + 5)
    made_and_lifted = ban("198.51.100.9", T0 + 1)
    lifts = [unban("198.51.100.7", T0 + 6, "allow-listed"), unban("198.51.100.9", T0 + 7)]
    store.add_bans([earlier])
    store.record([made_and_lifted, left], lifts)
    assert store.bans_since(0.0) == [
        StoredBan(earlier, T0 + 6, "allow-listed"),
        StoredBan(made_and_lifted, T0 + 7, "by hand"),
        StoredBan(left, None, None),
    ]
    assert store.active_bans(T0 + 10) == [left]


# -- bans_since --------------------------------------------------------------------------


def test_bans_since_lists_lifted_ones_too_oldest_first(store: Store) -> None:
    old, edge, late = ban("198.51.100.1", T0 - 1), ban("198.51.100.2", T0), ban("::7", T0 + 5)
    store.add_bans([late, old, edge])
    store.lift([unban("::7", T0 + 6, "oops")])
    assert store.bans_since(T0) == [StoredBan(edge), StoredBan(late, T0 + 6, "oops")]


def test_bans_to_restore_are_recent_ones_and_old_ones_still_active(store: Store) -> None:
    forgotten = ban("198.51.100.1", T0 - 100, hours=0.01)  # old and over: not needed
    old_permanent = ban("198.51.100.2", T0 - 100, hours=None)  # old but still active
    old_long = ban("198.51.100.3", T0 - 50, hours=10)  # old but still active
    old_lifted = ban("198.51.100.4", T0 - 40, hours=None)  # old, active, but lifted
    recent_over = ban("198.51.100.5", T0, hours=0.001)  # recent: counts for escalation
    recent = ban("2001:db8::5", T0 + 1)
    store.add_bans([recent, forgotten, old_permanent, old_long, old_lifted, recent_over])
    store.lift([unban("198.51.100.4", T0 - 30)])
    assert store.bans_to_restore(T0 + 60, since=T0) == [
        StoredBan(old_permanent),
        StoredBan(old_long),
        StoredBan(recent_over),
        StoredBan(recent),
    ]


# -- history -----------------------------------------------------------------------------


def test_history_is_newest_first_with_hits_bans_and_unbans(hits_store: Store) -> None:
    hits_store.add_hits([(hit("198.51.100.7", T0), Outcome.BANNED)])
    hits_store.add_bans([ban("198.51.100.7", T0)])
    hits_store.add_hits([(hit("198.51.100.7", T0 + 5, port=79), Outcome.ALREADY_BANNED)])
    hits_store.lift([unban("198.51.100.7", T0 + 9, "allow-listed")])
    entries = hits_store.history()
    assert summary(entries) == [
        (9, "unban", "198.51.100.7/32"),
        (5, "hit", "198.51.100.7"),
        (0, "ban", "198.51.100.7/32"),  # at the same instant the ban follows its hit
        (0, "hit", "198.51.100.7"),
    ]
    assert entries[0].unban_reason == "allow-listed"
    assert entries[0].ban == ban("198.51.100.7", T0)
    assert entries[1].outcome is Outcome.ALREADY_BANNED
    assert entries[1].hit == hit("198.51.100.7", T0 + 5, port=79)
    assert entries[3].outcome is Outcome.BANNED


def test_history_keeps_the_newest_up_to_the_limit(hits_store: Store) -> None:
    hits_store.add_hits([(hit("198.51.100.7", T0 + n), Outcome.COUNTED) for n in range(10)])
    hits_store.add_bans([ban("198.51.100.7", T0 + 3.5)])
    assert [at for at, _what, _address in summary(hits_store.history(limit=4))] == [9, 8, 7, 6]
    assert len(hits_store.history(limit=100)) == 11
    assert hits_store.history(limit=0) == []


def test_hits_at_the_same_instant_come_newest_recorded_first(hits_store: Store) -> None:
    hits_store.add_hits([(hit("198.51.100.7", port=p), Outcome.COUNTED) for p in (1, 2, 3)])
    assert [e.hit.port for e in hits_store.history() if e.hit] == [3, 2, 1]


def test_history_of_one_address(hits_store: Store) -> None:
    hits_store.add_hits([(hit("198.51.100.7", T0), Outcome.COUNTED)])
    hits_store.add_hits([(hit("198.51.100.8", T0 + 1), Outcome.COUNTED)])
    hits_store.add_bans([ban("198.51.100.7", T0 + 2), ban("198.51.100.0/24", T0 + 3)])
    address = ipaddress.ip_network("198.51.100.7")
    assert summary(hits_store.history(address)) == [
        (3, "ban", "198.51.100.0/24"),  # the network's ban holds the address
        (2, "ban", "198.51.100.7/32"),
        (0, "hit", "198.51.100.7"),
    ]
    other = ipaddress.ip_network("198.51.101.7")
    assert summary(hits_store.history(other)) == []


def test_history_of_a_network_holds_everything_inside_it(hits_store: Store) -> None:
    hits_store.add_hits(
        [
            (hit("198.51.100.7", T0), Outcome.COUNTED),
            (hit("198.51.101.7", T0 + 1), Outcome.COUNTED),  # outside the /24
            (hit("2001:db8::7", T0 + 2), Outcome.COUNTED),  # another family
        ]
    )
    hits_store.add_bans(
        [
            ban("198.51.100.0/25", T0 + 3),
            ban("198.51.0.0/16", T0 + 4),  # wider than the /24: it holds it
            ban("198.51.100.200", T0 + 5),
            ban("198.52.0.0/16", T0 + 5.5),  # neither inside nor holding
        ]
    )
    hits_store.lift([unban("198.51.100.200", T0 + 6)])
    network = ipaddress.ip_network("198.51.100.0/24")
    assert summary(hits_store.history(network)) == [
        (6, "unban", "198.51.100.200/32"),
        (5, "ban", "198.51.100.200/32"),
        (4, "ban", "198.51.0.0/16"),
        (3, "ban", "198.51.100.0/25"),
        (0, "hit", "198.51.100.7"),
    ]
    assert len(hits_store.history(network, limit=2)) == 2


def test_history_of_an_ipv6_network(hits_store: Store) -> None:
    hits_store.add_hits([(hit("2001:db8::7", T0), Outcome.COUNTED)])
    hits_store.add_hits([(hit("198.51.100.7", T0 + 1), Outcome.COUNTED)])
    hits_store.add_bans([ban("2001:db8::/64", T0 + 2)])
    network = ipaddress.ip_network("2001:db8::/32")
    assert summary(hits_store.history(network)) == [
        (2, "ban", "2001:db8::/64"),
        (0, "hit", "2001:db8::7"),
    ]


def test_history_of_bans_and_lifts_alone(store: Store) -> None:
    """Bans and their lifts, newest first (the history of a store with no hits: the fleet's)."""
    store.add_bans([ban("198.51.100.7", T0), ban("2001:db8::/64", T0 + 2, count=2)])
    store.lift([unban("198.51.100.7", T0 + 9, "allow-listed")])
    store.add_bans([ban("198.51.100.7", T0 + 9, hours=None, count=3)])
    entries = store.history()
    assert summary(entries) == [
        (9, "unban", "198.51.100.7/32"),  # at the same instant the lift follows the ban
        (9, "ban", "198.51.100.7/32"),
        (2, "ban", "2001:db8::/64"),
        (0, "ban", "198.51.100.7/32"),
    ]
    assert (entries[0].ban, entries[0].unban_reason) == (ban("198.51.100.7", T0), "allow-listed")
    assert entries[1].ban == ban("198.51.100.7", T0 + 9, hours=None, count=3)
    assert summary(store.history(limit=2)) == summary(entries[:2])
    assert store.history(limit=0) == []


def test_history_of_bans_within_an_address_or_a_network(store: Store) -> None:
    store.add_bans(
        [
            ban("198.51.100.0/25", T0 + 3),
            ban("198.51.0.0/16", T0 + 4),  # wider than the /24: it holds it
            ban("198.51.100.200", T0 + 5),
            ban("2001:db8::/64", T0 + 6),
        ]
    )
    store.lift([unban("198.51.100.200", T0 + 7), unban("198.51.0.0/16", T0 + 8)])
    network = ipaddress.ip_network("198.51.100.0/24")
    assert summary(store.history(network)) == [
        (8, "unban", "198.51.0.0/16"),
        (7, "unban", "198.51.100.200/32"),
        (5, "ban", "198.51.100.200/32"),
        (4, "ban", "198.51.0.0/16"),
        (3, "ban", "198.51.100.0/25"),
    ]
    address = ipaddress.ip_network("198.51.100.200")
    assert summary(store.history(address)) == [
        (8, "unban", "198.51.0.0/16"),  # the network's lift and ban: it held the address
        (7, "unban", "198.51.100.200/32"),
        (5, "ban", "198.51.100.200/32"),
        (4, "ban", "198.51.0.0/16"),
    ]
    assert summary(store.history(address, limit=2)) == [
        (8, "unban", "198.51.0.0/16"),
        (7, "unban", "198.51.100.200/32"),
    ]
    assert summary(store.history(ipaddress.ip_network("2001:db8::/32"))) == [
        (6, "ban", "2001:db8::/64")
    ]


def test_report_figures_count_the_bans_of_the_period(store: Store) -> None:
    store.add_bans(sample.BANS)
    store.lift([unban(sample.B, sample.B_LIFTED_AT, "manual")])
    found = store.report_figures(sample.PERIOD, top=20)
    assert (found.bans, found.permanent_bans, found.banned_targets) == (5, 1, 3)
    busy = {i: (b.bans, b.permanent_bans) for i, b in enumerate(found.timeline) if b.bans}
    assert busy == {1: (2, 0), 5: (1, 0), 10: (1, 1), 20: (1, 0)}


# -- hits --------------------------------------------------------------------------------


def test_hits_come_back_exactly_as_given(hits_store: Store) -> None:
    given = [
        (hit("198.51.100.7", T0 + 0.125, port=23), Outcome.BANNED),
        (hit("2001:db8::9", T0 + 1, port=161, proto=Proto.UDP), Outcome.ALLOWED),
        (hit("192.0.2.1", T0 + 2, port=1), Outcome.OWN_ADDRESS),
    ]
    hits_store.add_hits(given)
    assert [(e.hit, e.outcome) for e in reversed(hits_store.history())] == given


def test_prune_removes_only_older_hits(hits_store: Store) -> None:
    hits_store.add_hits([(hit("198.51.100.7", T0 + n), Outcome.COUNTED) for n in range(5)])
    hits_store.add_bans([ban("198.51.100.7", T0 - 100)])
    assert hits_store.prune_hits(T0 + 2) == 2
    assert [at for at, what, _ in summary(hits_store.history()) if what == "hit"] == [4, 3, 2]
    assert hits_store.bans_since(0.0) == [StoredBan(ban("198.51.100.7", T0 - 100))]


def test_prune_keeps_the_newest_hits_up_to_a_count(hits_store: Store) -> None:
    hits_store.add_hits([(hit("198.51.100.7", T0 + n), Outcome.COUNTED) for n in range(5)])
    hits_store.add_hits([(hit("2001:db8::9", T0 + 5 + n), Outcome.COUNTED) for n in range(3)])
    assert hits_store.prune_hits(T0 + 1, keep=10) == 1  # the age alone
    assert hits_store.prune_hits(T0, keep=3) == 4
    assert [at for at, what, _ in summary(hits_store.history()) if what == "hit"] == [7, 6, 5]
    assert hits_store.prune_hits(T0, keep=3) == 0
    hits_store.add_hits([(hit("198.51.100.7", T0 + 8), Outcome.COUNTED)])
    assert hits_store.prune_hits(T0, keep=3) == 1
    assert [at for at, what, _ in summary(hits_store.history()) if what == "hit"] == [8, 7, 6]


# -- closing -----------------------------------------------------------------------------


def test_a_closed_store_refuses_work(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError):
        store.add_bans([ban("198.51.100.7")])
    with pytest.raises(StoreError):
        store.active_bans(T0)


# -- the report's figures ---------------------------------------------------------------


def test_report_figures_of_a_day(hits_store: Store) -> None:
    sample.fill(hits_store)
    found = hits_store.report_figures(sample.PERIOD, top=20)
    busy = {i: (b.hits, b.bans, b.permanent_bans) for i, b in enumerate(found.timeline)
            if b.hits or b.bans}  # fmt: skip
    assert busy == {0: (1, 0, 0), 1: (8, 2, 0), 5: (2, 1, 0), 10: (0, 1, 1), 20: (0, 1, 0),
                    23: (1, 0, 0)}  # fmt: skip
    assert [b.start for b in found.timeline] == [sample.DAY0 + i * HOUR for i in range(24)]
    assert found.hits == 12  # D 1 + A 7 + B 3 + C 1: the instant before and the end are out
    assert found.ports == (
        PortCount("tcp", 23, 6, 2),
        PortCount("tcp", 445, 3, 1),
        PortCount("tcp", 2323, 2, 1),
        PortCount("udp", 161, 1, 1),
    )
    assert found.kinds == (KindCount("connect", 8, 2), KindCount("syn", 3, 1),
                           KindCount("udp", 1, 1))  # fmt: skip
    assert (found.port_count, found.source_count) == (4, 4)
    assert (found.bans, found.permanent_bans, found.banned_targets) == (5, 1, 3)
    assert found.network_bans == (StoredBan(sample.NETWORK_BAN),)


def test_report_figures_of_the_busiest_sources(hits_store: Store) -> None:
    sample.fill(hits_store)
    a, b, d, c = hits_store.report_figures(sample.PERIOD, top=20).sources  # ties: D, C as text
    assert a == SourceFigures(
        sample.A, 7, 2, sample.DAY0 + HOUR, sample.DAY0 + 5 * HOUR + 1,
        (StoredBan(sample.A_FIRST), StoredBan(sample.A_SECOND), StoredBan(sample.A_FOREVER)),
    )  # fmt: skip
    assert b.bans == (StoredBan(sample.B_LIFTED, sample.B_LIFTED_AT, "manual"),)
    assert (b.address, b.hits, b.ports) == (sample.B, 3, 1)
    assert (d.address, d.bans) == (sample.D, (StoredBan(sample.D_BEFORE),))  # every own ban
    assert (c.address, c.first_seen, c.bans) == (
        sample.C, sample.NOW - 60, (StoredBan(sample.C_FOREVER),)
    )  # fmt: skip


def test_report_figures_top_limits_the_lists_not_the_counts(hits_store: Store) -> None:
    sample.fill(hits_store)
    found = hits_store.report_figures(sample.PERIOD, top=2)
    assert [p.port for p in found.ports] == [23, 445]
    assert [s.address for s in found.sources] == [sample.A, sample.B]
    assert (found.port_count, found.source_count) == (4, 4)


def test_report_figures_break_ties_by_port_number_and_address_text(hits_store: Store) -> None:
    hits_store.add_hits([(hit("198.51.100.9", T0, 1000), Outcome.COUNTED),
                    (hit("198.51.100.10", T0 + 1, 999), Outcome.COUNTED)])  # fmt: skip
    found = hits_store.report_figures(Period.of(T0, T0 + HOUR), top=20)
    assert [p.port for p in found.ports] == [999, 1000]
    assert [s.address for s in found.sources] == ["198.51.100.10", "198.51.100.9"]


def test_report_figures_of_an_empty_period(store: Store) -> None:
    sample.fill(store)
    found = store.report_figures(Period.of(sample.NOW + DAY, sample.NOW + 2 * DAY), top=20)
    assert (found.hits, found.source_count, found.port_count, found.bans) == (0, 0, 0, 0)
    assert (found.ports, found.kinds, found.sources, found.network_bans) == ((), (), (), ())
    assert len(found.timeline) == 24


def test_report_figures_put_an_instant_on_a_bucket_edge_in_the_later_bucket(
    hits_store: Store,
) -> None:
    hits_store.add_hits([(hit("198.51.100.7", T0 + HOUR), Outcome.COUNTED)])
    hits_store.add_bans([ban("198.51.100.7", at=T0 + HOUR - 0.001, hours=None)])
    timeline = hits_store.report_figures(Period.of(T0, T0 + 2 * HOUR), top=20).timeline
    assert [(b.hits, b.bans, b.permanent_bans) for b in timeline] == [(0, 1, 1), (1, 0, 0)]


# -- the fake and SQLite agree -----------------------------------------------------------

TARGETS = ["198.51.100.1", "198.51.100.2", "198.51.100.0/24", "2001:db8::1"]
SCOPES = [None, *(ipaddress.ip_network(t) for t in TARGETS), ipaddress.ip_network("::/0")]
instants = st.integers(0, 6).map(lambda n: T0 + n)  # few instants: many ties
bans = st.builds(
    ban,
    st.sampled_from(TARGETS),
    instants,
    st.sampled_from([None, 1 / 3600, 3 / 3600]),
    st.integers(1, 3),
)
unbans = st.builds(unban, st.sampled_from(TARGETS), instants)
hits = st.tuples(
    st.builds(hit, st.sampled_from(["198.51.100.1", "198.51.100.9", "2001:db8::1"]), instants),
    st.sampled_from(Outcome),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add_bans"), st.lists(bans, max_size=4)),
        st.tuples(st.just("lift"), st.lists(unbans, max_size=2)),
        st.tuples(
            st.just("record"),
            st.tuples(st.lists(bans, max_size=3), st.lists(unbans, max_size=2)),
        ),
        st.tuples(st.just("add_hits"), st.lists(hits, max_size=4)),
        st.tuples(st.just("prune_hits"), instants),
    ),
    max_size=12,
)


def observe(store: Store) -> list[object]:
    seen: list[object] = []
    for n in range(8):
        now = T0 + n
        seen += [store.active_bans(now), store.bans_since(now), store.counts(now)]
    for scope in SCOPES:
        seen += [store.history(scope, limit) for limit in (0, 1, 3, 100)]
    for period, top in ((Period.of(T0, T0 + 4), 2), (Period.of(T0 - 1, T0 + 7), 20)):
        seen.append(store.report_figures(period, top))
    return seen


@settings(max_examples=60, deadline=None)
@given(operations)
def test_the_memory_store_behaves_like_sqlite(steps: list[tuple[str, object]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        stores: list[Store] = [SQLiteStore.open(Path(directory) / "porttrap.db"), MemoryStore()]
        for name, argument in steps:
            for store in stores:
                if name == "record":
                    store.record(*argument)  # type: ignore[misc]
                else:
                    getattr(store, name)(argument)
        sqlite, memory = (observe(store) for store in stores)
        for store in stores:
            store.close()
    assert memory == sqlite


ban_steps = st.lists(
    st.one_of(
        st.tuples(st.just("add_bans"), st.lists(bans, max_size=4)),
        st.tuples(st.just("lift"), st.lists(unbans, max_size=2)),
        st.tuples(
            st.just("record"),
            st.tuples(st.lists(bans, max_size=3), st.lists(unbans, max_size=2)),
        ),
    ),
    max_size=10,
)


def distinct(steps: list[tuple[str, object]]) -> list[tuple[str, object]]:
    """`steps` with a number in every reason: each ban and unban a decision of its own. The
    fleet's log keeps one row per decision (its id), where SQLite records a ban given twice
    twice: a retried write is the daemon's to avoid there, and the log's to absorb."""
    numbered = iter(range(1_000_000))

    def ban_of(made: Ban) -> Ban:
        return dataclasses.replace(made, reason=f"{made.reason} {next(numbered)}")

    def unban_of(made: Unban) -> Unban:
        return dataclasses.replace(made, reason=f"{made.reason} {next(numbered)}")

    out: list[tuple[str, object]] = []
    for name, argument in steps:
        if name == "record":
            made, lifts = cast(tuple[list[Ban], list[Unban]], argument)
            out.append((name, ([ban_of(b) for b in made], [unban_of(u) for u in lifts])))
        elif name == "add_bans":
            out.append((name, [ban_of(b) for b in cast(list[Ban], argument)]))
        else:
            out.append((name, [unban_of(u) for u in cast(list[Unban], argument)]))
    return out


def observe_bans(store: Store) -> list[object]:
    """What `observe` sees, of a store that holds no hits."""
    seen = observe(store)
    return [
        (s.timeline, s.bans, s.permanent_bans, s.banned_targets)
        if isinstance(s, ReportFigures)
        else s
        for s in seen
    ]


@settings(max_examples=40, deadline=None)
@given(ban_steps)
def test_the_fleet_store_behaves_like_sqlite_for_bans(
    fleet_log: FleetLog, steps: list[tuple[str, object]]
) -> None:
    fleet_log.clear()
    with tempfile.TemporaryDirectory() as directory:
        stores: list[Store] = [
            SQLiteStore.open(Path(directory) / "porttrap.db"),
            fleet_log.store("web-1", FakeClock(T0)),
        ]
        for name, argument in distinct(steps):
            for store in stores:
                if name == "record":
                    store.record(*argument)  # type: ignore[misc]
                else:
                    getattr(store, name)(argument)
        sqlite, fleet = (observe_bans(store) for store in stores)
        for store in stores:
            store.close()
    assert fleet == sqlite
