"""A SQLite store whose disk fills up at a chosen statement: what a full state_dir does to a
write half done (`sqlite3.OperationalError`, the transaction rolled back)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from porttrap.store.sqlite import SQLiteStore

FULL = "database or disk is full"


class _FillsUp(sqlite3.Connection):
    """Raises FULL for the next `fails` statements that start with `prefix`."""

    prefix = ""
    fails = 0

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        if self.fails and sql.lstrip().startswith(self.prefix):
            self.fails -= 1
            raise sqlite3.OperationalError(FULL)
        return super().executemany(sql, parameters)


def store_that_fills_up(path: Path, prefix: str, fails: int = 1) -> SQLiteStore:
    """A store at `path` (created and migrated as the daemon does) whose next `fails`
    statements starting with `prefix` (say "UPDATE bans": a lift) fail as on a full disk."""
    SQLiteStore.open(path).close()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=_FillsUp)
    assert isinstance(conn, _FillsUp)
    conn.prefix, conn.fails = prefix, fails
    return SQLiteStore(conn, path)
