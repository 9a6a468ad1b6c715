"""The store writer: jobs run in order on their own thread, errors are logged, close() drains."""

from __future__ import annotations

import functools
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


def test_a_failing_job_is_logged_and_later_jobs_still_run(caplog: pytest.LogCaptureFixture) -> None:
    writer = StoreWriter()
    writer.start()
    done: list[str] = []

    def broken() -> None:
        raise StoreError("disk full")

    writer.submit(broken)
    writer.submit(lambda: done.append("after"))
    writer.close()
    assert done == ["after"] and writer.failures == 1
    assert 'event=store-error error="disk full"' in caplog.text


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
