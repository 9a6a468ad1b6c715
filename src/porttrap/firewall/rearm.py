"""Bans longer than ipset can time. Pure: the ipset backend asks it what to write and when.

ipset keeps an element's timeout in milliseconds in 32 bits, so no element can be given more
than 2,147,483 s (24.8 days); porttrap's bans can be longer (`max_time` defaults to 30 days, and
escalation reaches it). Such a ban goes into the kernel with the longest timeout there is and is
*re-armed*: `REARM_EVERY` (a day) after it was last armed, its timeout is set again, to the
longest there is or, once the time left fits, to exactly that, after which the kernel ends the ban
on time by itself. The backend re-arms whenever the daemon checks the firewall (every 5 s) or
applies changes, so while porttrap runs a long ban lasts its full time, to the second.

Why re-arm a day after arming rather than just before the kernel timeout runs out: the kernel
then always holds at least 23.8 days of every long ban, so stopping porttrap for anything shorter
loses nothing, and the start after a longer stop puts every ban back with its remaining time (as
it does for every backend). The cost is one `ipset restore` line per long ban per day, spread over
the day as the bans were. The alternative, permanent elements that porttrap turns into timed ones
later, would leave bans in the kernel for good if porttrap stopped for good.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

from porttrap.firewall.ipset_rules import MAX_TIMEOUT, Element
from porttrap.model import IPNetwork

REARM_EVERY = 86_400.0


@dataclass(frozen=True, slots=True)
class _Held:
    expires_at: float
    due: float


class LongBans:
    """The bans held at the longest timeout, each with when its timeout is due to be set again."""

    def __init__(self) -> None:
        self._held: dict[IPNetwork, _Held] = {}
        # (due, tie-break, target); an entry whose due no longer matches `_held` is stale
        self._queue: list[tuple[float, int, IPNetwork]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._held)

    def arm(self, target: IPNetwork, expires_at: float | None, now: float) -> Element | None:
        """The element to add for a ban on `target` ending at `expires_at` (None: permanent),
        added at `now`; None when it is already over. Remembers the ban when its time left is
        more than the kernel can hold, forgets it otherwise."""
        if expires_at is None:
            self.forget(target)
            return Element(target, 0)
        if expires_at <= now:
            self.forget(target)
            return None
        seconds = max(1, math.ceil(expires_at - now))
        if seconds <= MAX_TIMEOUT:
            self.forget(target)
            return Element(target, seconds)
        self.retry_at(target, expires_at, now + REARM_EVERY)
        return Element(target, MAX_TIMEOUT)

    def retry_at(self, target: IPNetwork, expires_at: float, when: float) -> None:
        """Hold `target` (ending at `expires_at`) and have it due at `when`."""
        self._held[target] = _Held(expires_at, when)
        heapq.heappush(self._queue, (when, next(self._order), target))
        if len(self._queue) > 2 * len(self._held) + 64:
            self._compact()

    def due(self, now: float) -> list[tuple[IPNetwork, float]]:
        """The held bans due for re-arming at `now`, with when each ends; they stay held
        until `arm` is called for them (or `retry_at`, when writing them failed)."""
        found = []
        while self._queue and self._queue[0][0] <= now:
            when, _, target = heapq.heappop(self._queue)
            held = self._held.get(target)
            if held is not None and held.due == when:
                found.append((target, held.expires_at))
        return found

    def remaining(self, target: IPNetwork, now: float) -> float | None:
        """Time left on `target`'s ban when it is held here (the kernel shows less), else None."""
        held = self._held.get(target)
        return None if held is None else max(0.0, held.expires_at - now)

    def forget(self, target: IPNetwork) -> None:
        self._held.pop(target, None)

    def clear(self) -> None:
        self._held.clear()
        self._queue.clear()

    def _compact(self) -> None:
        self._queue = [entry for entry in self._queue if self._live(entry)]
        heapq.heapify(self._queue)

    def _live(self, entry: tuple[float, int, IPNetwork]) -> bool:
        held = self._held.get(entry[2])
        return held is not None and held.due == entry[0]
