"""Where hits and bans are kept so that they survive restarts. `base` is the interface
(`Store`), `sqlite` the default store (one file in the state directory) with its versioned
schema (`migrations`) and the report's aggregates in SQL (`sqlite_report`).

`open_store` is how the rest of porttrap opens a store: the CLI and the daemon name no store
class, so that another store (PostgreSQL) is added here without touching them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from porttrap.config.schema import Config
    from porttrap.store.base import Store


def open_store(config: Config, *, readonly: bool = False, database: Path | None = None) -> Store:
    """The store of `config`, opened read-write (the daemon: created and migrated as needed)
    or `readonly` (the CLI: never writes; `errors.NoDatabase` when there is none yet, a
    `StoreError` saying what to do when it is outdated). `database`: a SQLite file to read
    instead of the config's (`porttrap report --database`)."""
    # Imported here: `porttrap.store.base` (the interface, imported by pure modules) must not
    # load sqlite3 and every store with it.
    from porttrap.store.sqlite import SQLiteStore

    path = database if database is not None else config.database
    return SQLiteStore.open(path, readonly=readonly)
