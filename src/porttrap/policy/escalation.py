"""How long the n-th ban lasts, and the count of past bans behind n.

Bans rest on verified evidence (a completed handshake, an admin) or on unverified evidence
(probes, datagrams: anyone can send them in another's name). Each kind has a count of its own:
only verified bans escalate to the end (`permanent_after`); unverified ones escalate up to
`unverified_max_time` and are never permanent, so no number of forged packets can make a ban
permanent, nor make an innocent address's one real mistake count as its third offence.
"""

from __future__ import annotations

import bisect

from porttrap.config.schema import BanPolicy, Escalation
from porttrap.model import IPNetwork

# Addresses whose unverified bans are remembered; past it, the one banned least recently is
# forgotten (its next unverified ban starts from the first-ban time again: at most
# unverified_max_time anyway). A forger's flood gets `unverified_rate` bans a second, all day:
# without a bound their history would grow for `forget_after` (90 days).
MAX_UNVERIFIED = 65_536


def escalated(policy: BanPolicy, base: float, count: int) -> float:
    """Seconds the `count`-th ban lasts by the escalation alone, from first-ban time `base`."""
    if policy.escalation is Escalation.QUADRATIC:
        seconds = base * count * count
    elif policy.escalation is Escalation.EXPONENTIAL:
        seconds = base * 2 ** min(count - 1, 64)
    else:
        seconds = base
    return min(seconds, policy.max_time)


def ban_duration(policy: BanPolicy, base: float, count: int, verified: bool = True) -> float | None:
    """Seconds the `count`-th ban of its kind lasts (None: permanent)."""
    if not verified:
        return min(escalated(policy, base, count), policy.unverified_max_time)
    if policy.permanent_after and count >= policy.permanent_after:
        return None
    return escalated(policy, base, count)


class Past:
    """When each target was banned, by kind of evidence, for the bans not lifted: what
    escalation counts. Times older than `forget_after` are dropped as they are met; the
    unverified history keeps the `max_unverified` targets banned most recently."""

    def __init__(self, max_unverified: int = MAX_UNVERIFIED) -> None:
        self._verified: dict[IPNetwork, list[float]] = {}
        self._unverified: dict[IPNetwork, list[float]] = {}  # least recently banned first
        self._max_unverified = max_unverified
        self.evicted = 0  # targets whose unverified history was forgotten to make room

    def _of(self, verified: bool) -> dict[IPNetwork, list[float]]:
        return self._verified if verified else self._unverified

    def add(self, target: IPNetwork, at: float, verified: bool) -> None:
        if verified:
            times = self._verified.setdefault(target, [])
        else:
            unverified = self._unverified
            times = unverified.pop(target, [])
            if len(unverified) >= self._max_unverified:
                del unverified[next(iter(unverified))]
                self.evicted += 1
            unverified[target] = times
        if not times or times[-1] <= at:
            times.append(at)  # the usual case, and restore's: oldest first
        else:
            bisect.insort(times, at)  # another host's ban, decided a while ago

    def count_once(self, target: IPNetwork, at: float, verified: bool, horizon: float) -> int:
        """`count` once the ban of `target` made at `at` is counted, counting it only if it
        is not already (the fleet may deliver one twice)."""
        times = self._of(verified).get(target)
        if times is None:  # the usual case in a catch-up: a target never banned here
            self.add(target, at, verified)
            return 1 if at > horizon else 0
        if at not in times:
            self.add(target, at, verified)
        return self.count(target, verified, horizon)

    def remove(self, target: IPNetwork, at: float, verified: bool) -> None:
        times = self._of(verified).get(target, [])
        if at in times:
            times.remove(at)

    def count(self, target: IPNetwork, verified: bool, horizon: float) -> int:
        """Bans of `target` of this kind made after `horizon`."""
        times = self._of(verified).get(target)
        if times is None:
            return 0
        if times and times[0] <= horizon:
            times[:] = [at for at in times if at > horizon]
        return len(times)
