"""Time as a parameter: the one place that reads the wall clock.

Everything that needs the time takes a `Clock`; tests use `porttrap.testing.FakeClock`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch, UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for measuring intervals."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()  # noqa: TID251 - this is the clock

    def monotonic(self) -> float:
        return time.monotonic()  # noqa: TID251 - this is the clock
