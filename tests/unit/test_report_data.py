"""The report's aggregation on a real SQLite store filled through the Store API: exact figures
for known hits and bans, the period's edges, the ban state of each source, both ways of
reading the table, the buckets, and that the database is only read."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from porttrap.errors import StoreError
from porttrap.model import Ban, Hit, Outcome, Proto, Unban
from porttrap.report import data
from porttrap.report.data import (
    DAY,
    HOUR,
    WEEK,
    BanState,
    Bucket,
    KindCount,
    Period,
    PortCount,
    bucket_step,
)
from porttrap.store.base import StoredBan
from porttrap.store.sqlite import SQLiteStore

DAY0 = 20833 * DAY  # a UTC midnight (2027-01-15)
NOW = DAY0 + DAY
A, B, C, D = "198.51.100.7", "203.0.113.5", "2001:db8::9", "192.0.2.99"


def hit(source: str, at: float, port: int, kind: str = "connect") -> tuple[Hit, Outcome]:
    address = ipaddress.ip_address(source)
    local = ipaddress.ip_address("2001:db8::1" if address.version == 6 else "192.0.2.1")
    proto = Proto.UDP if kind == "udp" else Proto.TCP
    return Hit(at, address, 40000, local, port, proto, kind), Outcome.COUNTED


def ban(target: str, at: float, hours: float | None, count: int = 1, why: str = "") -> Ban:
    expires = None if hours is None else at + hours * HOUR
    return Ban(ipaddress.ip_network(target), at, expires, count, why or "trap:tcp/23")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """One day, DAY0 to NOW, of four sources; and hits and bans just outside it."""
    path = tmp_path / "porttrap.db"
    with SQLiteStore.open(path) as store:
        store.add_hits(
            [
                hit(D, DAY0 - 1, 23),  # before the period
                hit(D, DAY0, 23),  # its first instant: in
                *(hit(A, DAY0 + HOUR + s, 23) for s in range(5)),
                *(hit(B, DAY0 + 1.5 * HOUR + s, 445, "syn") for s in range(3)),
                *(hit(A, DAY0 + 5 * HOUR + s, 2323) for s in range(2)),
                hit(C, NOW - 60, 161, "udp"),
                hit(C, NOW, 161, "udp"),  # the period's end: out
            ]
        )
        store.add_bans(
            [
                ban(C, DAY0 - 2 * DAY, None, 3),  # permanent since before the period
                ban(D, DAY0 - HOUR, 0.5),  # over before the period
                ban(A, DAY0 + HOUR, 1, 1),
                ban(B, DAY0 + 1.5 * HOUR, 1, 1, "trap:tcp/445"),
                ban(A, DAY0 + 5 * HOUR, 4, 2),
                ban(A, DAY0 + 10 * HOUR, None, 3),
                ban("203.0.113.0/24", DAY0 + 20 * HOUR, 24, 1, "manual"),
            ]
        )
        store.lift([Unban(ipaddress.ip_network(B), DAY0 + 1.75 * HOUR, "manual")])
    return path


@pytest.fixture
def store(database: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore.open(database, readonly=True) as opened:
        yield opened


def collect(store: SQLiteStore, top: int = 20) -> data.Report:
    return data.collect(store, Period.of(DAY0, NOW), NOW, "gw.example.net", top=top)


@pytest.fixture(params=["narrow", "wide"])
def plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways of reading `hits` (through the at index, or straight through): same report."""
    monkeypatch.setattr(data, "WIDE_SHARE", 2.0 if request.param == "narrow" else 0.0)


@pytest.mark.usefixtures("plan")
def test_totals_count_the_period_only(store: SQLiteStore) -> None:
    totals = collect(store).totals
    assert totals == data.Totals(
        hits=12,  # D 1 + A 7 + B 3 + C 1
        sources=4,
        ports=4,  # tcp/23, tcp/2323, tcp/445, udp/161
        bans=5,  # A 3, B 1, the network 1
        permanent_bans=1,
        banned_targets=3,
        active_now=3,  # A and C for good, the network until DAY0 + 44h
        permanent_now=2,
    )


@pytest.mark.usefixtures("plan")
def test_ports_and_classes_count_hits_and_sources(store: SQLiteStore) -> None:
    report = collect(store)
    assert report.ports == (
        PortCount("tcp", 23, 6, 2),
        PortCount("tcp", 445, 3, 1),
        PortCount("tcp", 2323, 2, 1),
        PortCount("udp", 161, 1, 1),
    )
    assert report.kinds == (
        KindCount("connect", 8, 2),
        KindCount("syn", 3, 1),
        KindCount("udp", 1, 1),
    )


def test_the_timeline_has_an_hourly_bucket_for_every_hour(store: SQLiteStore) -> None:
    timeline = collect(store).timeline
    assert len(timeline) == 24
    assert [b.start for b in timeline] == [DAY0 + i * HOUR for i in range(24)]
    busy = {
        i: (b.hits, b.bans, b.permanent_bans)
        for i, b in enumerate(timeline)
        if b != Bucket(b.start, 0, 0, 0)
    }
    assert busy == {
        0: (1, 0, 0),
        1: (8, 2, 0),
        5: (2, 1, 0),
        10: (0, 1, 1),
        20: (0, 1, 0),
        23: (1, 0, 0),
    }


@pytest.mark.usefixtures("plan")
def test_top_sources_with_their_bans_and_state(store: SQLiteStore) -> None:
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


def test_top_limits_ports_and_sources_but_not_the_totals(store: SQLiteStore) -> None:
    report = collect(store, top=2)
    assert [s.address for s in report.sources] == [A, B]
    assert [p.port for p in report.ports] == [23, 445]
    assert (report.totals.sources, report.totals.ports) == (4, 4)


def test_a_source_lists_its_newest_bans(tmp_path: Path) -> None:
    path = tmp_path / "porttrap.db"
    with SQLiteStore.open(path) as store:
        store.add_hits([hit(A, DAY0 + HOUR, 23)])
        store.add_bans(
            [ban(A, DAY0 + n * 60, 0.01, n + 1) for n in range(data.BANS_PER_SOURCE + 3)]
        )
    with SQLiteStore.open(path, readonly=True) as store:
        (source,) = collect(store).sources
    assert source.earlier_bans == 3
    assert [b.ban.ban_count for b in source.bans] == list(range(4, data.BANS_PER_SOURCE + 4))


def test_an_empty_period(store: SQLiteStore) -> None:
    report = data.collect(store, Period.of(NOW + DAY, NOW + 2 * DAY), NOW + 2 * DAY, "h")
    assert (report.totals.hits, report.totals.sources, report.totals.bans) == (0, 0, 0)
    assert (report.ports, report.kinds, report.sources) == ((), (), ())
    assert len(report.timeline) == 24 and not any(b.hits or b.bans for b in report.timeline)


def test_the_database_is_only_read(database: Path) -> None:
    before = database.read_bytes()
    with SQLiteStore.open(database, readonly=True) as store:
        collect(store)
        with pytest.raises(StoreError, match="readonly"), store.reading("x") as conn:
            conn.execute("DELETE FROM hits")
    assert database.read_bytes() == before


@pytest.mark.parametrize("name", ["_SQL_HIT_BUCKETS", "_SQL_ROWS", "_SQL_SOURCE_PORTS"])
def test_the_cheap_queries_are_index_searches(store: SQLiteStore, name: str) -> None:
    """No full read of `hits` where an index answers: these run on 90 days of hits."""
    sql = getattr(data, name)
    with store.reading("plan") as conn:
        plan = [
            row[3]
            for row in conn.execute(
                f"EXPLAIN QUERY PLAN {sql}",
                {"start": 0, "end": 1, "origin": 0, "step": 1, "source": A},
            )
        ]
    assert plan and all(not step.startswith("SCAN hits") for step in plan), plan
    assert any(step.startswith("SEARCH hits") for step in plan), plan


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


def test_ban_state_agrees_with_the_store(database: Path) -> None:
    with SQLiteStore.open(database, readonly=True) as store:
        active = {str(b.target): b for b in store.active_bans(NOW)}
        for source in collect(store).sources:
            own = active.get(f"{source.address}/{128 if ':' in source.address else 32}")
            if own is not None:
                expected = (
                    BanState("permanent") if own.permanent else BanState("banned", own.expires_at)
                )
                assert source.now == expected


@pytest.mark.parametrize(
    ("span", "step"),
    [(HOUR, HOUR), (2 * DAY, HOUR), (2 * DAY + 1, 6 * HOUR), (7 * DAY, 6 * HOUR),
     (14 * DAY, 6 * HOUR), (15 * DAY, DAY), (90 * DAY, DAY), (120 * DAY, DAY), (121 * DAY, WEEK),
     (730 * DAY, WEEK)],
)  # fmt: skip
def test_bucket_width_follows_the_period(span: float, step: float) -> None:
    assert bucket_step(span) == step


def test_buckets_are_aligned_to_utc_boundaries() -> None:
    period = Period.of(DAY0 + 30 * 60, DAY0 + 2.5 * HOUR)
    assert (period.origin, period.buckets) == (DAY0, 3)
    six = Period.of(DAY0 + 7 * HOUR, DAY0 + 7 * HOUR + 7 * DAY)
    assert six.origin == DAY0 + 6 * HOUR and six.buckets == 29
    weekly = Period.of(DAY0 + 3 * HOUR, DAY0 + 200 * DAY)
    monday = datetime.fromtimestamp(weekly.origin, UTC)
    assert (monday.weekday(), monday.hour, monday.minute) == (0, 0, 0)
    assert 0 <= DAY0 + 3 * HOUR - weekly.origin < WEEK


def test_a_period_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError, match="end after it starts"):
        Period.of(NOW, NOW)
