"""The report's figures in SQLite: both ways of reading `hits` (through the `hits_at` index,
or straight through) give the figures of the in-memory store; the queries that run on 90 days
of hits are index searches; rows that do not convert are left out; nothing is written."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import report_sample as sample
from porttrap.store import sqlite_report
from porttrap.store.base import StoredBan
from porttrap.store.sqlite import SQLiteStore
from porttrap.testing import MemoryStore


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "porttrap.db"
    with SQLiteStore.open(path) as store:
        sample.fill(store)
    return path


@pytest.fixture
def store(database: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore.open(database, readonly=True) as opened:
        yield opened


@pytest.mark.parametrize("plan", ["narrow", "wide"])
@pytest.mark.parametrize("top", [1, 2, 20])
def test_both_plans_give_the_figures_of_the_memory_store(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, plan: str, top: int
) -> None:
    monkeypatch.setattr(sqlite_report, "WIDE_SHARE", 2.0 if plan == "narrow" else 0.0)
    memory = MemoryStore()
    sample.fill(memory)
    assert store.report_figures(sample.PERIOD, top) == memory.report_figures(sample.PERIOD, top)


@pytest.mark.parametrize("name", ["_SQL_HIT_BUCKETS", "_SQL_ROWS", "_SQL_SOURCE_PORTS"])
def test_the_cheap_queries_are_index_searches(database: Path, name: str) -> None:
    """No full read of `hits` where an index answers: these run on 90 days of hits."""
    sql = getattr(sqlite_report, name)
    params = {"start": 0, "end": 1, "origin": 0, "step": 1, "source": sample.A}
    with closing(sqlite3.connect(database)) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan and all(not step.startswith("SCAN hits") for step in plan), plan
    assert any(step.startswith("SEARCH hits") for step in plan), plan


def test_rows_that_do_not_convert_are_left_out(database: Path) -> None:
    with closing(sqlite3.connect(database)) as conn, conn:
        conn.execute(
            "INSERT INTO bans (target, banned_at, expires_at, ban_count, reason) "
            "VALUES (?, 'yesterday', NULL, 1, 'x')",
            (sample.A,),
        )
        conn.execute(
            "INSERT INTO hits (at, source, source_port, local, port, proto, kind, outcome) "
            "VALUES (?, ?, 1, '192.0.2.1', 'x', 'tcp', 'connect', 'counted')",
            (sample.DAY0 + 1, sample.D),
        )
    with SQLiteStore.open(database, readonly=True) as store:
        found = store.report_figures(sample.PERIOD, 20)
    assert [s.bans for s in found.sources if s.address == sample.A] == [
        (StoredBan(sample.A_FIRST), StoredBan(sample.A_SECOND),
         StoredBan(sample.A_FOREVER)),
    ]  # fmt: skip
    assert [p.port for p in found.ports] == [23, 445, 2323, 161]  # not port 'x'


def test_the_database_is_only_read(database: Path) -> None:
    before = database.read_bytes()
    with SQLiteStore.open(database, readonly=True) as store:
        store.report_figures(sample.PERIOD, 20)
    assert database.read_bytes() == before
