"""The hold of a new source's first SYN to a served port (issue 17, docs/hold.md).

The kernel queues such a SYN (NFQUEUE) and the shell feeds `SynHeld`; the SYN waits for a
verdict, given when the hold ends (`HoldEnded`, scheduled here) or at once when the source
touches a trap meanwhile: then the SYN is dropped, and the service was never revealed, which
is recorded as a hidden probe. A source whose SYN was let through is released: the kernel
side adds it to its `released` set, so its next connections are not held, and the SYN goes
through the kernel's rules once more, where a block the kernel put on its source meanwhile
(at its first trap packet) drops it: the kernel's own check backs the daemon's, whose report
of the trap touch may come late or not at all (over `[kernel] event_rate`).

Pure: events in, commands out, time as a parameter. Sizes are bounded by the kernel's queue
(held SYNs) and by `memory` (released sources, pruned oldest first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from porttrap.core.commands import Command, RecordHidden, Release, Schedule, Verdict
from porttrap.core.events import HoldEnded, SynHeld
from porttrap.model import IPAddress, Outcome

DEFAULT_HOLD = 0.005  # seconds, when none is given (`[kernel] hold` sets it)
DEFAULT_MEMORY = 3600.0  # seconds a released source is remembered (`[kernel] hold_memory`)
DEFAULT_LIMIT = 65536  # released sources remembered at most (`[kernel] client_size`, the size
# of the kernel's released sets): a flood of forged sources cannot grow the daemon past it
# After a trap hit, a SYN of its source that the daemon reads only now is dropped at once, for
# this many seconds: it was queued before the trap packet (the kernel blocks the source at that
# packet, and drops what comes later), but its message was read after the report's (both
# sockets ready in one turn of the loop), or after the ban, which reaches the kernel a batch
# later than the daemon decides it.
BLOCK_LINGER = 1.0
# A trap hit with these outcomes says nothing against the source (or was forged in the name
# of a protected one): its held SYNs wait out their hold.
_HARMLESS = frozenset(
    {
        Outcome.ALLOWED,
        Outcome.OWN_ADDRESS,
        Outcome.NOT_UNICAST,
        Outcome.CLIENT,
        Outcome.PEER,
        Outcome.SESSION,
    }
)


@dataclass(frozen=True, slots=True)
class HoldFigures:
    """What the hold did since the start, for `status` and the metrics."""

    queued: int = 0  # SYNs the kernel's rule sent to the queue (its counter `held`, summed
    # over the rebuilds of the table)
    seen: int = 0  # SYNs the daemon read from the queue
    held: int = 0  # SYNs held now
    released: int = 0  # SYNs let through when their hold ended
    hidden: int = 0  # SYNs dropped: their source touched a trap
    remembered: int = 0  # released sources remembered now
    blocked: int = 0  # sources that touched a trap lately, whose SYNs are dropped at once

    @property
    def failed_open(self) -> int:
        """SYNs queued that never reached the daemon: the queue or its socket was full, and
        the kernel let them through (the fail-open flag). Read every 0.25 s, so it may lag."""
        return max(0, self.queued - self.seen)


class Holds:
    """The held SYNs by packet id, and the sources released lately."""

    def __init__(
        self, hold: float = DEFAULT_HOLD, memory: float = DEFAULT_MEMORY, limit: int = DEFAULT_LIMIT
    ) -> None:
        self.hold = hold
        self.memory = memory
        self.limit = limit
        self._held: dict[int, SynHeld] = {}
        self._by_source: dict[IPAddress, set[int]] = {}  # a trap hit finds its SYNs at once
        self._released: dict[IPAddress, float] = {}  # source -> until; oldest first
        self._blocked: dict[IPAddress, tuple[float, str]] = {}  # source -> (until, kind)
        self._let_through = 0
        self._hidden = 0
        self._queued = 0  # the kernel counter's readings, summed over rebuilds
        self._seen = 0
        self._counter = 0  # its last reading

    def configure(self, hold: float, memory: float, limit: int = DEFAULT_LIMIT) -> None:
        """New settings (a reload): SYNs held now keep the end scheduled for them, and
        sources released now the time they were given."""
        self.hold = hold
        self.memory = memory
        self.limit = limit

    def held(self, event: SynHeld, now: float) -> list[Command]:
        """A SYN waits: answered at once if its source is known, else when the hold ends."""
        self._forget(now)
        self._seen += 1
        blocked = self._blocked.get(event.source)
        if blocked is not None:
            return self._hide(event, blocked[1])
        if event.source in self._released:  # released again: the kernel's set lacks it still
            return [Release(event.source, event.packet_id)]  # (a rebuild emptied it)
        self._take(event.packet_id)  # an id the kernel reused: the old SYN is gone
        self._held[event.packet_id] = event
        self._by_source.setdefault(event.source, set()).add(event.packet_id)
        delay = max(0.0, self.hold - (now - event.at))
        return [Schedule(delay, HoldEnded(event.packet_id, event.at))]

    def ended(self, event: HoldEnded, now: float) -> list[Command]:
        """The hold is over and the source touched no trap that the daemon heard of: release
        the source, so that the kernel holds it no more, and let the SYN through the kernel's
        rules once more (`Release`: a block of the source the kernel made meanwhile drops
        it)."""
        held = self._held.get(event.packet_id)
        if held is None or held.at != event.at:
            return []  # answered already (a trap hit); or an id the kernel reused since
        self._take(event.packet_id)
        self._let_through += 1
        commands: list[Command] = [Release(held.source, held.packet_id)]
        self._released.pop(held.source, None)  # to the end: the order stays oldest first
        self._released[held.source] = now + self.memory
        if len(self._released) > self.limit:  # the oldest gives way (the kernel's set is full)
            del self._released[next(iter(self._released))]
        return commands

    def touched(self, source: IPAddress, kind: str, outcome: Outcome, now: float) -> list[Command]:
        """`source` touched a trap (a hit of class `kind` that the policy judged `outcome`):
        its held SYNs are dropped now and recorded as hidden probes."""
        if outcome in _HARMLESS:
            return []
        self._forget(now)
        self._blocked.pop(source, None)  # to the end: the order stays oldest first
        self._blocked[source] = (now + BLOCK_LINGER, kind)
        self._released.pop(source, None)
        found = [self._held[packet_id] for packet_id in sorted(self._by_source.get(source, ()))]
        return [command for held in found for command in self._hide(held, kind)]

    def stopping(self) -> list[Command]:
        """The daemon stops: unbinding the queue would drop every held SYN, so they pass."""
        ids, self._held, self._by_source = list(self._held), {}, {}
        return [Verdict(packet_id, accept=True) for packet_id in ids]

    def counted(self, queued: int) -> None:
        """The kernel's counter of SYNs queued, read; it starts from zero when the table is
        built again (a reload, the rebuild after a flush), so a drop is a new count."""
        self._queued += queued - self._counter if queued >= self._counter else queued
        self._counter = queued

    def figures(self) -> HoldFigures:
        return HoldFigures(
            self._queued,
            self._seen,
            len(self._held),
            self._let_through,
            self._hidden,
            len(self._released),
            len(self._blocked),
        )

    def _take(self, packet_id: int) -> None:
        """Forget the SYN held as `packet_id`, if any."""
        held = self._held.pop(packet_id, None)
        if held is None:
            return
        ids = self._by_source[held.source]
        ids.discard(packet_id)
        if not ids:
            del self._by_source[held.source]

    def _hide(self, held: SynHeld, kind: str) -> list[Command]:
        self._take(held.packet_id)
        self._hidden += 1
        return [
            Verdict(held.packet_id, accept=False),
            RecordHidden(held.source, held.port, kind, held.at),
        ]

    def _forget(self, now: float) -> None:
        """Released sources whose memory ran out, and blocks past their linger."""
        _prune(self._released, now, lambda until: until)
        _prune(self._blocked, now, lambda entry: entry[0])


K = TypeVar("K")
V = TypeVar("V")


def _prune(entries: dict[K, V], now: float, until: Callable[[V], float]) -> None:
    """Drop the entries at the front (the oldest) whose time has come."""
    expired: list[K] = []
    for key, value in entries.items():
        if until(value) > now:
            break
        expired.append(key)
    for key in expired:
        del entries[key]
