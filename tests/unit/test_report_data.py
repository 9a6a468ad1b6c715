"""The report made of a store's figures (`data.collect`, on the in-memory store: the contract
suite shows that SQLite gives the same figures): the totals, each busiest source's bans that
touched the period (its own and its networks') and its ban state now."""

from __future__ import annotations

import pytest

import report_sample as sample
from porttrap.report import data
from porttrap.report.data import BanState
from porttrap.report.figures import DAY, HOUR, KindCount, Period, PortCount
from porttrap.store.base import StoredBan
from porttrap.testing import MemoryStore
from report_sample import DAY0, NOW, PERIOD, A, B, C, D, ban, hit


@pytest.fixture
def store() -> MemoryStore:
    made = MemoryStore()
    sample.fill(made)
    return made


def collect(store: MemoryStore, top: int = 20) -> data.Report:
    return data.collect(store, PERIOD, NOW, "gw.example.net", top=top)


def test_totals_count_the_period_and_the_bans_in_force_now(store: MemoryStore) -> None:
    report = collect(store)
    assert report.totals == data.Totals(
        hits=12,  # D 1 + A 7 + B 3 + C 1
        sources=4,
        ports=4,  # tcp/23, tcp/2323, tcp/445, udp/161
        bans=5,  # A 3, B 1, the network 1
        permanent_bans=1,
        banned_targets=3,
        active_now=3,  # A and C for good, the network until DAY0 + 44h
        permanent_now=2,
    )
    assert (report.host, report.generated_at, report.period) == ("gw.example.net", NOW, PERIOD)


def test_the_store_figures_are_shown_as_they_come(store: MemoryStore) -> None:
    report = collect(store)
    assert report.ports[0] == PortCount("tcp", 23, 6, 2)
    assert report.kinds[0] == KindCount("connect", 8, 2)
    assert [b.start for b in report.timeline] == [DAY0 + i * HOUR for i in range(24)]


def test_top_sources_with_their_bans_and_state(store: MemoryStore) -> None:
    sources = collect(store).sources
    # Ties (D and C: 1 hit each) in address order, as text.
    assert [(s.address, s.hits, s.ports) for s in sources] == [
        (A, 7, 2),
        (B, 3, 1),
        (D, 1, 1),
        (C, 1, 1),
    ]
    a, b, d, c = sources
    assert (a.first_seen, a.last_seen) == (DAY0 + HOUR, DAY0 + 5 * HOUR + 1)
    assert [(x.ban.ban_count, x.ban.permanent) for x in a.bans] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    assert a.now == BanState("permanent")
    # B: its own ban, lifted, then the network's, which bans it until DAY0 + 44h.
    assert [(str(x.ban.target), x.lifted_reason) for x in b.bans] == [
        (f"{B}/32", "manual"),
        ("203.0.113.0/24", None),
    ]
    assert b.now == BanState("banned", DAY0 + 44 * HOUR)
    assert c.bans[0].ban.banned_at == DAY0 - 2 * DAY and c.now == BanState("permanent")
    assert d.bans == () and d.now == BanState("free")  # its ban ended before the period


def test_top_limits_ports_and_sources_but_not_the_totals(store: MemoryStore) -> None:
    report = collect(store, top=2)
    assert [s.address for s in report.sources] == [A, B]
    assert [p.port for p in report.ports] == [23, 445]
    assert (report.totals.sources, report.totals.ports) == (4, 4)


def test_a_source_lists_its_newest_bans() -> None:
    store = MemoryStore()
    store.add_hits([hit(A, DAY0 + HOUR, 23)])
    store.add_bans([ban(A, DAY0 + n * 60, 0.01, n + 1) for n in range(data.BANS_PER_SOURCE + 3)])
    (source,) = collect(store).sources
    assert source.earlier_bans == 3
    assert [b.ban.ban_count for b in source.bans] == list(range(4, data.BANS_PER_SOURCE + 4))


def test_an_empty_period(store: MemoryStore) -> None:
    report = data.collect(store, Period.of(NOW + DAY, NOW + 2 * DAY), NOW + 2 * DAY, "h")
    assert (report.totals.hits, report.totals.sources, report.totals.bans) == (0, 0, 0)
    assert (report.ports, report.kinds, report.sources) == ((), (), ())
    assert len(report.timeline) == 24 and not any(b.hits or b.bans for b in report.timeline)


def test_ban_state_counts_a_targets_newest_ban_only() -> None:
    longer, shorter = ban(A, NOW - 2 * HOUR, 10), ban(A, NOW - HOUR, 2)
    assert data.ban_state([[StoredBan(longer), StoredBan(shorter)]], NOW) == BanState(
        "banned", NOW + HOUR
    )
    lifted = StoredBan(shorter, NOW - 0.5 * HOUR, "manual")
    assert data.ban_state([[StoredBan(longer), lifted]], NOW) == BanState("banned", NOW + 8 * HOUR)
    assert data.ban_state([[StoredBan(ban(A, NOW - 2 * HOUR, 1))]], NOW) == BanState("free")
    network = [StoredBan(ban("198.51.100.0/24", NOW - HOUR, None))]
    assert data.ban_state([[StoredBan(shorter)], network], NOW) == BanState("permanent")


def test_ban_state_agrees_with_the_store(store: MemoryStore) -> None:
    active = {str(b.target): b for b in store.active_bans(NOW)}
    for source in collect(store).sources:
        own = active.get(f"{source.address}/{128 if ':' in source.address else 32}")
        if own is not None:
            expected = (
                BanState("permanent") if own.permanent else BanState("banned", own.expires_at)
            )
            assert source.now == expected


def test_the_fleet_part_lists_the_newest_bans_first_up_to_top() -> None:
    made = [data.FleetBan(f"web-{n}", StoredBan(ban(A, DAY0 + n, 1))) for n in range(5)]
    fleet = data.fleet(["web-0", "web-1"], made, top=3)
    assert [b.host for b in fleet.bans] == ["web-4", "web-3", "web-2"]
    assert (fleet.hosts, fleet.more_bans) == (("web-0", "web-1"), 2)
    assert data.fleet([], [], top=3) == data.Fleet((), (), 0)


def test_the_fleet_title_counts_the_hosts() -> None:
    assert data.fleet_title(["web-1", "web-2"]) == "the fleet (2 hosts)"
    assert data.fleet_title(["web-1"]) == "the fleet (1 host)"
