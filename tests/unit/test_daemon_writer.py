"""The store writer: jobs run in order on their own thread; a store failure is retried, a bug
is logged and dropped; close() drains."""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
from contextlib import closing
from ipaddress import ip_network
from pathlib import Path

import pytest

from porttrap.actions.dispatch import Dispatcher
from porttrap.config.loader import load_text
from porttrap.core.commands import RecordChanges
from porttrap.daemon.effects import Effects
from porttrap.daemon.writer import StoreWriter
from porttrap.errors import StoreError
from porttrap.model import Ban, StoredBan, Unban
from porttrap.store.sqlite import SQLiteStore
from porttrap.testing import FakeClock, MemoryFirewall
from store_faults import store_that_fills_up

T0 = 1_800_000_000.0


def test_jobs_run_in_order_off_the_callers_thread() -> None:
    writer = StoreWriter()
    writer.start()
    seen: list[tuple[int, str]] = []

    def job(n: int) -> None:
        seen.append((n, threading.current_thread().name))

    for n in range(100):
        writer.submit(functools.partial(job, n))
    writer.close()
    assert [n for n, _ in seen] == list(range(100))
    assert {name for _, name in seen} == {"porttrap-store"}


def test_jobs_submitted_while_held_wait_until_the_hold_ends_and_close_ends_it() -> None:
    writer = StoreWriter()
    writer.start()
    seen: list[int] = []
    with writer.held():
        writer.submit(lambda: seen.append(1))
        done = writer.barrier()
        assert not done.done() and seen == [] and writer.pending == 2
    done.result(timeout=60)
    assert seen == [1]
    with writer.held():
        writer.submit(lambda: seen.append(2))
        writer.close()  # the daemon stops during a hold: everything is still written
        assert seen == [1, 2]


def test_a_failing_job_is_retried_in_order_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk: the same job is tried again (the later ones wait, in order), the core
    hears once that writes fail and once that they succeed again (and reports them: the
    writer's own lines are at debug level)."""
    caplog.set_level(logging.DEBUG)
    failed: list[str] = []
    recovered: list[int] = []
    writer = StoreWriter(failed.append, recovered.append, retry_first=0.001)
    writer.start()
    done: list[str] = []
    tries = iter([StoreError("disk full"), StoreError("disk full"), None])

    def flaky() -> None:
        if (error := next(tries)) is not None:
            raise error
        done.append("ban")

    writer.submit(flaky)
    writer.submit(lambda: done.append("after"))
    writer.close()
    assert done == ["ban", "after"] and writer.failures == 2 and writer.error is None
    assert failed == ["disk full"] and recovered == [2]
    assert 'event=store-write-failed error="disk full"' in caplog.text
    assert "event=store-write-recovered retries=2" in caplog.text


def test_a_job_that_raises_a_bug_is_logged_once_and_dropped_and_later_jobs_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug is not a full disk: no retry mends it, and retrying it forever would hold up
    every later write (with a traceback each time)."""
    failed: list[str] = []
    writer = StoreWriter(failed.append, retry_first=0.001)
    writer.start()
    done: list[str] = []

    def buggy() -> None:
        raise KeyError("oops")

    writer.submit(buggy)
    writer.submit(lambda: done.append("after"))
    writer.barrier().result(timeout=10)  # while running, not only once closing
    assert done == ["after"] and writer.dropped == 1
    assert writer.failures == 0 and writer.error is None and failed == []
    dropped = [r for r in caplog.records if "event=store-job-dropped" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelno == logging.ERROR
    assert dropped[0].exc_info is not None and "KeyError" in caplog.text
    writer.close()


@pytest.mark.parametrize(
    ("cause", "retried"),
    [
        (sqlite3.OperationalError("database or disk is full"), True),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("attempt to write a readonly database"), True),
        (sqlite3.DatabaseError("database disk image is malformed"), True),
        (OSError(28, "No space left on device"), True),
        (sqlite3.ProgrammingError("Incorrect number of bindings supplied"), False),
        (sqlite3.IntegrityError("NOT NULL constraint failed: bans.reason"), False),
    ],
)
def test_a_store_error_is_retried_when_the_disk_or_database_failed(
    cause: Exception, retried: bool
) -> None:
    """What the SQLite store raises (a StoreError from the sqlite3 error): the disk and the
    database are worth a retry; an error that says the code is wrong is a bug, dropped."""
    writer = StoreWriter(retry_first=0.001)
    writer.start()
    tries = iter([cause, None])

    def job() -> None:
        if (error := next(tries)) is not None:
            raise StoreError(f"cannot record bans in porttrap.db: {error}") from error

    writer.submit(job)
    writer.barrier().result(timeout=10)
    assert (writer.failures, writer.dropped) == ((1, 0) if retried else (0, 1))
    writer.close()


def test_settle_after_a_dropped_job_says_it_was_not_written() -> None:
    writer = StoreWriter()
    release = threading.Event()
    writer.start()

    def blocked() -> None:
        release.wait(timeout=10)

    def buggy() -> None:
        raise KeyError("oops")

    writer.submit(blocked)
    writer.submit(buggy)
    settled = writer.settle()
    release.set()
    assert settled.result(timeout=10) == "unexpected: KeyError('oops')"
    assert writer.settle().result(timeout=10) is None  # later writes are not failing
    writer.close()


def test_a_retried_record_never_records_its_bans_twice(tmp_path: Path) -> None:
    """A ban and a lift recorded together; the disk is full at the lift, once. The retry
    records the ban once: two copies would each count toward escalation after a restart."""
    db = tmp_path / "porttrap.db"
    earlier = Ban(ip_network("198.51.100.7"), T0, T0 + 3600, 1, "trap:tcp/23")
    with closing(SQLiteStore.open(db)) as setup:
        setup.add_bans([earlier])
    store = store_that_fills_up(db, "UPDATE bans")
    writer = StoreWriter(retry_first=0.001)
    config = load_text(f'state_dir = "{tmp_path}"\n[traps]\ntcp = ["23"]\n', None)
    clock = FakeClock()
    effects = Effects(
        clock,
        firewall=MemoryFirewall(clock),
        sensor=None,
        store=store,
        writer=writer,
        actions=Dispatcher(config.actions, config.modes, tmp_path),
    )
    later = Ban(ip_network("198.51.100.8"), T0 + 5, T0 + 3600, 1, "trap:tcp/23")
    writer.start()
    effects.record_changes(RecordChanges([later, Unban(earlier.target, T0 + 6, "by hand")]))
    writer.close()
    assert writer.failures == 1 and writer.lost == 0
    with closing(store):
        assert store.bans_since(0.0) == [
            StoredBan(earlier, T0 + 6, "by hand"), StoredBan(later, None, None)
        ]  # fmt: skip


def test_settle_says_at_once_that_a_write_before_it_fails() -> None:
    writer = StoreWriter(retry_first=0.001)
    release = threading.Event()

    def failing() -> None:
        if not release.is_set():
            raise StoreError("disk full")

    writer.start()
    writer.submit(failing)
    assert writer.settle().result(timeout=10) == "disk full"
    assert writer.settle().result(timeout=10) == "disk full"  # while failing: at once
    release.set()
    writer.barrier().result(timeout=10)
    assert writer.settle().result(timeout=10) is None
    writer.close()


def test_close_gives_up_a_job_that_keeps_failing(caplog: pytest.LogCaptureFixture) -> None:
    writer = StoreWriter(retry_first=0.001)
    done: list[str] = []

    def broken() -> None:
        raise StoreError("read-only file system")

    writer.start()
    writer.submit(broken)
    writer.submit(lambda: done.append("after"))
    writer.close()
    assert done == ["after"] and writer.lost == 1
    assert "event=store-write-lost" in caplog.text


def test_close_without_start_still_writes_everything() -> None:
    writer = StoreWriter()
    done: list[int] = []
    writer.submit(lambda: done.append(1))
    writer.close()
    assert done == [1]


def test_pending_counts_jobs_not_finished() -> None:
    writer = StoreWriter()
    release = threading.Event()
    writer.start()

    def blocked() -> None:
        release.wait(timeout=10)

    writer.submit(blocked)
    writer.submit(lambda: None)
    assert writer.pending == 2
    release.set()
    writer.close()
    assert writer.pending == 0


def test_a_barrier_is_done_once_every_earlier_job_ran() -> None:
    writer = StoreWriter()
    release = threading.Event()
    done: list[int] = []

    def slow() -> None:
        release.wait(timeout=10)
        done.append(1)

    writer.start()
    writer.submit(slow)
    barrier = writer.barrier()
    assert not barrier.done()
    release.set()
    barrier.result(timeout=10)
    assert done == [1]
    writer.close()
