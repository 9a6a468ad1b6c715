"""The kernel sensor as the core keeps it (stealth and advanced modes): which ports must never
be trapped, and when the first-packet block sets rotate. Pure; the firewall writes the rules.

- Served ports come from the listeners sensor. A port that stops being served becomes a trap
  again only after `linger` seconds, so that the clients of a restarting service are not taken
  for scanners.
- The kernel counts insertions into each block generation (a named counter). From the counters,
  read every `POLL` seconds, the core estimates how full the current generation is and, before
  it fills, has the firewall empty the older one and make it current (see
  `porttrap.firewall.sensor_rules`): under a flood of forged sources the oldest blocks give
  way, and the newest scanner is still blocked at its first packet.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from porttrap.config.schema import KernelSensor
from porttrap.core.commands import Command, Log, RotateBlocks, ServePorts
from porttrap.model import IPAddress, Proto
from porttrap.sensorspec import GENERATIONS, Ports, SensorSpec, SensorState, no_ports

LINGER = 10.0  # seconds a port that stopped being served stays out of the traps
ROTATE_AT = 0.5  # rotate when the current generation is estimated this full
WARN_EVERY = 60.0  # seconds between warnings that the block sets are under pressure


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

    def record(self, now: float, counts: Mapping[str, int], rebuilt: bool = False) -> None:
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


def older(generation: str) -> str:
    return GENERATIONS[1 - GENERATIONS.index(generation)]


class KernelState:
    """The sensor's desired state and the counters behind it. Each method returns the commands
    that bring the kernel there."""

    def __init__(
        self, spec: SensorSpec, served: Ports | None = None, linger: float = LINGER
    ) -> None:
        self.spec = spec
        self.linger = linger
        self.serving: Ports = dict(served) if served is not None else no_ports()  # read now
        self.wanted: Ports = dict(self.serving)  # what the kernel is told: serving + lingering
        self._unconfirmed = False  # the kernel refused the last ServePorts
        self.generation = GENERATIONS[0]
        self.rotations = 0
        self.counters: dict[str, int] = {}
        self.fill = BlockFill(spec.kernel.block_time)
        self._closed_at: dict[tuple[Proto, int], float] = {}
        self._rebuilt = True
        self._last_warning: float | None = None

    @property
    def settings(self) -> KernelSensor:
        return self.spec.kernel

    def state(self, gateways: frozenset[IPAddress]) -> SensorState:
        """The sensor for a table being built; its block sets start empty."""
        self._rebuilt, self._unconfirmed = True, False
        return SensorState(self.spec, self.wanted, self.generation, gateways)

    def start(self, served: Ports) -> None:
        """The ports served when the daemon starts, before the table is built with them."""
        self.serving, self.wanted = dict(served), dict(served)

    def serve_failed(self) -> None:
        """The kernel refused the last ServePorts: send them again at the next reading."""
        self._unconfirmed = True

    def respec(self, spec: SensorSpec) -> None:
        """A reload's new rules, in a table just built: its block sets start empty."""
        self.spec = spec
        self.fill = BlockFill(spec.kernel.block_time)
        self._rebuilt = True

    # -- served ports --------------------------------------------------------------------

    def served(self, ports: Ports, mono: float) -> list[Command]:
        """The listeners sensor read `ports`."""
        for proto in Proto:
            for port in self.serving.get(proto, frozenset()) - ports.get(proto, frozenset()):
                self._closed_at.setdefault((proto, port), mono)
            for port in ports.get(proto, frozenset()):
                self._closed_at.pop((proto, port), None)
        self.serving = {proto: ports.get(proto, frozenset()) for proto in Proto}
        return self._serve(mono)

    def _serve(self, mono: float) -> list[Command]:
        """The served ports plus those that stopped being served less than `linger` ago."""
        for key in [k for k, at in self._closed_at.items() if mono - at >= self.linger]:
            del self._closed_at[key]
        wanted = {
            proto: self.serving.get(proto, frozenset())
            | frozenset(port for (p, port) in self._closed_at if p is proto)
            for proto in Proto
        }
        if wanted == self.wanted and not self._unconfirmed:
            return []
        self.wanted, self._unconfirmed = wanted, False
        return [ServePorts(wanted)]

    # -- counters and block generations --------------------------------------------------

    def read(self, counters: Mapping[str, int] | None, mono: float) -> list[Command]:
        """The counters were read (None: the read failed): lingering ports may be trapped
        again, and the block sets may need to rotate."""
        commands = self._serve(mono)
        if counters is None:
            return commands
        self.counters = dict(counters)
        if not self.settings.block:
            return commands
        rebuilt, self._rebuilt = self._rebuilt, False
        self.fill.record(mono, counters, rebuilt)
        if self.fill.fill(self.generation) >= self.settings.block_size * ROTATE_AT:
            commands.append(RotateBlocks(older(self.generation)))
        return commands

    def rotated(self, emptied: str, mono: float) -> list[Command]:
        """The firewall made `emptied` current; warn (once a minute) that blocks gave way."""
        dropped = self.fill.fill(emptied)
        self.generation = emptied
        self.rotations += 1
        self.fill.emptied(emptied)
        level = logging.DEBUG
        if self._last_warning is None or mono - self._last_warning >= WARN_EVERY:
            level, self._last_warning = logging.WARNING, mono
        hint = (
            "many new sources hit traps (a forged flood?): the oldest first-packet blocks "
            "gave way; raise [kernel] block_size to keep them longer"
        )
        fields = {"rotations": self.rotations, "dropped_blocks": dropped, "hint": hint}
        return [Log("block-sets-rotated", level, fields)]
