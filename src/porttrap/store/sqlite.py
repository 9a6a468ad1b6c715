"""The default store: one SQLite file in the state directory (WAL, versioned schema).

The daemon opens it read-write (creating and migrating it); the CLI opens it read-only so it
can show history while the daemon runs. Every sqlite3 error leaves this module as a
`StoreError` naming the file; rows that cannot be read are skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TypeVar

from porttrap import log
from porttrap.errors import NoDatabase, StoreError
from porttrap.heap import collector_paused
from porttrap.model import Ban, Hit, IPNetwork, Outcome, Unban, show
from porttrap.report.figures import Period, ReportFigures
from porttrap.store import rows, sqlite_report
from porttrap.store.base import HistoryEntry, StoredBan
from porttrap.store.history import (
    Keyed,
    ban_entry,
    hit_entry,
    is_single,
    newest_first,
    unban_entry,
    within,
)
from porttrap.store.migrations import LATEST, check_supported, migrate, read_version
from porttrap.store.rows import Row

BUSY_TIMEOUT_MS = 5000
_T = TypeVar("_T")

# Columns are selected in the order the converters in `rows` unpack them, after the rowid.
_SQL_INSERT_HIT = """INSERT INTO hits (at, source, source_port, local, port, proto, kind, outcome)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
_SQL_INSERT_BAN = """INSERT INTO bans (target, banned_at, expires_at, ban_count, reason,
    evidence) VALUES (?, ?, ?, ?, ?, ?)"""
_SQL_LIFT = """UPDATE bans SET lifted_at = :at, lifted_reason = :reason
    WHERE target = :target AND banned_at <= :at
    AND lifted_at IS NULL AND (expires_at IS NULL OR expires_at > :at)"""
# Two branches so that each is an index search (bans_active) rather than a scan of every ban
# ever made; unordered, since sorting in Python is cheaper than making SQLite pick a plan.
# A ban counts only while it is its target's newest one not lifted: a newer ban replaces it,
# as in the kernel, even when the newer one is shorter (bans_target indexes the lookup).
_NEWEST = """NOT EXISTS (SELECT 1 FROM bans AS later WHERE later.target = bans.target
    AND later.lifted_at IS NULL AND (later.banned_at > bans.banned_at
        OR (later.banned_at = bans.banned_at AND later.id > bans.id)))"""
_SQL_ACTIVE = f"""SELECT id, target, banned_at, expires_at, ban_count, reason, evidence FROM bans
        WHERE lifted_at IS NULL AND expires_at IS NULL AND {_NEWEST}
    UNION ALL
    SELECT id, target, banned_at, expires_at, ban_count, reason, evidence FROM bans
        WHERE lifted_at IS NULL AND expires_at > :now AND {_NEWEST}"""  # noqa: S608 - constants
_SQL_COUNTS = f"""SELECT count(*), coalesce(sum(expires_at IS NULL), 0) FROM (
    SELECT expires_at, row_number() OVER (
        PARTITION BY target ORDER BY banned_at DESC, id DESC) AS newest
    FROM (SELECT id, target, banned_at, expires_at FROM bans
            WHERE lifted_at IS NULL AND expires_at IS NULL AND {_NEWEST}
        UNION ALL
        SELECT id, target, banned_at, expires_at FROM bans
            WHERE lifted_at IS NULL AND expires_at > :now AND {_NEWEST})
) WHERE newest = 1"""  # noqa: S608 - constants only
_SQL_SINCE = """SELECT id, target, banned_at, expires_at, ban_count, reason, evidence, lifted_at,
    lifted_reason FROM bans WHERE banned_at >= ? ORDER BY banned_at, id"""
_SQL_RESTORE = """SELECT id, target, banned_at, expires_at, ban_count, reason, evidence, lifted_at,
    lifted_reason FROM bans WHERE banned_at >= :since
    UNION ALL
    SELECT id, target, banned_at, expires_at, ban_count, reason, evidence, lifted_at, lifted_reason
    FROM bans WHERE banned_at < :since AND lifted_at IS NULL
        AND (expires_at IS NULL OR expires_at > :now)
    ORDER BY banned_at, id"""
_SQL_PRUNE = "DELETE FROM hits WHERE at < ?"
# Hits are appended (rowid: the largest + 1) and deleted from the oldest end, so this leaves
# at most the newest `keep` (fewer where the age pruning left a gap), found by the rowid alone.
_SQL_PRUNE_ROWS = "DELETE FROM hits WHERE rowid <= (SELECT max(rowid) FROM hits) - ?"


@dataclass(frozen=True, slots=True)
class _Stream:
    """One history stream: its query over everything, the same for one address, and how a
    row becomes an entry. Both queries are newest first; LIMIT -1 is no limit in SQLite.
    `networks`: the one-address query also returns every network's rows (a ban's), which
    `within` then keeps when they hold the address."""

    table: str
    everything: str
    one_address: str
    convert: Callable[[Row], Keyed]
    networks: bool = False


def _hit_keyed(row: Row) -> Keyed:
    hit, outcome = rows.hit_from(row[1:])
    return hit_entry(row[0], hit, outcome)


def _ban_keyed(row: Row) -> Keyed:
    return ban_entry(row[0], rows.ban_from(row[1:]))


def _lift_keyed(row: Row) -> Keyed:
    return unban_entry(row[0], rows.stored_ban_from(row[1:]))


_HITS = _Stream(
    "hits",
    """SELECT rowid, at, source, source_port, local, port, proto, kind, outcome FROM hits
        ORDER BY at DESC, rowid DESC LIMIT :limit""",
    """SELECT rowid, at, source, source_port, local, port, proto, kind, outcome FROM hits
        WHERE source = :address ORDER BY at DESC, rowid DESC LIMIT :limit""",
    _hit_keyed,
)
_BANS = _Stream(
    "bans",
    """SELECT id, target, banned_at, expires_at, ban_count, reason, evidence FROM bans
        ORDER BY banned_at DESC, id DESC LIMIT :limit""",
    """SELECT id, target, banned_at, expires_at, ban_count, reason, evidence FROM bans
        WHERE target = :address OR instr(target, '/') > 0
        ORDER BY banned_at DESC, id DESC LIMIT :limit""",
    _ban_keyed,
    networks=True,
)
_LIFTS = _Stream(
    "bans",
    """SELECT id, target, banned_at, expires_at, ban_count, reason, evidence, lifted_at,
        lifted_reason FROM bans WHERE lifted_at IS NOT NULL
        ORDER BY lifted_at DESC, id DESC LIMIT :limit""",
    """SELECT id, target, banned_at, expires_at, ban_count, reason, evidence, lifted_at,
        lifted_reason FROM bans WHERE lifted_at IS NOT NULL
        AND (target = :address OR instr(target, '/') > 0)
        ORDER BY lifted_at DESC, id DESC LIMIT :limit""",
    _lift_keyed,
    networks=True,
)


class SQLiteStore:
    """The `Store` on one SQLite file. Create it with `SQLiteStore.open(path)`.

    Use it from one thread. Each write is one transaction; with WAL and synchronous=NORMAL a
    committed write survives a crash of porttrap, though not necessarily a power cut.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._warned: set[tuple[str, int]] = set()

    @classmethod
    def open(cls, path: Path, readonly: bool = False) -> SQLiteStore:
        """Open the database at `path`. Read-write (the daemon) creates and migrates it;
        read-only (the CLI) refuses a missing or outdated one and never writes."""
        conn = _open_readonly(path) if readonly else _open_writable(path)
        return cls(conn, path)

    def __enter__(self) -> SQLiteStore:
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
        with self._write("record hits") as conn:
            conn.executemany(_SQL_INSERT_HIT, (rows.hit_row(h, o) for h, o in hits))

    def add_bans(self, bans: Sequence[Ban]) -> None:
        self.record(bans, [])

    def lift(self, unbans: Sequence[Unban]) -> None:
        """Mark each ban on `unban.target` that is active at `unban.at` as lifted then."""
        self.record([], unbans)

    def record(self, bans: Sequence[Ban], unbans: Sequence[Unban]) -> None:
        """The bans, then the lifts, in one transaction (rolled back whole on an error)."""
        params = ({"at": u.at, "reason": u.reason, "target": show(u.target)} for u in unbans)
        what = "record unbans" if unbans and not bans else "record bans"
        with self._write(what + (" and unbans" if bans and unbans else "")) as conn:
            if bans:
                conn.executemany(_SQL_INSERT_BAN, (rows.ban_row(ban) for ban in bans))
            if unbans:
                conn.executemany(_SQL_LIFT, params)

    def prune_hits(self, before: float, keep: int | None = None) -> int:
        with self._write("prune hits") as conn:
            pruned = conn.execute(_SQL_PRUNE, (before,)).rowcount
            if keep is not None:
                pruned += conn.execute(_SQL_PRUNE_ROWS, (keep,)).rowcount
            return pruned

    # -- reads ---------------------------------------------------------------------------

    def active_bans(self, now: float) -> list[Ban]:
        """Bans not lifted and not expired at `now`: the newest one for each target."""
        with self._read("active bans") as conn, collector_paused():
            found = conn.execute(_SQL_ACTIVE, {"now": now})
            return _newest_per_target(list(self._convert("bans", found, _ban_with_keys)))

    def bans_to_restore(self, now: float, since: float) -> list[StoredBan]:
        with self._read("bans") as conn, collector_paused():
            found = conn.execute(_SQL_RESTORE, {"now": now, "since": since})
            return list(self._convert("bans", found, _stored))

    def bans_since(self, since: float) -> list[StoredBan]:
        with self._read("bans") as conn, collector_paused():
            return list(self._convert("bans", conn.execute(_SQL_SINCE, (since,)), _stored))

    def counts(self, now: float) -> tuple[int, int]:
        """(active bans, of which permanent), counted as `active_bans` would list them."""
        with self._read("ban counts") as conn:
            active, permanent = conn.execute(_SQL_COUNTS, {"now": now}).fetchone()
        return int(active), int(permanent)

    def history(self, target: IPNetwork | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Hits, bans and lifts within `target` (None: all), newest first."""
        with self._read("history") as conn:
            streams = [self._stream(conn, s, target, limit) for s in (_HITS, _BANS, _LIFTS)]
            return newest_first(streams, limit)

    def report_figures(self, period: Period, top: int) -> ReportFigures:
        """The report's figures, aggregated in SQL in one read transaction (sqlite_report)."""
        with self._read("the report") as conn:
            return sqlite_report.figures(conn, period, top)

    def _stream(
        self, conn: sqlite3.Connection, stream: _Stream, target: IPNetwork | None, limit: int
    ) -> list[Keyed]:
        """Equality in SQL for one address (and, for bans, every network's rows, kept in
        Python when they hold it); containment in Python for a network, since addresses as
        text cannot be range-compared."""
        limit = max(0, limit)
        if target is not None and stream.networks and is_single(target):
            found = conn.execute(stream.one_address, {"address": show(target), "limit": -1})
            keyed = self._convert(stream.table, found, stream.convert)
            return list(islice((k for k in keyed if within(target, k[1])), limit))
        if target is not None and not is_single(target):
            found = conn.execute(stream.everything, {"limit": -1})
            keyed = self._convert(stream.table, found, stream.convert)
            return list(islice((k for k in keyed if within(target, k[1])), limit))
        if target is None:
            found = conn.execute(stream.everything, {"limit": limit})
        else:
            address = str(target.network_address)
            found = conn.execute(stream.one_address, {"address": address, "limit": limit})
        return list(self._convert(stream.table, found, stream.convert))

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        with self._errors(what):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.rollback()
                raise
            self._conn.commit()

    @contextmanager
    def _read(self, what: str) -> Iterator[sqlite3.Connection]:
        """One read transaction, so that every query in it sees the same snapshot."""
        with self._errors(f"read {what}"):
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.rollback()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"cannot {what} in {self.path}: {e}") from e

    def _convert(
        self, table: str, found: Iterable[Row], convert: Callable[[Row], _T]
    ) -> Iterator[_T]:
        """Rows (rowid first) converted; a row that does not convert is skipped and warned
        about (once per row and store, so that a poll does not flood the log)."""
        for row in found:
            try:
                yield convert(row)
            except rows.BadRow as e:
                self._bad_row(table, row[0], str(e))

    def _bad_row(self, table: str, rowid: int, problem: str) -> None:
        if (table, rowid) not in self._warned:
            self._warned.add((table, rowid))
            log.event("store-bad-row", logging.WARNING, table=table, rowid=rowid, problem=problem)


def _ban_with_keys(row: Row) -> tuple[str, int, Ban]:
    return row[1], row[0], rows.ban_from(row[1:])


def _newest_per_target(found: list[tuple[str, int, Ban]]) -> list[Ban]:
    """The newest ban of each target (by banned_at, then id), oldest first. Sorted after
    conversion: a row with a bad banned_at is gone by then rather than in the way."""
    found.sort(key=lambda keyed: (keyed[2].banned_at, keyed[1]))
    newest: dict[str, Ban] = {}
    for target, _id, ban in found:
        newest.pop(target, None)  # re-insert: keeps the dict in banned_at order
        newest[target] = ban
    return list(newest.values())


def _stored(row: Row) -> StoredBan:
    return rows.stored_ban_from(row[1:])


# -- opening ---------------------------------------------------------------------------------


def _open_writable(path: Path) -> sqlite3.Connection:
    _make_private(path)
    conn = _connect(path, str(path), uri=False)
    try:
        check_supported(path, _probe(conn, path))
        _configure(conn, path)
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _open_readonly(path: Path) -> sqlite3.Connection:
    try:
        path.stat()
    except FileNotFoundError:
        raise NoDatabase(
            f"no database at {path}: porttrap has not run yet with this state_dir"
        ) from None
    except PermissionError:
        raise StoreError(_denied(path)) from None
    if not os.access(path, os.R_OK):
        raise StoreError(_denied(path))
    conn = _connect(path, path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        _check_current(path, _probe(conn, path))
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except BaseException:
        conn.close()
        raise
    return conn


def _denied(path: Path) -> str:
    return (
        f"permission denied reading {path}: the database is root's; run this as root "
        "(sudo porttrap ...), or give -c a config whose state_dir you may read"
    )


def _make_private(path: Path) -> None:
    """The state directory (0700) and an empty database file (0600) if either is missing,
    created with those modes so that no one else can open them even for a moment."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as e:
        raise StoreError(
            f"cannot create {path}: {e.strerror}; run porttrap as root or point state_dir "
            "at a directory it may write"
        ) from e


def _connect(path: Path, target: str, uri: bool) -> sqlite3.Connection:
    try:
        # check_same_thread=False: the daemon opens the store, restores from it, then hands
        # it to its writer thread (daemon/writer.py); one thread at a time uses it.
        conn = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path}: {e}") from e
    conn.text_factory = _text
    return conn


def _text(raw: bytes) -> str:
    """Text as the store reads it. Bytes that are not UTF-8 (damage, another program's
    writes) would make sqlite3 fail the whole read, and so the start: they read with U+FFFD
    in their place, so that such an address is a bad row, skipped and reported like any other
    (a reason just shows the marks). 13 ms per 100,000 rows."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode(errors="replace")


def _probe(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version, which also proves that the file is a database at all."""
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return read_version(conn)
    except sqlite3.Error as e:
        if e.sqlite_errorcode in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            raise StoreError(
                f"{path} is not a porttrap database (not SQLite, or damaged: {e}); move it "
                "aside (porttrap then starts a new one) or restore a backup"
            ) from e
        raise StoreError(f"cannot read {path}: {e}") from e


def _configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as e:
        raise StoreError(f"cannot set up {path}: {e}") from e
    if mode != "wal":
        log.event("store-no-wal", logging.WARNING, path=path, journal_mode=mode)


def _check_current(path: Path, version: int) -> None:
    check_supported(path, version)
    if version < LATEST:
        raise StoreError(
            f"{path} has schema v{version}, older than v{LATEST} that this porttrap reads: "
            "start the porttrap daemon once to migrate it (it keeps a backup)"
        )
