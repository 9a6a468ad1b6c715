"""`FleetLogStore`: the `Store` interface over the fleet's shared log (`porttrap.log` in
PostgreSQL), so that the store contract runs against what the fleet keeps and `porttrap report
--fleet` reads the whole fleet through the same code as one host's report.

Two views, chosen when it is made:
- `FleetLogStore(conn, host="web-1")`: one host, as that host's role (`fleet add-host`) sees
  and writes it. `add_bans` publishes kind 'ban' rows under its name, `lift` kind 'unban'
  rows, `record` both in one transaction; reads see that host's bans only (and lifts by its
  unbans or by any 'unban-fleet' row). This is the view the store contract checks.
- `FleetLogStore(conn, host=None)`: the whole fleet, read only (the report): every host's
  bans, each lifted only by its own host's unbans or a fleet-wide one. A newer ban replaces
  an older one per host and target (each host's ban is its own decision), so `active_bans`
  may list one target once per host that bans it.

What the log does not hold: hits. Each host keeps its own hits in its SQLite store (millions
of rows that no other host needs); the log carries decisions only. So `add_hits` keeps
nothing, `prune_hits` prunes nothing (returns 0), `history` has no hit entries and
`report_figures` counts no hits, ports, classes or sources: its bans and timeline are the
fleet's. A caller that wants hits reads the host's own store.

How a log row becomes a ban: rows.parse checks every row (a host may write anything its
role allows); a refused row is skipped, logged once and counted in `bad_rows`, never
raised. A ban's lift is the first later row (by log id) of kind 'unban' from the same host,
or of kind 'unban-fleet' from any, on the same target, whose time falls within the ban
(banned_at <= time < expires_at): the lift the SQLite store records at that time. An unban
row (outbox.outgoing's, here and from the daemon's link) carries its time in `banned_at`
and its reason in `reason` (rows.parse ignores both on an unban); one without (a porttrap
before that, or written by hand) is lifted at the row's commit time (`at`, the database's
clock), with a reason naming its host.

Reads use this host's clock (`clock`) where rows.parse wants "now" (a ban may not start more
than a day ahead of it), not the database's: a reader checks what it reads against its own
time. Writes are idempotent: a row's `ban_id` is outbox.outgoing's, so a retried `record`
publishes nothing twice (ON CONFLICT DO NOTHING).

psycopg's sync API: the CLI and tests use this store; the daemon uses fleet.link (async).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg.rows import tuple_row

from porttrap import log
from porttrap.clock import Clock, SystemClock
from porttrap.errors import StoreError
from porttrap.fleet import rows
from porttrap.fleet.outbox import Outgoing, outgoing
from porttrap.model import Ban, Hit, IPNetwork, Outcome, StoredBan, Unban
from porttrap.report.figures import Period, ReportFigures, timeline
from porttrap.store import history
from porttrap.store.base import HistoryEntry
from porttrap.units import LAST_TIME

Row = tuple[Any, ...]

_INSERT: Final = """INSERT INTO porttrap.log (host, kind, target, ban_id, banned_at, expires_at,
    ban_count, reason, evidence) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (host, kind, ban_id) DO NOTHING"""
# An unban's time: its own (in banned_at) when it is a time at all, else its commit time.
_LIFT_AT: Final = f"""CASE WHEN u.banned_at >= 0 AND u.banned_at < {LAST_TIME}
    THEN u.banned_at ELSE extract(epoch FROM u.at)::float8 END"""
# Every ban of the view (%(host)s NULL: every host) with its lift, in rows.COLUMNS' order
# (the database's clock replaced by the reader's, %(now)s), then lifted_at, lifted_reason.
_BANS: Final = f"""WITH bans AS (
    SELECT b.id, b.host, b.kind, b.target::text AS target, b.ban_id, b.banned_at, b.expires_at,
        b.ban_count, b.reason, b.evidence, extract(epoch FROM b.at)::float8 AS at,
        %(now)s::float8 AS now, lift.lifted_at, lift.lifted_reason
    FROM porttrap.log AS b
    LEFT JOIN LATERAL (
        SELECT t.at AS lifted_at,
            coalesce(u.reason, CASE WHEN u.kind = 'unban' THEN 'unbanned on ' || u.host
                ELSE 'unbanned on every host by ' || u.host END) AS lifted_reason
        FROM porttrap.log AS u CROSS JOIN LATERAL (SELECT {_LIFT_AT} AS at) AS t
        WHERE u.target = b.target AND u.id > b.id
            AND (u.kind = 'unban-fleet' OR (u.kind = 'unban' AND u.host = b.host))
            AND b.banned_at <= t.at AND (b.expires_at IS NULL OR b.expires_at > t.at)
        ORDER BY u.id LIMIT 1) AS lift ON true
    WHERE b.kind = 'ban' AND (%(host)s::text IS NULL OR b.host = %(host)s::text)
)"""  # noqa: S608 - constants only; values are parameters
_COLUMNS: Final = ", ".join([*rows.COLUMNS, "lifted_at", "lifted_reason"])
_SINCE: Final = f"""{_BANS} SELECT {_COLUMNS} FROM bans WHERE banned_at >= %(since)s
    ORDER BY banned_at, id"""  # noqa: S608 - constants only
_RESTORE: Final = f"""{_BANS} SELECT {_COLUMNS} FROM bans WHERE banned_at >= %(since)s
        OR (lifted_at IS NULL AND (expires_at IS NULL OR expires_at > %(at)s))
    ORDER BY banned_at, id"""  # noqa: S608 - constants only
# A ban counts while it is the newest (banned_at, then id) of its host and target not lifted:
# a newer ban replaces it, as in the kernel, even a shorter one.
_ACTIVE: Final = f"""{_BANS} SELECT {_COLUMNS} FROM (
        SELECT *, row_number() OVER (
            PARTITION BY host, target ORDER BY banned_at DESC, id DESC) AS newest
        FROM bans WHERE lifted_at IS NULL) AS current
    WHERE newest = 1 AND (expires_at IS NULL OR expires_at > %(at)s)
    ORDER BY banned_at, id"""  # noqa: S608 - constants only
# History: `<<=` is "inside or equal", `>>` "holds, and more" (both false across IP versions),
# as history.within: a network's ban belongs to the history of every address inside it.
_SCOPE: Final = (
    "(%(scope)s::cidr IS NULL OR target::cidr <<= %(scope)s::cidr"
    " OR target::cidr >> %(scope)s::cidr)"
)
_BAN_HISTORY: Final = f"""{_BANS} SELECT {_COLUMNS} FROM bans WHERE {_SCOPE}
    ORDER BY banned_at DESC, id DESC LIMIT %(limit)s"""  # noqa: S608 - constants only
_LIFT_HISTORY: Final = f"""{_BANS} SELECT {_COLUMNS} FROM bans
    WHERE lifted_at IS NOT NULL AND {_SCOPE}
    ORDER BY lifted_at DESC, id DESC LIMIT %(limit)s"""  # noqa: S608 - constants only
_PERIOD: Final = f"""{_BANS} SELECT {_COLUMNS} FROM bans
    WHERE banned_at >= %(start)s AND banned_at < %(end)s ORDER BY banned_at, id"""  # noqa: S608
_HOSTS: Final = "SELECT name FROM porttrap.hosts ORDER BY name"


@dataclass(frozen=True, slots=True)
class Found:
    """One ban read from the log: its row id, the host that made it, the ban and its lift."""

    id: int
    host: str
    stored: StoredBan


class FleetLogStore:
    """The `Store` on the fleet's shared log: as host `host` (reads and writes that host's
    bans) or, with `host=None`, the whole fleet (reads only). It puts `conn` in autocommit
    (every read here is its own transaction, every `record` one of its own), uses it from one
    thread and closes it with `close()`."""

    def __init__(
        self, conn: psycopg.Connection[Any], host: str | None, clock: Clock | None = None
    ) -> None:
        if host is not None and not rows.HOST_NAME.fullmatch(host):
            raise StoreError(f"{host!r} is not a fleet host name ([fleet] name)")
        self._conn = conn
        self.host = host
        with self._errors("set up the session on the fleet's database"):
            conn.autocommit = True  # each read its own transaction; `record` opens one
            # Every read here joins each ban to its lift: the planner's cost estimate for that
            # makes PostgreSQL compile it (JIT), which took 0.56 s of a 0.8 s read of 100,000
            # bans; the join itself needs no compiling.
            conn.execute("SET jit = off")
        self._clock = clock or SystemClock()
        self._warned: set[int] = set()

    def __enter__(self) -> FleetLogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    @property
    def bad_rows(self) -> int:
        return len(self._warned)

    # -- writes --------------------------------------------------------------------------

    def add_hits(self, hits: Sequence[tuple[Hit, Outcome]]) -> None:
        """Keeps nothing: the shared log holds no hits (each host keeps its own)."""
        self._check_open()

    def prune_hits(self, before: float, keep: int | None = None) -> int:
        """Prunes nothing: there are no hits here."""
        self._check_open()
        return 0

    def add_bans(self, bans: Sequence[Ban]) -> None:
        self.record(bans, [])

    def lift(self, unbans: Sequence[Unban]) -> None:
        """Publish an unban of each target: it lifts this host's bans active at its time."""
        self.record([], unbans)

    def record(self, bans: Sequence[Ban], unbans: Sequence[Unban]) -> None:
        """The ban rows, then the unban rows, in one transaction: all or nothing."""
        host = self._writer()
        params = [_params(host, row) for row in outgoing([*bans, *unbans], frozenset())]
        with self._errors("publish bans to the fleet's log"), self._conn.transaction():
            if params:
                with self._conn.cursor() as cursor:
                    cursor.executemany(_INSERT, params)

    # -- reads ---------------------------------------------------------------------------

    def active_bans(self, now: float) -> list[Ban]:
        """Bans not lifted and not over at `now`: the newest of each host and target."""
        return [found.stored.ban for found in self._read("active bans", _ACTIVE, at=now)]

    def bans_to_restore(self, now: float, since: float) -> list[StoredBan]:
        found = self._read("bans to restore", _RESTORE, at=now, since=since)
        return [each.stored for each in found]

    def bans_since(self, since: float) -> list[StoredBan]:
        return [found.stored for found in self._read("bans", _SINCE, since=since)]

    def counts(self, now: float) -> tuple[int, int]:
        """(active bans, of which permanent), counted as `active_bans` lists them."""
        active = self.active_bans(now)
        return len(active), sum(1 for ban in active if ban.permanent)

    def history(self, target: IPNetwork | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Bans and lifts within `target` (None: all), newest first; no hits."""
        scope = None if target is None else str(target)
        limit = max(0, limit)
        bans = self._read("history", _BAN_HISTORY, scope=scope, limit=limit)
        lifts = self._read("history", _LIFT_HISTORY, scope=scope, limit=limit)
        return history.newest_first(
            [
                [history.ban_entry(found.id, found.stored.ban) for found in bans],
                [history.unban_entry(found.id, found.stored) for found in lifts],
            ],
            limit,
        )

    def report_figures(self, period: Period, top: int) -> ReportFigures:
        """The bans of `period` and their timeline; no hits (none are in the log)."""
        made = [found.stored.ban for found in self.bans_in(period)]
        buckets: dict[int, tuple[int, int]] = {}
        for ban in made:
            bans, permanent = buckets.get(period.bucket_of(ban.banned_at), (0, 0))
            buckets[period.bucket_of(ban.banned_at)] = (bans + 1, permanent + ban.permanent)
        return ReportFigures(
            timeline=timeline(period, {}, buckets),
            ports=(),
            port_count=0,
            kinds=(),
            sources=(),
            source_count=0,
            bans=len(made),
            permanent_bans=sum(1 for ban in made if ban.permanent),
            banned_targets=len({ban.target for ban in made}),
            network_bans=(),
        )

    # -- beyond the Store interface: what the fleet's report adds ------------------------

    def bans_in(self, period: Period) -> list[Found]:
        """Every ban made in `period` (banned_at in [start, end)), oldest first, with the
        name of the host that made it."""
        return self._read("the report", _PERIOD, start=period.start, end=period.end)

    def read_only(self) -> None:
        """Make this session read-only in the database too: every later write is refused
        there (SQLSTATE 25006), whatever the role's rights (the report's promise)."""
        with self._errors("make the fleet's session read-only"):
            self._conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")

    def hosts(self) -> list[str]:
        """The fleet's hosts (`porttrap.hosts`), by name."""
        with self._errors("read the fleet's hosts"), self._conn.cursor(row_factory=tuple_row) as c:
            return [str(name) for (name,) in c.execute(_HOSTS)]

    # -- plumbing ------------------------------------------------------------------------

    def _writer(self) -> str:
        self._check_open()
        if self.host is None:
            raise StoreError("the whole fleet's view of the log only reads: name a host to write")
        return self.host

    def _read(self, what: str, query: str, **params: Any) -> list[Found]:
        """The rows `query` finds that rows.parse accepts; the others are skipped, counted."""
        params |= {"host": self.host, "now": self._clock.now()}
        where = f"read {what} from the fleet's log"
        with self._errors(where), self._conn.cursor(row_factory=tuple_row) as cursor:
            found = cursor.execute(query, params).fetchall()
        return [made for row in found if (made := self._found(row)) is not None]

    def _found(self, row: Row) -> Found | None:
        entry = rows.parse(row[: len(rows.COLUMNS)])
        if isinstance(entry, str) or entry.ban is None:
            self._bad_row(row[0], entry if isinstance(entry, str) else "not a ban")
            return None
        lifted_at, lifted_reason = row[len(rows.COLUMNS) :]
        if lifted_reason is not None and not str(lifted_reason).isprintable():
            lifted_reason = "unbanned (its reason is not printable)"
        return Found(entry.id, entry.host, StoredBan(entry.ban, lifted_at, lifted_reason))

    def _bad_row(self, row_id: object, problem: str) -> None:
        key = row_id if isinstance(row_id, int) else -1
        if key not in self._warned:
            self._warned.add(key)
            log.event("fleet-bad-row", logging.WARNING, problem=problem)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as e:
            raise StoreError(f"cannot {what}: {_first_line(e)}") from e

    def _check_open(self) -> None:
        if self._conn.closed:
            raise StoreError("cannot use the fleet's log: its connection is closed")


def _params(host: str, row: Outgoing) -> Row:
    return (
        host, str(row.kind), row.target, row.ban_id, row.banned_at, row.expires_at,
        row.ban_count, row.reason, row.evidence,
    )  # fmt: skip


def _first_line(error: psycopg.Error) -> str:
    """The server's message without its DETAIL and HINT lines: errors are one line."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
