"""What the watchers (listeners, routes, sessions) share: how a failed read is logged.

A watcher keeps its last reading when a read fails and tries again; a lasting fault (a
seccomp filter, a kernel that refuses) must not flood the log, so it warns at most once per
WARN_EVERY seconds and logs the other failures at DEBUG, and says once when reads work again.
"""

from __future__ import annotations

import logging

from porttrap.clock import Clock
from porttrap.log import LOGGER, event, fields

WARN_EVERY = 60.0  # seconds between WARNING-level failure events; DEBUG in between


class FailureLog:
    """The failures in a row of one watcher, logged as `<name>-failed` and `<name>-recovered`."""

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self.count = 0  # reads that failed, in a row
        self._clock = clock
        self._last_warning: float | None = None

    def failed(self, exc: Exception) -> None:
        """One more failure; an error that is not an OSError is a bug: with its traceback."""
        self.count += 1
        now = self._clock.monotonic()
        level = logging.DEBUG
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY:
            level, self._last_warning = logging.WARNING, now
        text = fields(f"{self.name}-failed", error=str(exc), failures=self.count, kept="last set")
        LOGGER.log(level, text, exc_info=None if isinstance(exc, OSError) else exc)

    def succeeded(self) -> None:
        """A read worked: the end of a run of failures, if any, is logged."""
        if self.count:
            event(f"{self.name}-recovered", failures=self.count)
            self.count = 0
