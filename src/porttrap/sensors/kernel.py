"""The kernel sensor at work: trap packets the kernel reports become hits, and the kernel's
view of the host is kept current.

The rules themselves are in `porttrap.firewall.sensor_rules`. This side
- receives the reports (NFLOG, `sensors.nflog`), classifies each packet (`sensors.classify`)
  and hands the daemon a `Hit` whose `client` says whether the kernel knew the source as a
  recent client;
- follows the ports the host serves (`sensors.listeners`, every 0.5 s) and keeps them out of
  the traps. A port that stops being served becomes a trap again only after `linger`
  seconds, so that the clients of a restarting service are not taken for scanners;
- reads the kernel's counters every `poll` seconds, estimates how full the current block
  generation is, and rotates generations before it fills (see sensor_rules' module doc).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from porttrap.clock import Clock
from porttrap.config.schema import KernelSensor
from porttrap.errors import FirewallError
from porttrap.firewall.sensor import NftSensor
from porttrap.firewall.sensor_rules import GENERATIONS, PREFIX
from porttrap.log import LOGGER, event, fields
from porttrap.model import Hit, Proto, unmap
from porttrap.sensors import listeners
from porttrap.sensors.classify import OTHER, classify
from porttrap.sensors.listeners import ListenerWatcher, Ports
from porttrap.sensors.nflog import LoggedPacket, NflogReceiver

POLL = 0.25  # seconds between reads of the kernel's counters
LINGER = 10.0  # seconds a port that stopped being served stays out of the traps
ROTATE_AT = 0.5  # rotate when the current generation is estimated this full
WARN_EVERY = 60.0  # seconds between warnings that the block sets are under pressure

HitHandler = Callable[[Hit], None]


def hit_of(packet: LoggedPacket, at: float) -> Hit | None:
    """The hit a reported packet makes; None when it is not a TCP/UDP packet we can read."""
    probe = classify(packet.payload, packet.family)
    if probe is None:
        return None
    kind = probe.kind
    if kind == OTHER and probe.flags:
        kind = f"{OTHER} {probe.flags}"
    return Hit(
        at=packet.timestamp if packet.timestamp is not None else at,
        source=unmap(probe.source),
        source_port=probe.source_port,
        local=unmap(probe.destination),
        port=probe.destination_port,
        proto=probe.proto,
        kind=kind,
        client=packet.prefix == f"{PREFIX}client",
    )


@dataclass
class BlockFill:
    """How many sources each block generation holds, estimated from the kernel's counts of
    insertions: those made since the generation was last emptied, and within the last
    `block_time` seconds (older ones have expired). An upper bound: a re-insertion counts."""

    block_time: float
    _base: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GENERATIONS, 0))
    _samples: dict[str, deque[tuple[float, int]]] = field(
        default_factory=lambda: {g: deque() for g in GENERATIONS}
    )

    def record(self, now: float, counts: dict[str, int], rebuilt: bool = False) -> None:
        """The counters read at `now`; `rebuilt`: the table was built again since the last
        reading (its sets and counters started from zero)."""
        for generation in GENERATIONS:
            value = counts.get(f"block_{generation}", 0)
            samples = self._samples[generation]
            if rebuilt or (samples and value < samples[-1][1]):
                samples.clear()  # every insertion counted since the rebuild is in the sets
                samples.append((now, 0))
                self._base[generation] = 0
            samples.append((now, value))
            horizon = now - self.block_time
            while len(samples) > 1 and samples[1][0] <= horizon:
                samples.popleft()

    def emptied(self, generation: str) -> None:
        samples = self._samples[generation]
        self._base[generation] = samples[-1][1] if samples else 0

    def fill(self, generation: str) -> int:
        samples = self._samples[generation]
        if not samples:
            return 0
        oldest = max(samples[0][1], self._base[generation])
        return max(0, samples[-1][1] - oldest)


@dataclass
class KernelCounts:
    """What the daemon side of the sensor saw, for `status`."""

    unreadable: int = 0  # reported packets that were not TCP/UDP we could read
    foreign: int = 0  # packets logged to our group by a rule that is not porttrap's


class KernelTraps:
    """Reports in, hits out, the kernel kept current. Runs in the daemon's event loop."""

    def __init__(
        self,
        sensor: NftSensor,
        settings: KernelSensor,
        on_hit: HitHandler,
        clock: Clock,
        *,
        linger: float = LINGER,
        poll: float = POLL,
    ) -> None:
        self.sensor = sensor
        self.settings = settings
        self.counts = KernelCounts()
        self.fill = BlockFill(settings.block_time)
        self.kernel_counters: dict[str, int] = {}
        self._on_hit = on_hit
        self._clock = clock
        self._linger = linger
        self._poll = poll
        self._closed_at: dict[tuple[Proto, int], float] = {}
        self._receiver = NflogReceiver(settings.nflog_group, self._on_packet, settings.queue)
        self._watcher = ListenerWatcher(self._on_served, clock=clock)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_warning: float | None = None
        self._builds = 0  # the sensor's table builds seen by the fill estimate

    def prepare(self) -> None:
        """Read the served ports before porttrap's table is built, so that no service port is
        ever a trap, not even for a moment. OSError when the socket table cannot be read."""
        self.sensor.served = dict(listeners.current())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the NFLOG group, follow the served ports, poll the counters. OSError when the
        group is taken by another program or netlink is unavailable."""
        self._loop = loop
        self._receiver.start(loop)
        self._on_served(self._watcher.start(loop))
        self._schedule()

    def reconfigure(self, settings: KernelSensor) -> None:
        """Reloaded [kernel] settings (the NFLOG group and queue stay: a restart changes them).
        The caller rebuilds the table, which empties the block sets the estimate follows."""
        self.settings = settings
        self.fill = BlockFill(settings.block_time)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._receiver.close()
        self._watcher.close()

    # -- reports -------------------------------------------------------------------------

    def _on_packet(self, packet: LoggedPacket) -> None:
        if not packet.prefix.startswith(PREFIX):
            self.counts.foreign += 1
            return
        hit = hit_of(packet, self._clock.now())
        if hit is None:
            self.counts.unreadable += 1
            return
        self._on_hit(hit)

    # -- served ports --------------------------------------------------------------------

    def _on_served(self, ports: Ports) -> None:
        now = self._clock.monotonic()
        before = self.sensor.served
        for proto in Proto:
            for port in before.get(proto, frozenset()) - ports[proto]:
                self._closed_at.setdefault((proto, port), now)
            for port in ports[proto]:
                self._closed_at.pop((proto, port), None)
        self._apply_served(ports, now)

    def _apply_served(self, ports: Ports, now: float) -> None:
        """The served ports plus those that stopped being served less than `linger` ago."""
        for key in [k for k, at in self._closed_at.items() if now - at >= self._linger]:
            del self._closed_at[key]
        lingering = {
            proto: frozenset(port for (p, port) in self._closed_at if p is proto) for proto in Proto
        }
        wanted = {proto: ports[proto] | lingering[proto] for proto in Proto}
        if wanted == self.sensor.served:
            return
        try:
            self.sensor.serve(wanted)
        except FirewallError as err:  # the table is gone: the daemon's check rebuilds it
            event("kernel-sensor-error", logging.WARNING, action="served-ports", error=str(err))

    # -- counters and block generations --------------------------------------------------

    def _schedule(self) -> None:
        if self._loop is not None:
            self._timer = self._loop.call_later(self._poll, self._tick)

    def _tick(self) -> None:
        self._timer = None
        try:
            self._apply_served(self._watcher.ports, self._clock.monotonic())
            self._check_blocks()
        except FirewallError as err:
            event("kernel-sensor-error", logging.DEBUG, action="counters", error=str(err))
        except Exception:
            LOGGER.exception(fields("kernel-sensor-failed"))
        finally:
            self._schedule()

    def _check_blocks(self) -> None:
        self.kernel_counters = self.sensor.counters()
        if not self.settings.block:
            return
        now = self._clock.monotonic()
        rebuilt, self._builds = self.sensor.builds != self._builds, self.sensor.builds
        self.fill.record(now, self.kernel_counters, rebuilt)
        current = self.sensor.generation
        if self.fill.fill(current) < self.settings.block_size * ROTATE_AT:
            return
        older = GENERATIONS[1 - GENERATIONS.index(current)]
        dropped = self.fill.fill(older)
        self.sensor.rotate()
        self.fill.emptied(older)
        self._warn_pressure(now, dropped)

    def _warn_pressure(self, now: float, dropped: int) -> None:
        """Rotations come every second or so under a flood: warn once a minute."""
        level = logging.DEBUG
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY:
            level, self._last_warning = logging.WARNING, now
        event(
            "block-sets-rotated",
            level,
            rotations=self.sensor.rotations,
            dropped_blocks=dropped,
            hint="many new sources hit traps (a forged flood?): the oldest first-packet blocks "
            "gave way; raise [kernel] block_size to keep them longer",
        )

    # -- status --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        counters = self.kernel_counters
        return {
            "modes": {str(p): str(m) for p, m in self.sensor.rules.spec.modes.items()},
            "served": {str(p): sorted(self.sensor.served.get(p, ())) for p in Proto},
            "block": {
                "enabled": self.settings.block,
                "size": self.settings.block_size,
                "time": self.settings.block_time,
                "current": self.sensor.generation,
                "fill": {g: self.fill.fill(g) for g in GENERATIONS},
                "rotations": self.sensor.rotations,
            },
            "clients": {"size": self.settings.client_size, "time": self.settings.client_time},
            "events": {
                "reported": counters.get("reported", 0),
                "over_source_rate": counters.get("over_source", 0),
                "over_total_rate": counters.get("over_rate", 0),
                "received": self._receiver.received,
                "lost_overruns": self._receiver.overruns,
                "malformed": self._receiver.malformed + self.counts.unreadable,
                "foreign": self.counts.foreign,
            },
            "quiet_drops": counters.get("quiet", 0),
        }
