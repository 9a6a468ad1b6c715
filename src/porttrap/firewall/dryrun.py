"""The dry-run backend: changes nothing in the kernel, logs what it would do.

It keeps the state the kernel would hold (via `porttrap.testing.MemoryFirewall`), so
`porttrap status` and reconciliation behave as with a real backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from porttrap import log
from porttrap.clock import Clock
from porttrap.firewall.base import Inspection, KernelEntry
from porttrap.firewall.plan import strongest
from porttrap.model import Ban, Change, show
from porttrap.sensorspec import SensorState
from porttrap.testing.memory_firewall import MemoryFirewall


class DryRunBackend:
    name = "dry-run"

    def __init__(self, clock: Clock) -> None:
        self._memory = MemoryFirewall(clock)

    def setup(self, bans: Sequence[Ban], now: float, sensor: SensorState | None = None) -> None:
        active = strongest(bans, now)
        permanent = sum(ban.permanent for ban in active.values())
        log.event("dry-run-setup", bans=len(active), permanent=permanent)
        self._memory.setup(bans, now)

    def apply(self, changes: Sequence[Change], now: float) -> None:
        for change in changes:
            _log_change(change)
        self._memory.apply(changes, now)

    def expire(self, bans: Sequence[Ban], now: float) -> None:
        self._memory.expire(bans, now)

    def maintain(self, now: float) -> None:
        """Nothing to keep up."""

    def entries(self) -> list[KernelEntry]:
        return self._memory.entries()

    def present(self) -> bool:
        return self._memory.present()

    def inspect(self, entries: bool = False, count: bool = False) -> Inspection:
        return self._memory.inspect(entries, count)

    def teardown(self) -> None:
        log.event("dry-run-teardown")
        self._memory.teardown()


def _log_change(change: Change) -> None:
    if isinstance(change, Ban):
        log.event(
            "dry-run-ban",
            address=show(change.target),
            until=log.iso(change.expires_at) or "forever",
            ban_count=change.ban_count,
            reason=change.reason,
        )
    else:
        log.event("dry-run-unban", address=show(change.target), reason=change.reason)
