"""How many commands and webhooks run and wait at once.

At most `max_running` run; up to `queue` more wait, oldest first; beyond that an action is
dropped and counted, and the first drop of a burst is logged (a flood must not write a line
per drop). A scan that hits a thousand ports with a hook on "hit" therefore costs at most
`queue` waiting actions, never an unbounded pile. Actions of bans and unbans go before the
actions of hits, and when the queue is full a ban's action takes the place of the newest
waiting hit's: hits give way to bans, as they do in the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

from porttrap import log
from porttrap.actions.process import Ending


class Job(Protocol):
    """One command or webhook delivery."""

    @property
    def hit(self) -> bool:
        """Whether it is a hit's action (it gives way to ban actions)."""
        ...

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Ending]:
        """Start now (a command has been spawned when this returns); the future tells how it
        ended. Never raises: failures are logged by the job and end as FAILED."""
        ...

    def kill(self) -> None:
        """The daemon is stopping and the grace time is over: end at once."""
        ...


class Runner:
    """Runs jobs within the limits and counts them (`status`)."""

    def __init__(self, max_running: int, queue: int) -> None:
        self.max_running = max_running
        self.queue = queue
        self.run = 0  # started
        self.failed = 0
        self.timed_out = 0
        self.dropped = 0
        self._running: dict[asyncio.Future[Ending], Job] = {}
        self._bans: deque[Job] = deque()  # waiting actions of bans and unbans ...
        self._hits: deque[Job] = deque()  # ... and of hits, which go after them
        self._burst = 0  # dropped since the queue was last empty
        self._closed = False

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._bans) + len(self._hits)

    def status(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "dropped": self.dropped,
            "running": self.running,
            "waiting": self.waiting,
        }

    def full(self, *, hit: bool) -> bool:
        """Whether a job (a hit's, with `hit`) would be dropped now: a flood of hits can skip
        building jobs that would only be dropped (`drop`)."""
        if self._closed:
            return True
        if len(self._running) < self.max_running or self.waiting < self.queue:
            return False
        return hit or not self._hits

    def drop(self, count: int) -> None:
        """Count `count` actions that were not even built, as `full` advised."""
        self._drop(count)

    def submit(self, job: Job) -> None:
        """Start `job` now if a slot is free, else queue it (or drop it when the queue is
        full). Called on the event loop."""
        if self._closed:
            self._drop(1)
        elif len(self._running) < self.max_running:
            self._start(job)
        elif self.waiting < self.queue:
            (self._hits if job.hit else self._bans).append(job)
        elif not job.hit and self._hits:
            self._hits.pop()  # the newest hit's action gives way
            self._bans.append(job)
            self._drop(1)
        else:
            self._drop(1)

    async def close(self, grace: float) -> tuple[int, int]:
        """Drop what waits, give what runs `grace` seconds to end, then kill it. Returns
        (dropped, killed)."""
        self._closed = True
        dropped = self.waiting
        self._bans.clear()
        self._hits.clear()
        self.dropped += dropped
        killed = 0
        if self._running:
            _, late = await asyncio.wait(list(self._running), timeout=grace)
            for future in late:
                self._running[future].kill()
                killed += 1
            if late:  # a killed command is reaped (and logged) in a moment
                await asyncio.wait(late, timeout=1.0)
        return dropped, killed

    def _start(self, job: Job) -> None:
        self.run += 1
        try:
            future = job.start(asyncio.get_running_loop())
        except Exception:  # a bug in a job must not stop the others
            log.LOGGER.exception("event=action-failed error=unexpected")
            self.failed += 1
            return
        self._running[future] = job
        future.add_done_callback(self._finished)

    def _finished(self, future: asyncio.Future[Ending]) -> None:
        self._running.pop(future, None)
        if future.cancelled():
            ending = Ending.FAILED
        elif (error := future.exception()) is not None:
            log.event("action-failed", logging.ERROR, error=f"unexpected: {error!r}")
            ending = Ending.FAILED
        else:
            ending = future.result()
        if ending is Ending.FAILED:
            self.failed += 1
        elif ending is Ending.TIMED_OUT:
            self.timed_out += 1
        self._next()

    def _next(self) -> None:
        while not self._closed and len(self._running) < self.max_running and self.waiting:
            self._start(self._bans.popleft() if self._bans else self._hits.popleft())
        if self._burst and not self.waiting:
            log.event("actions-dropped", logging.WARNING, count=self._burst)
            self._burst = 0

    def _drop(self, count: int) -> None:
        self.dropped += count
        if self._burst == 0 and not self._closed:
            log.event(
                "action-dropped",
                logging.WARNING,
                queue=self.queue,
                running=len(self._running),
                hint="more actions wait than [actions] queue allows: further ones are dropped "
                "and counted until the queue empties",
            )
        self._burst += count
