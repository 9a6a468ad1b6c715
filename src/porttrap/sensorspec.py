"""The kernel side of porttrap beyond the bans, as data: the sensor of stealth and advanced
modes (what it watches, from the configuration), the watch that every mode has (recent clients
and peers of the host, and the marks connect-mode UDP traps read), and the names that their
rules, the NFLOG reports and the daemon's core share. Pure: the rules are written by
`porttrap.firewall.sensor_rules` and `porttrap.firewall.watch_rules` (nftables) and
`porttrap.firewall.ipset_watch` (the ipset backend's watch), the reports
read by `porttrap.sensors.kernel`, and the core decides when the served ports and the gateways
change and when the block sets rotate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from porttrap.config.schema import Config, KernelSensor, TrapMode
from porttrap.model import IPAddress, IPNetwork, Proto

GENERATIONS = ("a", "b")  # the two generations of first-packet block sets
PATHS = ("new", "repeat", "client", "peer", "exempt")  # the `porttrap:<path>` of each report
PREFIX = "porttrap:"  # the NFLOG prefix of every report of porttrap's rules
CLIENT_PREFIX = f"{PREFIX}client"  # ... of a report about a recent client
PEER_PREFIX = f"{PREFIX}peer"  # ... of one about a peer (link-local, a gateway, a destination)
COUNTERS = (
    "block_a",
    "block_b",
    "reported",
    "over_source",
    "over_rate",
    "quiet",
    "redirected",  # a recent client's SYNs to trap ports sent to the catch-all port
    "over_redirect",  # ... and those over its per-source limit (reported as a client's probe)
    # The hold (docs/hold.md): a new source's SYNs to served ports ...
    "held",  # ... sent to the daemon's NFQUEUE
    "hold_over",  # ... let through unheld, over [kernel] hold_rate
    "hold_idle",  # ... let through unheld, the daemon not ready (no `hold_ready` heartbeat)
    "hold_suspect",  # ... dropped: the source sent a scanner's discovery probe (hold_rules)
)
# The hold's heartbeat: the daemon's queue reader keeps this element in set `hold_ready`
# (`NftablesBackend.hold_ready`), each time for HOLD_READY_TIME seconds; without it nothing is
# held, so a daemon that stalls stops holding within that time (docs/hold.md).
HOLD_READY_TIME = 2

# Bits of the packet mark (`meta mark`, SO_RCVMARK) that the watch sets on a UDP datagram to a
# connect-mode trap port: its source completed a flow to this host lately (MARK_CLIENT), or is
# a peer of the host (MARK_PEER: link-local, a gateway, or a destination of the host's own
# connections). Above the low 16 bits, where most marks live (kube-proxy 0x4000 and 0x8000,
# WireGuard's 51820, Cilium's 0x0f00, Istio's 0x539), and apart from Tailscale's 0x40000 and
# 0x80000. Only these two bits are touched: the rule clears them and ORs in its verdict late on
# the input hook (after the filter chains), so whatever set them earlier is not taken for it,
# and no other rule on the way in sees them.
MARK_CLIENT = 0x00010000
MARK_PEER = 0x00020000
MARK_MASK = MARK_CLIENT | MARK_PEER

Ports = Mapping[Proto, frozenset[int]]


def no_ports() -> dict[Proto, frozenset[int]]:
    return {proto: frozenset() for proto in Proto}


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """What the kernel watches. Per protocol: `ports` (the trap ports in stealth and connect
    modes, the watched range in advanced mode), `at` (traps on one address: (address, port)),
    and `exclude` (ports advanced mode leaves alone besides the served ones). The sensor
    watches the protocols in stealth or advanced mode; the watch marks UDP datagrams to the
    traps of connect mode (their sockets read the mark)."""

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

    @property
    def connect_udp(self) -> frozenset[int]:
        """The ports of connect-mode UDP traps (on any address), whose datagrams are marked."""
        if self.modes.get(Proto.UDP, TrapMode.CONNECT) is not TrapMode.CONNECT:
            return frozenset()
        at = self.at.get(Proto.UDP, ())
        return self.ports.get(Proto.UDP, frozenset()) | frozenset(port for _, port in at)

    @property
    def redirect(self) -> bool:
        """Whether a recent client's SYN to a TCP trap goes to the catch-all port
        (`[kernel] client_trap_port`), where a completed handshake proves its address."""
        return Proto.TCP in self.protos and self.kernel.client_time > 0 and self.catch_all > 0

    @property
    def hold(self) -> bool:
        """Whether a new source's TCP SYN to a served port is held (`[kernel] hold`)."""
        return Proto.TCP in self.protos and self.kernel.hold > 0

    @property
    def catch_all(self) -> int:
        return self.kernel.client_trap_port

    def open_ports(self, served: Ports, proto: Proto) -> frozenset[int]:
        """Ports of `proto` never trapped: the served ones, the excluded ones and, for TCP,
        the catch-all port."""
        ports = served.get(proto, frozenset()) | self.exclude.get(proto, frozenset())
        if proto is Proto.TCP and self.catch_all:
            ports |= {self.catch_all}
        return ports


@dataclass(frozen=True, slots=True)
class SensorState:
    """What porttrap's table holds besides the bans, as the kernel should hold it: what the
    sensor and the watch watch (`spec`; in connect mode the sensor has no protocol and only
    the watch is made), the ports served now (never trapped), the block generation that takes
    new blocks, and the host's gateways (peers: their probes never block them). The core keeps
    it; the firewall, the one writer of these rules, builds them from it."""

    spec: SensorSpec
    served: Ports
    generation: str = GENERATIONS[0]
    gateways: frozenset[IPAddress] = frozenset()


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
