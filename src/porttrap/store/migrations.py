"""The SQLite schema, as an ordered list of forward migrations.

`PRAGMA user_version` holds the schema version: 0 is a database porttrap has never written.
To change the schema, append a `Migration` with the next version; never edit a released one.
Before migrating a database that holds anything, `migrate` copies it to
`<name>.bak-v<old>` beside it, and all pending migrations run in one transaction, so a
failure leaves the database exactly as it was.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from porttrap import __version__, log
from porttrap.errors import StoreError


@dataclass(frozen=True, slots=True)
class Migration:
    """The statements that take the schema from `version - 1` to `version`."""

    version: int
    summary: str
    statements: tuple[str, ...]


# Plain CREATE (no IF NOT EXISTS): a clash with tables already there must fail, not merge.
_V1 = (
    """CREATE TABLE hits (
        at REAL NOT NULL,
        source TEXT NOT NULL,
        source_port INTEGER NOT NULL,
        local TEXT NOT NULL,
        port INTEGER NOT NULL,
        proto TEXT NOT NULL,
        kind TEXT NOT NULL,
        outcome TEXT NOT NULL
    )""",
    "CREATE INDEX hits_source_at ON hits (source, at)",
    "CREATE INDEX hits_at ON hits (at)",
    """CREATE TABLE bans (
        id INTEGER PRIMARY KEY,
        target TEXT NOT NULL,
        banned_at REAL NOT NULL,
        expires_at REAL,
        ban_count INTEGER NOT NULL,
        reason TEXT NOT NULL,
        lifted_at REAL,
        lifted_reason TEXT
    )""",
    # Active bans are searched by expiry among the unlifted: expired rows pile up over the
    # years, and this index lets the search skip them.
    "CREATE INDEX bans_active ON bans (expires_at) WHERE lifted_at IS NULL",
    "CREATE INDEX bans_target ON bans (target, banned_at)",
    "CREATE INDEX bans_banned_at ON bans (banned_at)",
    "CREATE INDEX bans_lifted_at ON bans (lifted_at) WHERE lifted_at IS NOT NULL",
)

# What a ban rests on (issue 12). Bans made before it: UDP trap bans rested on datagrams, which
# can be forged; the rest are taken as verified (a connect trap's handshake, an admin's ban),
# as the porttrap that made them treated them: their escalation goes on as it was.
_V2 = (
    "ALTER TABLE bans ADD COLUMN evidence TEXT NOT NULL DEFAULT 'verified'",
    "UPDATE bans SET evidence = 'unverified' WHERE reason LIKE 'trap:udp/%'",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema: hits and bans", _V1),
    Migration(2, "what each ban rests on: verified or unverified evidence", _V2),
)
LATEST = MIGRATIONS[-1].version


def read_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the file (0: never migrated)."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    return int(version)


def has_content(conn: sqlite3.Connection) -> bool:
    """Whether the database holds any table, index or view at all."""
    return conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None


def check_supported(path: Path, version: int, latest: int = LATEST) -> None:
    """Refuse a database written by a newer porttrap: reading it could lose data."""
    if version <= latest:
        return
    raise StoreError(
        f"{path} has schema v{version}, but this porttrap ({__version__}) supports schema "
        f"up to v{latest}: upgrade porttrap, or restore a backup made before the upgrade "
        f"(such as {path.name}.bak-v{latest} beside it) while porttrap is stopped"
    )


def migrate(
    conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration] = MIGRATIONS
) -> Path | None:
    """Bring the database at `path` up to the last of `migrations`. Returns the backup
    made first, or None when nothing needed one. `conn` must be in autocommit mode."""
    old = read_version(conn)
    pending = [m for m in migrations if m.version > old]
    if not pending:
        return None
    saved = backup(conn, path, old) if has_content(conn) else None
    _apply(conn, path, old, pending, saved)
    return saved


def _apply(
    conn: sqlite3.Connection,
    path: Path,
    old: int,
    pending: Sequence[Migration],
    saved: Path | None,
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if read_version(conn) != old:  # another process migrated it meanwhile
            conn.execute("ROLLBACK")
            return
        for migration in pending:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        conn.execute("ROLLBACK")
        kept = f"; a copy is at {saved}" if saved else ""
        raise StoreError(
            f"cannot migrate {path} from schema v{old} to v{pending[-1].version}: {e}. "
            f"The database is unchanged{kept}; move it aside to start afresh, "
            "or report this as a bug"
        ) from e
    log.event("store-migrated", path=path, old=old, new=pending[-1].version)


def backup(conn: sqlite3.Connection, path: Path, version: int) -> Path:
    """Copy the open database to `<name>.bak-v<version>` (mode 0600) with sqlite3's backup
    API; an existing backup is never overwritten: the new one gets a numbered name."""
    target = _free_name(path.with_name(f"{path.name}.bak-v{version}"))
    partial = target.with_name(target.name + ".partial")
    try:
        _copy(conn, partial)
        partial.rename(target)
    except (OSError, sqlite3.Error) as e:
        partial.unlink(missing_ok=True)
        raise StoreError(
            f"cannot back up {path} to {target} before migrating it: {e}. "
            "Nothing was changed; free some disk space or fix the directory's permissions"
        ) from e
    log.event("store-backup", path=path, backup=target, version=version)
    return target


def _copy(conn: sqlite3.Connection, destination: Path) -> None:
    os.close(os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    copy = sqlite3.connect(destination)
    try:
        conn.backup(copy)
    finally:
        copy.close()


def _free_name(wanted: Path) -> Path:
    candidate, n = wanted, 1
    while candidate.exists():
        n += 1
        candidate = wanted.with_name(f"{wanted.name}.{n}")
    return candidate
