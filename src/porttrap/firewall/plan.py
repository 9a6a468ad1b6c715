"""What the kernel should hold after a setup or an apply; shared by every backend. Pure."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

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


# Seconds after its kernel timeout that an element is still taken as possibly there: the
# kernel removes an expired element on its next garbage collection.
LINGER = 3600.0


class Written:
    """The targets a backend may have put in its ban sets since it last replaced them, each
    until when (on `monotonic`'s clock; inf: permanent). A target not held here is in no ban
    set: the table is porttrap's own and the last replace left only the targets it was given.
    Before a first replace nothing is known, and every target may be there.

    The kernel's timeouts run on a clock that never jumps, so the ends are kept on one too: a
    wall clock set forward by hours (NTP on a host that booted without a clock) must not make
    the elements still in the kernel look long gone, or a later, longer ban on one of them
    would be a bare add, which older kernels take as keeping the element's shorter timeout."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._until: dict[IPNetwork, float] | None = None

    def replaced(self, bans: Mapping[IPNetwork, Ban], now: float) -> None:
        """The ban sets now hold exactly `bans`."""
        self._until = {}
        self.writing(bans.items(), now)

    def forget(self) -> None:
        """The ban sets may hold anything (the table was removed: a later one is not ours)."""
        self._until = None

    def writing(self, states: Iterable[tuple[IPNetwork, Ban | None]], now: float) -> set[IPNetwork]:
        """The bans of `states` are being written (before the transaction: one that fails
        may still have written some). Returns those of their targets known to be in no ban
        set until now (none before a first replace)."""
        absent: set[IPNetwork] = set()
        until = self._until
        if until is None:
            return absent
        offset = self._monotonic() - now  # from `now`'s clock to the kernel's
        for target, ban in states:
            if ban is not None:
                if target not in until:
                    absent.add(target)
                # The kernel's timeout ends within a second of it (`timeout_seconds`): LINGER
                until[target] = math.inf if ban.expires_at is None else ban.expires_at + offset
        return absent

    def lifted(self, states: Iterable[tuple[IPNetwork, Ban | None]]) -> None:
        """The unbans of `states` were written: those targets are in no ban set."""
        if self._until is not None:
            for target, ban in states:
                if ban is None:
                    self._until.pop(target, None)

    def prune(self) -> None:
        """Forget the targets whose element the kernel has removed long since."""
        if self._until is not None:
            now = self._monotonic()
            gone = [t for t, until in self._until.items() if until + LINGER < now]
            for target in gone:
                del self._until[target]

    def __len__(self) -> int:
        return 0 if self._until is None else len(self._until)
