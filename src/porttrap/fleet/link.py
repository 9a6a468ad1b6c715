"""The daemon's link to the fleet's database: publish from the outbox, receive from the log.

Two connections (psycopg's AsyncConnection, on the daemon's event loop, which never waits on
them): one LISTENs on the log's channel, whose NOTIFY (sent by the database on every insert)
wakes the other, which reads the rows after this host's position, publishes what the outbox
holds, and beats the host's heartbeat every `HEARTBEAT` seconds. Nothing is polled on a
timer: a row reaches the other hosts when they are told of it.

A lost connection (the database down, the network cut: libpq's TCP keepalives and user
timeout, and the heartbeat's own deadline, tell within ~15 s) ends both; the link tries again
after 1 s, doubling to 10 s, and catches up from its position: nothing published meanwhile
is missed. A host that starts with no position, or that is far behind, reads the fleet's
active bans (and those that count toward escalation) in one query instead of the whole log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg

from porttrap import heap, log
from porttrap.clock import Clock
from porttrap.config.schema import FleetConfig
from porttrap.fleet import rows
from porttrap.fleet.outbox import Outbox, Outgoing
from porttrap.fleet.schema import CHANNEL, VERSION
from porttrap.model import FleetEntry

HEARTBEAT = 5.0  # seconds between heartbeats (and the longest a lost link goes unseen, plus
QUERY_TIMEOUT = 10.0  # this: a query that takes longer ends the connection)
# seconds before reconnecting, doubling: a failed try costs the database nothing, and a host
# back within 10 s of the database shares its bans again soon
FIRST_RETRY, LAST_RETRY = 1.0, 10.0
CATCH_UP_TIMEOUT = 300.0  # seconds for the first read after connecting (100,000 rows: ~2 s)
BATCH = 10_000  # log rows read at once
PUBLISH_BATCH = 5_000  # outbox rows published in one transaction
SNAPSHOT_BEHIND = 200_000  # rows behind the log's end past which a host reads the snapshot
# libpq: TCP keepalives and a user timeout, so that a cut link ends the connection rather
# than leaving a LISTEN that hears nothing forever.
KEEPALIVE = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
    "application_name": "porttrap",
}

# The fleet's state for a host that joins: every ban still in force, or recent enough to
# count toward escalation, that no later unban lifted (up to the log's end, `top`). The
# unbans are gathered first (MATERIALIZED) so that the planner hashes them by target: with
# the unbans as a correlated subquery on the log, a log just filled (no statistics yet) was
# planned as one index range scan per ban, quadratic (10,000 fresh rows: 1.7-1.9 s, against
# 0.05 s this way; bench/fleet_catchup.py and BENCHMARKS.md).
_SNAPSHOT = (  # constants only: every value is a parameter
    "WITH lifted AS MATERIALIZED (SELECT id, host, kind, target FROM porttrap.log"  # noqa: S608
    " WHERE kind IN ('unban', 'unban-fleet') AND id <= %(top)s) "
    + rows.SELECT
    + """ AS l WHERE l.id > %(after)s AND l.id <= %(top)s AND l.kind = 'ban'
      AND (l.expires_at IS NULL OR l.expires_at > %(now)s OR l.banned_at > %(since)s)
      AND NOT EXISTS (
        SELECT 1 FROM lifted AS u
        WHERE u.target = l.target AND u.id > l.id
          AND (u.kind = 'unban-fleet' OR u.host = l.host))
    ORDER BY l.id LIMIT %(page)s"""
)
SNAPSHOT_PAGE = 25_000  # rows of the snapshot read at once: the next page is read meanwhile
SNAPSHOT_FIRST = 5_000  # ... but the first page smaller: the work here starts sooner
_PUBLISH = """INSERT INTO porttrap.log (host, kind, target, ban_id, banned_at, expires_at,
    ban_count, reason, evidence) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (host, kind, ban_id) DO NOTHING"""


@dataclass(slots=True)
class LinkFigures:
    """What `porttrap fleet status` and the metrics show of the link."""

    connected: bool = False
    error: str | None = None  # why the last connection ended, or could not be made
    position: int = 0  # the last row of the log applied here
    end: int = 0  # the log's last row, as the last NOTIFY or read told
    receive_lag: float | None = None  # seconds from a row's insert to its read here (last)
    publish_lag: float | None = None  # seconds a published row waited in the outbox (last)
    published: int = 0
    received: int = 0
    refused_rows: int = 0  # hostile or malformed rows, never applied
    outbox: int = 0


class FleetLink:
    """Runs (`run`) until cancelled. `on_entries` is called on the loop with each batch of
    checked rows from other hosts and the hosts' own; `on_link` with each change of state."""

    def __init__(
        self,
        config: FleetConfig,
        password: str | None,
        outbox: Outbox,
        *,
        clock: Clock,
        on_entries: Callable[[list[FleetEntry]], None],
        on_link: Callable[[bool, str | None], None],
        forget_after: float,
        bulk: Callable[[], AbstractContextManager[None]] = heap.bulk,
    ) -> None:
        assert config.name is not None, "the fleet name is resolved before the link is made"
        self.name = config.name
        self._conninfo = psycopg.conninfo.make_conninfo(config.url, **KEEPALIVE)
        self._password = password
        self._outbox = outbox
        self._clock = clock
        self._on_entries = on_entries
        self._on_link = on_link
        self._forget_after = forget_after
        self._bulk = bulk  # around a snapshot: the cycle collector paused, and so on
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-outbox")
        self._wake = asyncio.Event()
        self._queued: list[float] = []  # monotonic times of outbox adds not yet published
        self.figures = LinkFigures()

    # -- from the daemon -------------------------------------------------------------------

    async def open(self) -> None:
        """Read the position and the outbox's length (on the outbox's thread)."""
        self.figures.position = await self._io(self._outbox.position)
        self.figures.outbox = await self._io(self._outbox.count)

    def publish(self, rows: Sequence[Outgoing]) -> None:
        """Queue `rows` in the outbox (on disk, in order) and wake the publisher."""
        if not rows:
            return
        loop = asyncio.get_running_loop()
        self._queued.append(self._clock.monotonic())
        self.figures.outbox += len(rows)
        done = self._thread.submit(self._outbox.add, list(rows))
        done.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._wake.set))

    async def close(self) -> None:
        """Every queued row on disk and the position saved, then the outbox closed."""
        position = self.figures.position
        await self._io(self._outbox.set_position, position)
        self._thread.submit(self._outbox.close)
        self._thread.shutdown(wait=True)

    # -- the link ------------------------------------------------------------------------

    async def run(self) -> None:
        delay = FIRST_RETRY
        while True:
            started = self._clock.monotonic()
            try:
                await self._session()
            except (psycopg.Error, OSError, TimeoutError, LinkError) as err:
                self._lost(describe(err))
            if self._clock.monotonic() - started > LAST_RETRY:
                delay = FIRST_RETRY  # it had worked a while: try again soon
            await asyncio.sleep(delay)
            delay = min(delay * 2, LAST_RETRY)

    def _lost(self, error: str) -> None:
        self.figures.connected = False
        self.figures.error = error
        self._on_link(False, error)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conninfo = self._conninfo
        if self._password is not None:
            conninfo = psycopg.conninfo.make_conninfo(conninfo, password=self._password)
        async with asyncio.timeout(QUERY_TIMEOUT * 2):
            return await psycopg.AsyncConnection.connect(conninfo, autocommit=True)

    async def _session(self) -> None:
        async with await self._connect() as listener, await self._connect() as work:
            async with asyncio.timeout(QUERY_TIMEOUT):
                await self._check(work)
                await listener.execute(f"LISTEN {CHANNEL}")
            self.figures.connected, self.figures.error = True, None
            self._on_link(True, None)
            tasks = [
                asyncio.create_task(self._listen(listener)),
                asyncio.create_task(self._work(work)),
            ]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _check(self, work: psycopg.AsyncConnection[Any]) -> None:
        """The schema is one this porttrap knows, and the database knows this host's role
        under this host's name (else every publish would be refused)."""
        cur = await work.execute("SELECT value FROM porttrap.meta WHERE key = 'schema_version'")
        row = await cur.fetchone()
        if row is None or int(row[0]) > VERSION:
            raise LinkError(
                f"the fleet's schema is version {row and row[0]}, this porttrap knows up to "
                f"{VERSION}: upgrade porttrap on this host (or run porttrap fleet init)"
            )
        cur = await work.execute("SELECT name FROM porttrap.hosts WHERE role = current_user")
        names = [r[0] for r in await cur.fetchall()]
        if self.name not in names:
            raise LinkError(
                f"the database knows this login as {names or 'no host'}, not {self.name!r}: "
                f"run porttrap fleet add-host {self.name} on the database, or set [fleet] name"
            )

    async def _listen(self, listener: psycopg.AsyncConnection[Any]) -> None:
        async for notice in listener.notifies():
            with contextlib.suppress(ValueError):
                self.figures.end = max(self.figures.end, int(notice.payload))
            self._wake.set()

    async def _work(self, work: psycopg.AsyncConnection[Any]) -> None:
        async with asyncio.timeout(CATCH_UP_TIMEOUT):
            await self._catch_up(work)
        beat = 0.0
        while True:
            async with asyncio.timeout(QUERY_TIMEOUT):
                await self._publish(work)
                await self._read(work)
                if self._clock.monotonic() - beat >= HEARTBEAT:
                    await self._heartbeat(work)
                    beat = self._clock.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT):
                    await self._wake.wait()
            self._wake.clear()

    async def _catch_up(self, work: psycopg.AsyncConnection[Any]) -> None:
        cur = await work.execute("SELECT coalesce(max(id), 0) FROM porttrap.log")
        row = await cur.fetchone()
        top = int(row[0]) if row else 0
        self.figures.end = max(self.figures.end, top)
        if self.figures.position == 0 or top - self.figures.position > SNAPSHOT_BEHIND:
            await self._snapshot(work, top)
            await self._advance(top)
        await self._read(work)

    async def _snapshot(self, work: psycopg.AsyncConnection[Any], top: int) -> None:
        """Every active ban of the log up to row `top`, by pages: while one page becomes bans
        here (parsed, adopted, into the kernel), the database reads the next one. The cycle
        collector waits meanwhile (100,000 new objects: see porttrap.heap)."""
        now = self._clock.now()
        params = {"top": top, "now": now, "since": now - self._forget_after, "page": SNAPSHOT_PAGE}
        first_page = min(SNAPSHOT_FIRST, SNAPSHOT_PAGE)
        started = self._clock.monotonic()
        count = 0
        waited = 0.0  # seconds spent waiting for the database
        first: float | None = None  # seconds until the first page was read
        ask: asyncio.Task[list[tuple[Any, ...]]] | None = None
        with self._bulk():
            try:
                asking = params | {"after": 0, "page": first_page}
                ask = asyncio.ensure_future(self._page(work, asking))
                while ask is not None:
                    asked = self._clock.monotonic()
                    found = await ask
                    waited += self._clock.monotonic() - asked
                    first = first if first is not None else self._clock.monotonic() - started
                    ask = None
                    if len(found) == asking["page"]:
                        asking = params | {"after": found[-1][0]}
                        ask = asyncio.ensure_future(self._page(work, asking))
                        await asyncio.sleep(0)  # the query is sent before this page is handled
                    self._deliver(found)
                    count += len(found)
            finally:
                if ask is not None:  # the link failed while a page was read
                    ask.cancel()
                    await asyncio.gather(ask, return_exceptions=True)
        log.event(
            "fleet-snapshot",
            logging.INFO,
            rows=count,
            position=top,
            seconds=round(self._clock.monotonic() - started, 3),
            database_wait_s=round(waited, 3),
            first_page_s=None if first is None else round(first, 3),
        )

    async def _page(
        self, work: psycopg.AsyncConnection[Any], params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """One page of the snapshot, in binary (numbers come as they are, not as text to read:
        a fifth less time waiting for 100,000 rows); the same Python values as in text."""
        cur = await work.execute(_SNAPSHOT, params, binary=True)
        return await cur.fetchall()

    async def _read(self, work: psycopg.AsyncConnection[Any]) -> None:
        while True:
            cur = await work.execute(rows.SELECT_AFTER, (self.figures.position, BATCH))
            found = await cur.fetchall()
            if not found:
                return
            self._deliver(found)
            await self._advance(int(found[-1][0]))
            if len(found) < BATCH:
                return

    def _deliver(self, found: Sequence[Sequence[Any]]) -> None:
        entries: list[FleetEntry] = []
        for row in found:
            parsed = rows.parse(row)
            if isinstance(parsed, str):
                self.figures.refused_rows += 1
                log.event("fleet-row-refused", logging.WARNING, problem=parsed)
                continue
            if parsed.host != self.name:
                entries.append(parsed)
        if found and (lag := rows.lag(found[-1])) is not None:
            self.figures.receive_lag = lag
        self.figures.received += len(entries)
        if entries:
            self._on_entries(entries)

    async def _advance(self, position: int) -> None:
        self.figures.position = position
        self.figures.end = max(self.figures.end, position)
        await self._io(self._outbox.set_position, position)

    async def _publish(self, work: psycopg.AsyncConnection[Any]) -> None:
        while True:
            pending = await self._io(self._outbox.pending, PUBLISH_BATCH)
            if not pending:
                self.figures.outbox = 0
                return
            params = [
                (self.name, str(r.kind), r.target, r.ban_id, r.banned_at, r.expires_at,
                 r.ban_count, r.reason, r.evidence)
                for _, r in pending
            ]  # fmt: skip
            async with work.transaction(), work.cursor() as cur:
                await cur.executemany(_PUBLISH, params)
            await self._io(self._outbox.published, pending[-1][0])
            self.figures.published += len(pending)
            if self._queued:
                self.figures.publish_lag = self._clock.monotonic() - self._queued[0]
                self._queued.clear()
            if len(pending) < PUBLISH_BATCH:
                self.figures.outbox = await self._io(self._outbox.count)
                return

    async def _heartbeat(self, work: psycopg.AsyncConnection[Any]) -> None:
        await work.execute(
            "UPDATE porttrap.hosts SET last_seen = now(), position = %s WHERE name = %s",
            (self.figures.position, self.name),
        )

    async def _io(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, func, *args)


class LinkError(Exception):
    """The database answers, but this host cannot use it as it is (schema, name)."""


def describe(err: BaseException) -> str:
    """One line for the log: what failed, without libpq's multi-line detail."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else 'no detail'}"
