"""The outbox: what this host has decided and not yet published, and how far it has read the
shared log. `state_dir/fleet-outbox.db`, SQLite in WAL mode: a row written survives a crash
of porttrap (kill -9 included), so a ban decided while the database is away is published
after a restart.

Every method does disk I/O: the daemon calls them on the fleet's own thread, never on its
event loop. Rows are `Outgoing` values; `ban_id` makes a row published twice (a crash between
the database's commit and the outbox's delete) one row in the log.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from porttrap.model import Ban, Change, FleetKind, IPNetwork, Unban

NAME = "fleet-outbox.db"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        ban_id TEXT NOT NULL,
        banned_at REAL,
        expires_at REAL,
        ban_count INTEGER,
        reason TEXT,
        evidence TEXT
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One row for the shared log (`porttrap.log`), as this host publishes it."""

    kind: FleetKind
    target: str
    ban_id: str
    banned_at: float | None = None
    expires_at: float | None = None
    ban_count: int | None = None
    reason: str | None = None
    evidence: str | None = None


def outgoing(changes: Iterable[Change], fleet_wide: frozenset[IPNetwork]) -> list[Outgoing]:
    """The rows that publish `changes` (unbans of `fleet_wide` targets lift every ban)."""
    rows = []
    for change in changes:
        if isinstance(change, Unban):
            wide = change.target in fleet_wide
            kind = FleetKind.UNBAN_FLEET if wide else FleetKind.UNBAN
            ban_id = _id(kind, change.target, change.at, change.reason)
            # its time and reason in the ban columns, for the fleet's history (a reader of
            # the log takes nothing else from an unban's ban columns)
            row = Outgoing(kind, str(change.target), ban_id, change.at, reason=change.reason[:200])
            rows.append(row)
        else:
            rows.append(_ban_row(change))
    return rows


def _ban_row(ban: Ban) -> Outgoing:
    decision = (ban.expires_at, ban.ban_count, ban.reason, str(ban.evidence))
    return Outgoing(
        FleetKind.BAN,
        str(ban.target),
        _id(FleetKind.BAN, ban.target, ban.banned_at, *decision),
        ban.banned_at,
        ban.expires_at,
        ban.ban_count,
        ban.reason[:200],
        str(ban.evidence),
    )


def _id(kind: FleetKind, target: IPNetwork, at: float, *decision: object) -> str:
    """The same decision always has the same id (a republished row is a duplicate), and two
    decisions differ in id even at the same instant (a second ban of a target made in the
    same clock tick, with another count or length, is a ban of its own, as in every store)."""
    text = " ".join(repr(part) for part in decision)
    return hashlib.sha256(f"{kind} {target} {at!r} {text}".encode()).hexdigest()[:32]


class Outbox:
    """The outbox file; one thread uses it (`check_same_thread` is off for the hand-over
    from the thread that opens it to the one that uses it)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / NAME
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a process crash loses nothing
        for statement in _SCHEMA:
            self._db.execute(statement)
        self.path.chmod(0o600)

    def add(self, rows: Sequence[Outgoing]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO outbox (kind, target, ban_id, banned_at, expires_at, ban_count, "
                "reason, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (str(r.kind), r.target, r.ban_id, r.banned_at, r.expires_at, r.ban_count,
                     r.reason, r.evidence)
                    for r in rows
                ],
            )  # fmt: skip

    def pending(self, limit: int) -> list[tuple[int, Outgoing]]:
        """The oldest `limit` rows not yet published, with their sequence numbers."""
        found = self._db.execute(
            "SELECT seq, kind, target, ban_id, banned_at, expires_at, ban_count, reason, "
            "evidence FROM outbox ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [(seq, Outgoing(FleetKind(kind), *rest)) for seq, kind, *rest in found]

    def published(self, up_to: int) -> None:
        """The rows up to sequence number `up_to` are in the shared log."""
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (up_to,))

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def position(self) -> int:
        """The id of the last row of the shared log this host has applied (0: none yet)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'position'").fetchone()
        return 0 if row is None else int(row[0])

    def set_position(self, position: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('position', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (position,),
        )

    def close(self) -> None:
        self._db.close()
