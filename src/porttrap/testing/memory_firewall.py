"""An in-memory FirewallBackend that holds what the kernel would hold.

It follows the nftables backend's semantics, timeouts included: a ban applied at `now` gets
the same whole-second timeout, counted on the injected clock from the moment of the call, and
vanishes from `entries()` when it runs out. With `timeouts=False` it is a backend without kernel
timeouts (a cloud firewall, an XDP map): a ban stays until `expire` removes it. `fail_next()`
makes the next call raise, to test how callers handle a refusing kernel. It records the kernel
sensor state of the last setup and the sensor calls since (`sensor`, `served`, `rotations`,
`gateways`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from porttrap.clock import Clock
from porttrap.errors import FirewallError
from porttrap.firewall.base import Inspection, KernelEntry
from porttrap.firewall.plan import final_states, strongest, timeout_seconds
from porttrap.model import Ban, Change, IPAddress, IPNetwork
from porttrap.sensorspec import Ports, SensorState


class MemoryFirewall:
    name = "memory"

    def __init__(self, clock: Clock, *, timeouts: bool = True) -> None:
        self._clock = clock
        self.timeouts = timeouts
        self._deadlines: dict[IPNetwork, float | None] = {}  # on clock.now(); None: permanent
        self._failure: FirewallError | None = None
        self._present = False
        self._damaged: str | None = None
        self.sensor: SensorState | None = None
        self.served: Ports | None = None
        self.rotations: list[str] = []
        self.released: set[IPAddress] = set()  # sources the hold let through
        self.heartbeats = 0
        self.gateways: frozenset[IPAddress] | None = None  # None: no watch in the table
        self.maintained = 0

    def fail_next(self, error: FirewallError | None = None) -> None:
        """Make the next setup/apply/teardown raise `error` and change nothing."""
        self._failure = error or FirewallError("nftables refused the change (simulated)")

    def vanish(self) -> None:
        """Lose everything, as when someone runs `nft flush ruleset`."""
        self._deadlines = {}
        self._present = False

    def present(self) -> bool:
        return self._present

    def damage(self, what: str = "the prerouting chain was deleted (simulated)") -> None:
        """Break the ruleset but leave the table: `inspect` says `what` until the next setup."""
        self._damaged = what

    def forget(self, target: IPNetwork) -> None:
        """Lose one ban, as `nft flush set` or `nft delete element` would."""
        self._deadlines.pop(target, None)

    def inspect(self, entries: bool = False, count: bool = False) -> Inspection:
        if not self._present:
            return Inspection(missing=True)
        if self._damaged is not None:
            return Inspection(damaged=self._damaged)
        held = self.entries()
        return Inspection(entries=held if entries else None, count=len(held) if count else None)

    def setup(self, bans: Sequence[Ban], now: float, sensor: SensorState | None = None) -> None:
        self._check()
        self._present, self._damaged = True, None
        self._deadlines = {
            target: self._deadline(ban, now) for target, ban in strongest(bans, now).items()
        }
        self.sensor = sensor
        self.served = None if sensor is None else sensor.served
        self.gateways = None if sensor is None else frozenset(sensor.gateways)

    def apply(self, changes: Sequence[Change], now: float) -> None:
        self._check()
        if not self._present:
            raise FirewallError("porttrap's table is not in the kernel (simulated)")
        for target, ban in final_states(changes, now).items():
            if ban is None:
                self._deadlines.pop(target, None)
            else:
                self._deadlines[target] = self._deadline(ban, now)

    def expire(self, bans: Sequence[Ban], now: float) -> None:
        self._check()
        for ban in bans:
            self._deadlines.pop(ban.target, None)

    def maintain(self, now: float) -> None:
        self.maintained += 1

    def serve(self, ports: Ports) -> None:
        self._check()
        self._sensor_set()
        self.served = ports

    def rotate(self, empty: str) -> None:
        self._check()
        self._sensor_set()
        self.rotations.append(empty)

    def sensor_counters(self) -> dict[str, int]:
        self._check()
        return {}

    def set_gateways(self, addresses: Iterable[IPAddress]) -> None:
        self._check()
        if not self._present or self.gateways is None:
            raise FirewallError("no watch in the table (simulated)")
        self.gateways = frozenset(addresses)

    def release(self, addresses: Iterable[IPAddress]) -> None:
        self._hold_set()
        self.released |= set(addresses)

    def hold_ready(self) -> None:
        self._hold_set()
        self.heartbeats += 1

    def _hold_set(self) -> None:
        self._sensor_set()
        assert self.sensor is not None
        if not self.sensor.spec.hold:
            raise FirewallError("no hold rules in the table (simulated)")

    def _sensor_set(self) -> None:
        if not self._present or self.sensor is None or not self.sensor.spec.protos:
            raise FirewallError("no kernel sensor in the table (simulated)")

    def entries(self) -> list[KernelEntry]:
        now = self._clock.now()
        held = [
            KernelEntry(target, None if deadline is None else deadline - now)
            for target, deadline in self._deadlines.items()
            if deadline is None or not self.timeouts or deadline > now
        ]
        return sorted(held, key=lambda entry: (entry.target.version, entry.target))

    def teardown(self) -> None:
        self._check()
        self.vanish()

    def _deadline(self, ban: Ban, now: float) -> float | None:
        timeout = timeout_seconds(ban, now)
        return None if timeout is None else self._clock.now() + timeout

    def _check(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
