"""The kernel sensor of stealth and advanced modes as data: what it watches (from the
configuration) and the names that its nftables rules, its NFLOG reports and the daemon's core
share. Pure: the rules are written by `porttrap.firewall.sensor_rules`, the reports read by
`porttrap.sensors.kernel`, and the core decides when the served ports change and when the block
sets rotate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from porttrap.config.schema import Config, KernelSensor, TrapMode
from porttrap.model import IPNetwork, Proto

GENERATIONS = ("a", "b")  # the two generations of first-packet block sets
PATHS = ("new", "repeat", "client", "exempt")  # the `porttrap:<path>` prefix of each report
PREFIX = "porttrap:"  # the NFLOG prefix of every report of porttrap's rules
CLIENT_PREFIX = f"{PREFIX}client"  # ... of a report about a recent client
COUNTERS = ("block_a", "block_b", "reported", "over_source", "over_rate", "quiet")
# Packet mark bits porttrap's rules set on UDP datagrams to connect-mode trap ports, read back
# by the trap sockets (SO_RCVMARK) so that forgeable hits are spared. TODO(issue 12): defined
# here ahead of the kernel engineer's rules, with the values agreed; theirs replace these.
MARK_CLIENT = 0x00010000  # the source is a recent client of the host (any protocol)
MARK_PEER = 0x00020000  # the host itself talks to the source (a resolver, a mirror)

Ports = Mapping[Proto, frozenset[int]]


def no_ports() -> dict[Proto, frozenset[int]]:
    return {proto: frozenset() for proto in Proto}


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """What the kernel sensor watches. Per protocol in stealth or advanced mode: `ports` (the
    trap ports in stealth mode, the watched range in advanced mode), `at` (stealth traps on
    one address: (address, port)), and `exclude` (ports left alone besides the served ones)."""

    modes: Mapping[Proto, TrapMode]
    ports: Mapping[Proto, frozenset[int]]
    at: Mapping[Proto, tuple[tuple[str, int], ...]]
    exclude: Mapping[Proto, frozenset[int]]
    allow: tuple[IPNetwork, ...]
    kernel: KernelSensor

    @property
    def protos(self) -> list[Proto]:
        """The protocols the kernel watches (not in connect mode)."""
        return [p for p in Proto if self.modes.get(p, TrapMode.CONNECT) is not TrapMode.CONNECT]

    def open_ports(self, served: Ports, proto: Proto) -> frozenset[int]:
        """Ports of `proto` never trapped: the served ones and the excluded ones."""
        return served.get(proto, frozenset()) | self.exclude.get(proto, frozenset())


@dataclass(frozen=True, slots=True)
class SensorState:
    """The sensor as the kernel should hold it: what it watches, the ports served now (never
    trapped) and the block generation that takes new blocks. The core keeps it; the firewall,
    the one writer of the sensor's rules, builds them from it."""

    spec: SensorSpec
    served: Ports
    generation: str = GENERATIONS[0]


def spec_from_config(config: Config) -> SensorSpec:
    """What the kernel sensor watches, from the configuration."""
    ports: dict[Proto, frozenset[int]] = {}
    at: dict[Proto, tuple[tuple[str, int], ...]] = {}
    exclude: dict[Proto, frozenset[int]] = {}
    modes = {proto: config.modes.of(proto) for proto in Proto}
    for proto, mode in modes.items():
        if mode is TrapMode.ADVANCED:
            ports[proto] = config.modes.watched(proto)
            at[proto] = ()
            exclude[proto] = config.modes.excluded(proto)
        else:
            traps = [t for t in config.traps if t.proto is proto]
            ports[proto] = frozenset(t.port for t in traps if t.address is None)
            at[proto] = tuple((str(t.address), t.port) for t in traps if t.address is not None)
            exclude[proto] = frozenset()
    return SensorSpec(modes, ports, at, exclude, config.allow.networks, config.kernel)
