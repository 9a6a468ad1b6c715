"""The store writer: jobs run in order on their own thread, errors are logged, close() drains."""

from __future__ import annotations

import functools
import logging
import threading

import pytest

from porttrap.daemon.writer import StoreWriter
from porttrap.errors import StoreError


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
