"""The report's figures (`Store.report_figures`) aggregated by SQLite: the store may hold 90
days of hits (millions of rows), so every figure is a GROUP BY over the period's range of the
`hits_at` and `bans_banned_at` indexes, and only the aggregates (a few hundred rows) reach
Python. `SQLiteStore` runs `figures` in one read transaction (one snapshot).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from porttrap.report.figures import (
    Bucket,
    KindCount,
    Period,
    PortCount,
    ReportFigures,
    SourceFigures,
    timeline,
)
from porttrap.store import rows
from porttrap.store.base import StoredBan

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
_BAN_COLUMNS = (
    "id, target, banned_at, expires_at, ban_count, reason, evidence, lifted_at, lifted_reason"
)
_SQL_TARGET_BANS = f"""SELECT {_BAN_COLUMNS} FROM bans WHERE target = ?
    ORDER BY banned_at, id"""  # noqa: S608 - constants only
# Bans on networks (an admin's `porttrap ban 203.0.113.0/24`) cover addresses that are not
# their target: few, so read once and matched by the report.
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


def figures(conn: sqlite3.Connection, period: Period, top: int) -> ReportFigures:
    """The report's figures for `period` (the `top` most hit ports and busiest sources), on a
    connection inside one read transaction."""
    span = {"start": period.start, "end": period.end}
    buckets = _timeline(conn, period)
    plan = _plan(conn, sum(bucket.hits for bucket in buckets))
    found = conn.execute(_SQL_PORTS.format(hits=plan.ports), {**span, "top": top})
    ports, port_count = _ports(found)
    found = conn.execute(_SQL_KINDS.format(hits=plan.ports), span)
    kinds = tuple(KindCount(str(kind), n, sources) for kind, n, sources in found)
    found = conn.execute(_SQL_SOURCES.format(hits=plan.sources), {**span, "top": top})
    busiest = found.fetchall()
    bans, permanent_bans, targets = conn.execute(_SQL_BAN_TOTALS, span).fetchone()
    return ReportFigures(
        timeline=buckets,
        ports=ports,
        port_count=port_count,
        kinds=kinds,
        sources=_sources(conn, period, busiest),
        source_count=busiest[0][-1] if busiest else 0,
        bans=bans,
        permanent_bans=permanent_bans,
        banned_targets=targets,
        network_bans=_read_bans(conn.execute(_SQL_NETWORK_BANS)) if busiest else (),
    )


def _plan(conn: sqlite3.Connection, hits: int) -> _Plan:
    """How to read `hits` for a period that holds `hits` of its rows."""
    (count,) = conn.execute(_SQL_ROWS).fetchone()
    return _WIDE if hits > 0 and hits >= WIDE_SHARE * count else _NARROW


def _timeline(conn: sqlite3.Connection, period: Period) -> tuple[Bucket, ...]:
    params = {"start": period.start, "end": period.end, "origin": period.origin}
    params["step"] = period.step
    hits = dict(conn.execute(_SQL_HIT_BUCKETS, params).fetchall())
    bans = {b: (n, p) for b, n, p in conn.execute(_SQL_BAN_BUCKETS, params)}
    return timeline(period, hits, bans)


def _ports(found: Iterable[tuple[Any, ...]]) -> tuple[tuple[PortCount, ...], int]:
    """The most hit ports, and how many distinct ones were hit in all."""
    ports, distinct = [], 0
    for proto, port, n, sources, groups in found:
        distinct = groups
        if isinstance(port, int):  # never trust the file: a damaged row is left out
            ports.append(PortCount(str(proto), port, n, sources))
    return tuple(ports), distinct


def _sources(
    conn: sqlite3.Connection, period: Period, busiest: list[tuple[Any, ...]]
) -> tuple[SourceFigures, ...]:
    made = []
    for address, hits, first, last, _groups in busiest:
        span = {"source": address, "start": period.start, "end": period.end}
        (ports,) = conn.execute(_SQL_SOURCE_PORTS, span).fetchone()
        own = _read_bans(conn.execute(_SQL_TARGET_BANS, (address,)))
        made.append(SourceFigures(str(address), hits, ports, float(first), float(last), own))
    return tuple(made)


def _read_bans(found: Iterable[tuple[Any, ...]]) -> tuple[StoredBan, ...]:
    bans = []
    for row in found:
        try:
            bans.append(rows.stored_ban_from(row[1:]))
        except rows.BadRow:
            continue  # `porttrap history` warns about damaged rows; the report leaves them out
    return tuple(bans)
