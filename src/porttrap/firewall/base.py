"""The firewall seam: one small interface every backend implements, and one more that the
backends holding the watch (nftables, ipset) and the kernel sensor of stealth and advanced modes
(nftables) implement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from porttrap.model import Ban, Change, IPAddress, IPNetwork
from porttrap.sensorspec import Ports, SensorState


@dataclass(frozen=True, slots=True)
class KernelEntry:
    """A ban as the kernel holds it. `remaining` None: no timeout (permanent)."""

    target: IPNetwork
    remaining: float | None

    @property
    def permanent(self) -> bool:
        return self.remaining is None


@dataclass(frozen=True, slots=True)
class Inspection:
    """What a check of porttrap's ruleset found: `missing`, the table (or chains) gone; else
    `damaged`, what differs from what porttrap wrote (None: its chains, rules and sets are
    whole); `entries`, the bans the kernel holds (None: not listed this time); `count`, how
    many (None: not counted this time)."""

    missing: bool = False
    damaged: str | None = None
    entries: list[KernelEntry] | None = None
    count: int | None = None


class FirewallBackend(Protocol):
    """Applies bans in the kernel. Implementations touch only porttrap's own table/sets.

    All methods are synchronous and quick (one kernel transaction each); the daemon's shell
    calls them from its event loop when the core says so. Errors are `FirewallError` with what
    was attempted. A check (`present`, `entries`) never changes anything.
    """

    name: str

    def setup(self, bans: Sequence[Ban], now: float, sensor: SensorState | None = None) -> None:
        """Atomically (re)create porttrap's ruleset holding exactly `bans` (the active ones,
        with their remaining time) and, when given, what `sensor` says besides: the watch
        (recent clients and peers, the marks of connect-mode UDP traps, the gateways) and the
        kernel sensor of the protocols in stealth or advanced mode. Anything else in porttrap's
        sets is removed; nothing outside porttrap's own table is touched. A backend that cannot
        hold the kernel sensor refuses a `sensor` that watches a protocol; what it cannot hold
        of the watch it leaves out (see each backend)."""
        ...

    def apply(self, changes: Sequence[Change], now: float) -> None:
        """Apply bans and unbans in one transaction. A ban of a target already in the kernel
        replaces its timeout; an unban of a target not in the kernel is not an error."""
        ...

    def expire(self, bans: Sequence[Ban], now: float) -> None:
        """These bans ran out at or before `now`. A backend whose kernel ends timed bans by
        itself has nothing to do; one without kernel timeouts removes them."""
        ...

    def maintain(self, now: float) -> None:
        """Periodic upkeep (every few seconds): ipset re-arms the bans longer than its
        timeouts can hold. Nothing for most backends."""
        ...

    def entries(self) -> list[KernelEntry]:
        """Every ban the kernel holds now (empty when porttrap's table does not exist)."""
        ...

    def present(self) -> bool:
        """Whether porttrap's ruleset is in the kernel. Cheap: the daemon asks every few
        seconds, because a firewall reload elsewhere (`nft flush ruleset`) can remove it."""
        ...

    def inspect(self, entries: bool = False, count: bool = False) -> Inspection:
        """Whether porttrap's ruleset is whole: present, and its chains, rules and sets as
        porttrap last wrote them; with `entries`, the bans the kernel holds besides, with
        `count` how many (each a cost that grows with the bans, counting the far smaller).
        Reads only: repairing is the daemon's `setup`."""
        ...

    def teardown(self) -> None:
        """Remove porttrap's table and everything in it. Not an error when it is absent."""
        ...


class SensorBackend(Protocol):
    """The one writer of the watch's and the kernel sensor's rules (stealth and advanced
    modes), which live in the backend's own table (nftables) or sets and chains (ipset, which
    holds the watch only): the core decides, the backend writes and reads. `serve`, `rotate`
    and `sensor_counters` need a sensor, `set_gateways` the watch (any `SensorState` given to
    `setup`); without, they raise FirewallError."""

    def serve(self, ports: Ports) -> None:
        """Never trap these ports (the served ones, and those that lately were)."""
        ...

    def rotate(self, empty: str) -> None:
        """Empty block generation `empty` and make it current, in one transaction."""
        ...

    def sensor_counters(self) -> dict[str, int]:
        """Packets per named counter of the sensor (`sensorspec.COUNTERS`)."""
        ...

    def set_gateways(self, addresses: Iterable[IPAddress]) -> None:
        """The host's gateways are now exactly `addresses` (peers: a probe in their name never
        blocks them), in one transaction. IPv6 scopes are dropped."""
        ...

    def release(self, addresses: Iterable[IPAddress]) -> None:
        """The hold let these sources' SYNs through: not held again for `[kernel] hold_memory`
        (docs/hold.md), in one transaction."""
        ...

    def hold_ready(self) -> None:
        """The hold's heartbeat: held SYNs go to the daemon's queue only while it is fresh."""
        ...
