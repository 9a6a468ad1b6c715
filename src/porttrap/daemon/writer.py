"""Store writes on a thread of their own, in order, so that the event loop never waits for
the disk: a slow fsync after one ban must not delay the accept (and the ban) of the next
scanner. The kernel is updated first, on the loop; the record follows here."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from porttrap import log
from porttrap.errors import StoreError

Job = Callable[[], None]


class StoreWriter:
    """Runs jobs one after another on one thread. `close()` finishes every job first."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="porttrap-store", daemon=True)
        self._lock = threading.Lock()
        self._pending = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished: how far the disk is behind."""
        return self._pending

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._pending += 1
        self._jobs.put(job)

    def barrier(self) -> Future[None]:
        """A future done once every job submitted before it has run (jobs run in order)."""
        done: Future[None] = Future()
        self.submit(lambda: done.set_result(None))
        return done

    def close(self) -> None:
        """Write everything submitted so far, then stop the thread."""
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join()
        else:  # never started (the daemon failed early): write here
            self._work()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._pending -= 1

    def _run(self, job: Job) -> None:
        try:
            job()
        except (StoreError, OSError) as err:
            self.failures += 1
            log.event("store-error", logging.ERROR, error=str(err))
        except Exception:  # a bug must not silently stop every later write
            self.failures += 1
            log.LOGGER.exception("event=store-error error=unexpected")
