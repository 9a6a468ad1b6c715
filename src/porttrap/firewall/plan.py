"""What the kernel should hold after a setup or an apply; shared by every backend. Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from porttrap.model import Ban, Change, IPNetwork


def timeout_seconds(ban: Ban, now: float) -> int | None:
    """The kernel timeout for `ban` applied at `now`: whole seconds rounded up, at least 1
    (a 0 timeout would mean none); None for a permanent ban."""
    remaining = ban.remaining(now)
    return None if remaining is None else max(1, math.ceil(remaining))


def strongest(bans: Iterable[Ban], now: float) -> dict[IPNetwork, Ban]:
    """The active bans, one per target: a permanent one wins, else the one ending last."""
    chosen: dict[IPNetwork, Ban] = {}
    for ban in bans:
        if ban.active(now) and _outlasts(ban, chosen.get(ban.target)):
            chosen[ban.target] = ban
    return chosen


def _outlasts(ban: Ban, other: Ban | None) -> bool:
    if other is None or ban.expires_at is None:
        return True
    return other.expires_at is not None and ban.expires_at > other.expires_at


def final_states(changes: Sequence[Change], now: float) -> dict[IPNetwork, Ban | None]:
    """Per target, the ban the kernel should hold after `changes` in order: the last change
    wins; an unban, or a ban already over at `now`, leaves nothing (None)."""
    states: dict[IPNetwork, Ban | None] = {}
    for change in changes:
        held = change if isinstance(change, Ban) and change.active(now) else None
        states[change.target] = held
    return states
