"""What the report shows, aggregated by SQLite: the store may hold 90 days of hits (millions
of rows), so every figure is a GROUP BY over the period's range of the `hits_at` and
`bans_banned_at` indexes, and only the aggregates (a few hundred rows) reach Python.

Pure apart from the queries: the period, `now` and the host name are parameters. All queries
run in one read transaction (one snapshot) of a store opened read-only; nothing is written.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any, Literal

from porttrap.model import IPAddress, IPNetwork
from porttrap.store import rows
from porttrap.store.base import StoredBan
from porttrap.store.sqlite import SQLiteStore

HOUR, DAY, WEEK = 3600.0, 86400.0, 7 * 86400.0
# 1970-01-01 was a Thursday: weekly buckets start on Mondays, four days after the epoch.
_MONDAY = 4 * DAY
BANS_PER_SOURCE = 12  # the newest this many of a source's bans are listed; older ones counted

_RANGE = "at >= :start AND at < :end"
# About how many rows `hits` holds (pruning deletes the oldest), from two index probes: max()
# and min() each alone are one lookup, where count(*) or max() - min() read the whole table.
_SQL_ROWS = """SELECT coalesce((SELECT max(rowid) FROM hits) - (SELECT min(rowid) FROM hits) + 1,
    0)"""
_SQL_HIT_BUCKETS = f"""SELECT CAST((at - :origin) / :step AS INTEGER) AS bucket, count(*)
    FROM hits WHERE {_RANGE} GROUP BY bucket"""  # noqa: S608 - constants only
# {hits} is how a query reads the table: see `_Plan`. count(*) OVER () is the number of groups
# (distinct ports, distinct sources) before LIMIT, in the same pass.
_SQL_PORTS = f"""SELECT proto, port, n, sources, count(*) OVER () FROM (
    SELECT proto, port, count(*) AS n, count(DISTINCT source) AS sources FROM {{hits}}
    WHERE {_RANGE} GROUP BY proto, port) ORDER BY n DESC, proto, port LIMIT :top"""  # noqa: S608
_SQL_KINDS = f"""SELECT kind, count(*) AS n, count(DISTINCT source) FROM {{hits}}
    WHERE {_RANGE} GROUP BY kind ORDER BY n DESC, kind"""  # noqa: S608 - constants only
_SQL_SOURCES = f"""SELECT source, n, first, last, count(*) OVER () FROM (
    SELECT source, count(*) AS n, min(at) AS first, max(at) AS last FROM {{hits}}
    WHERE {_RANGE} GROUP BY source) ORDER BY n DESC, source LIMIT :top"""  # noqa: S608
_SQL_SOURCE_PORTS = f"""SELECT count(DISTINCT proto || port) FROM hits
    INDEXED BY hits_source_at WHERE source = :source AND {_RANGE}"""  # noqa: S608
_BAN_RANGE = "banned_at >= :start AND banned_at < :end"
_SQL_BAN_TOTALS = f"""SELECT count(*), coalesce(sum(expires_at IS NULL), 0),
    count(DISTINCT target) FROM bans WHERE {_BAN_RANGE}"""  # noqa: S608 - constants only
_SQL_BAN_BUCKETS = f"""SELECT CAST((banned_at - :origin) / :step AS INTEGER) AS bucket,
    count(*), coalesce(sum(expires_at IS NULL), 0)
    FROM bans WHERE {_BAN_RANGE} GROUP BY bucket"""  # noqa: S608 - constants only
_BAN_COLUMNS = "id, target, banned_at, expires_at, ban_count, reason, lifted_at, lifted_reason"
_SQL_TARGET_BANS = f"""SELECT {_BAN_COLUMNS} FROM bans WHERE target = ?
    ORDER BY banned_at, id"""  # noqa: S608 - constants only
# Bans on networks (an admin's `porttrap ban 203.0.113.0/24`) cover addresses that are not
# their target: few, so read once and matched in Python.
_SQL_NETWORK_BANS = f"""SELECT {_BAN_COLUMNS} FROM bans WHERE instr(target, '/') > 0
    ORDER BY banned_at, id"""  # noqa: S608 - constants only


@dataclass(frozen=True, slots=True)
class _Plan:
    """How the grouping queries read `hits`. A period that holds a small share of the table
    is found through the `hits_at` index, and only its rows are sorted to be grouped. One that
    holds much of it is read straight through instead (index lookups would cost more than they
    save): the table for ports and classes, and for sources the (source, at) index, which is
    in source order already, so that grouping by source needs no sort at all."""

    ports: str
    sources: str


_NARROW = _Plan(ports="hits", sources="hits INDEXED BY hits_at")
_WIDE = _Plan(ports="hits NOT INDEXED", sources="hits INDEXED BY hits_source_at")
WIDE_SHARE = 0.25  # a period with at least this share of the table's rows is read through


@dataclass(frozen=True, slots=True)
class Period:
    """The report's time range [start, end) and its chart buckets: `step` seconds each, the
    first starting at `origin`, a UTC boundary of `step` at or before `start`."""

    start: float
    end: float
    step: float
    origin: float

    @classmethod
    def of(cls, start: float, end: float) -> Period:
        if end <= start:
            raise ValueError("a report period must end after it starts")
        step = bucket_step(end - start)
        anchor = _MONDAY if step == WEEK else 0.0
        return cls(start, end, step, math.floor((start - anchor) / step) * step + anchor)

    @property
    def buckets(self) -> int:
        return max(1, math.ceil((self.end - self.origin) / self.step))

    def bucket_start(self, index: int) -> float:
        return self.origin + index * self.step


def bucket_step(span: float) -> float:
    """The width of a chart bar for a period of `span` seconds: hourly up to 2 days, 6-hourly
    up to 2 weeks, daily up to 120 days, weekly beyond (at most about 120 bars up to 2 years)."""
    for limit, step in ((2 * DAY, HOUR), (14 * DAY, 6 * HOUR), (120 * DAY, DAY)):
        if span <= limit:
            return step
    return WEEK


@dataclass(frozen=True, slots=True)
class Totals:
    hits: int
    sources: int  # distinct addresses that hit a trap
    ports: int  # distinct protocol/port pairs hit
    bans: int  # bans made in the period
    permanent_bans: int  # of which for good
    banned_targets: int  # distinct addresses and networks banned
    active_now: int  # bans in force at generation time (whenever they were made)
    permanent_now: int


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bar of the timeline: what happened in [start, start + period.step)."""

    start: float
    hits: int
    bans: int
    permanent_bans: int


@dataclass(frozen=True, slots=True)
class PortCount:
    proto: str
    port: int
    hits: int
    sources: int


@dataclass(frozen=True, slots=True)
class KindCount:
    """Hits of one scan class (`Hit.kind`: connect, syn, fin, null, xmas, ack, udp ...)."""

    kind: str
    hits: int
    sources: int


@dataclass(frozen=True, slots=True)
class BanState:
    """An address at generation time: banned for good, banned until `until`, or free."""

    state: Literal["permanent", "banned", "free"]
    until: float | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """One of the addresses that hit the traps most, with the bans that touched the period
    (its own, and those of networks holding it), oldest first."""

    address: str
    hits: int
    ports: int
    first_seen: float
    last_seen: float
    bans: tuple[StoredBan, ...]
    earlier_bans: int  # bans in the period older than those in `bans` (not listed)
    now: BanState


@dataclass(frozen=True, slots=True)
class Report:
    host: str
    generated_at: float
    period: Period
    totals: Totals
    timeline: tuple[Bucket, ...]
    ports: tuple[PortCount, ...]
    kinds: tuple[KindCount, ...]
    sources: tuple[Source, ...]
    retention: float | None = None  # hits older than this are pruned (config hit_retention)


def collect(
    store: SQLiteStore,
    period: Period,
    now: float,
    host: str,
    *,
    top: int = 20,
    retention: float | None = None,
) -> Report:
    """Everything the report shows for `period`, the ban state as of `now`; the `top` most
    hit ports and the `top` busiest sources."""
    active, permanent = store.counts(now)
    span = {"start": period.start, "end": period.end}
    with store.reading("the report") as conn:
        timeline = _timeline(conn, period)
        hits = sum(bucket.hits for bucket in timeline)
        plan = _plan(conn, hits)
        found = conn.execute(_SQL_PORTS.format(hits=plan.ports), {**span, "top": top})
        ports, port_count = _ports(found)
        found = conn.execute(_SQL_KINDS.format(hits=plan.ports), span)
        kinds = tuple(KindCount(str(kind), n, sources) for kind, n, sources in found)
        found = conn.execute(_SQL_SOURCES.format(hits=plan.sources), {**span, "top": top})
        busiest = found.fetchall()
        bans, permanent_bans, targets = conn.execute(_SQL_BAN_TOTALS, span).fetchone()
        sources = _sources(conn, period, now, busiest)
    distinct = busiest[0][-1] if busiest else 0
    totals = Totals(hits, distinct, port_count, bans, permanent_bans, targets, active, permanent)
    return Report(host, now, period, totals, timeline, ports, kinds, sources, retention)


def _plan(conn: sqlite3.Connection, hits: int) -> _Plan:
    """How to read `hits` for a period that holds `hits` of its rows."""
    (rows,) = conn.execute(_SQL_ROWS).fetchone()
    return _WIDE if hits > 0 and hits >= WIDE_SHARE * rows else _NARROW


def _timeline(conn: sqlite3.Connection, period: Period) -> tuple[Bucket, ...]:
    params = {"start": period.start, "end": period.end, "origin": period.origin}
    params["step"] = period.step
    hits = dict(conn.execute(_SQL_HIT_BUCKETS, params).fetchall())
    bans = {b: (n, p) for b, n, p in conn.execute(_SQL_BAN_BUCKETS, params)}
    return tuple(
        Bucket(period.bucket_start(i), hits.get(i, 0), *bans.get(i, (0, 0)))
        for i in range(period.buckets)
    )


def _ports(found: Iterable[tuple[Any, ...]]) -> tuple[tuple[PortCount, ...], int]:
    """The most hit ports, and how many distinct ones were hit in all."""
    ports, distinct = [], 0
    for proto, port, n, sources, groups in found:
        distinct = groups
        if isinstance(port, int):  # never trust the file: a damaged row is left out
            ports.append(PortCount(str(proto), port, n, sources))
    return tuple(ports), distinct


def _sources(
    conn: sqlite3.Connection, period: Period, now: float, busiest: list[tuple[Any, ...]]
) -> tuple[Source, ...]:
    networks = _by_target(_read_bans(conn.execute(_SQL_NETWORK_BANS))) if busiest else {}
    made = []
    for address, hits, first, last, _groups in busiest:
        span = {"source": address, "start": period.start, "end": period.end}
        (ports,) = conn.execute(_SQL_SOURCE_PORTS, span).fetchone()
        own = _read_bans(conn.execute(_SQL_TARGET_BANS, (address,)))
        covering = [bans for net, bans in networks.items() if _holds(net, address)]
        counts = (hits, ports, first, last)
        made.append(_source(str(address), counts, own, covering, period=period, now=now))
    return tuple(made)


def _source(
    address: str,
    counts: tuple[int, int, float, float],
    own: list[StoredBan],
    covering: list[list[StoredBan]],
    *,
    period: Period,
    now: float,
) -> Source:
    hits, ports, first, last = counts
    touching = sorted(
        (b for b in [*own, *(b for bans in covering for b in bans)] if _touches(b, period)),
        key=lambda b: b.ban.banned_at,
    )
    shown = touching[-BANS_PER_SOURCE:]
    return Source(
        address=address,
        hits=hits,
        ports=ports,
        first_seen=float(first),
        last_seen=float(last),
        bans=tuple(shown),
        earlier_bans=len(touching) - len(shown),
        now=ban_state([own, *covering], now),
    )


def ban_state(histories: Sequence[Sequence[StoredBan]], now: float) -> BanState:
    """Whether an address is banned at `now`, given the ban history (oldest first) of each
    target that covers it. As in the store, only a target's newest ban not lifted counts: a
    newer ban replaces an older one, even a shorter one."""
    until: float | None = None
    for history in histories:
        current = [b for b in history if b.lifted_at is None and b.ban.banned_at <= now]
        if not current or not current[-1].ban.active(now):
            continue
        expires = current[-1].ban.expires_at
        if expires is None:
            return BanState("permanent")
        until = expires if until is None else max(until, expires)
    return BanState("free") if until is None else BanState("banned", until)


def _touches(stored: StoredBan, period: Period) -> bool:
    """Whether a ban was in force at some time within the period."""
    ends = [t for t in (stored.ban.expires_at, stored.lifted_at) if t is not None]
    return stored.ban.banned_at < period.end and (not ends or min(ends) > period.start)


def _read_bans(found: Iterable[tuple[Any, ...]]) -> list[StoredBan]:
    bans = []
    for row in found:
        try:
            bans.append(rows.stored_ban_from(row[1:]))
        except rows.BadRow:
            continue  # `porttrap history` warns about damaged rows; the report leaves them out
    return bans


def _by_target(bans: list[StoredBan]) -> dict[IPNetwork, list[StoredBan]]:
    grouped: dict[IPNetwork, list[StoredBan]] = {}
    for stored in bans:
        grouped.setdefault(stored.ban.target, []).append(stored)
    return grouped


def _holds(network: IPNetwork, address: object) -> bool:
    try:
        parsed: IPAddress = ip_address(str(address))
    except ValueError:
        return False
    return parsed.version == network.version and parsed in network
