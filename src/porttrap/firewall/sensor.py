"""The kernel sensor's state in porttrap's table, and the changes the daemon makes to it.

`SensorRules` (pure) writes the commands; `NftSensor` remembers what the kernel holds (the
served ports, the current block generation) so that a rebuilt table (on start, or after a
firewall reload removed it) comes back as it was, and runs the changes through `Nft`.
"""

from __future__ import annotations

from collections.abc import Mapping

from porttrap.config.schema import Config, TrapMode
from porttrap.firewall.kernel import Nft
from porttrap.firewall.objects import NftObjects, made_here
from porttrap.firewall.sensor_rules import COUNTERS, GENERATIONS, SensorRules, SensorSpec
from porttrap.model import Proto

Ports = Mapping[Proto, frozenset[int]]


class NftSensor:
    """The sensor part of porttrap's table. `commands()` is what `NftablesBackend.setup`
    adds to the table; the other methods change a table that exists."""

    def __init__(
        self,
        rules: SensorRules,
        nft: Nft | None = None,
        objects: NftObjects | None = None,
    ) -> None:
        """`nft` (libnftables) writes, `objects` (netlink) reads the counters. Both default to
        ones made now, in the calling thread's network namespace; give both or neither."""
        self.rules = rules
        self._nft, self._objects = made_here(nft, objects)
        self.served: dict[Proto, frozenset[int]] = {proto: frozenset() for proto in Proto}
        self.generation = GENERATIONS[0]
        self.rotations = 0
        self.builds = 0  # tables built with the sensor in them (start, and after a rebuild)

    def commands(self) -> list[str]:
        """The sensor as it should be now, for a table being created."""
        self.builds += 1
        return self.rules.create(self.served, self.generation)

    def serve(self, served: Ports) -> None:
        """The ports served now: never trapped. The state is kept even when the kernel
        refuses (FirewallError: the table may be gone), so the rebuilt table gets it."""
        commands = []
        for proto in self.rules.spec.protos:
            now = self.rules.spec.open_ports(served, proto)
            before = self.rules.spec.open_ports(self.served, proto)
            commands += self.rules.set_open(proto, now - before, before - now)
        self.served = {proto: served.get(proto, frozenset()) for proto in Proto}
        if commands:
            self._nft.run(commands)

    def rotate(self) -> str:
        """Empty the older block generation and make it current; returns its name."""
        older = GENERATIONS[1 - GENERATIONS.index(self.generation)]
        self._nft.run(self.rules.rotate(older))
        self.generation = older
        self.rotations += 1
        return older

    def counters(self) -> dict[str, int]:
        """Packets per named counter (see sensor_rules.COUNTERS)."""
        found = self._objects.counters(self.rules.table)
        return {name: n for name, n in found.items() if name in COUNTERS}


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


def make_sensor(config: Config) -> NftSensor | None:
    """The kernel sensor the configuration asks for; None when every protocol uses sockets."""
    if not config.modes.kernel:
        return None
    rules = SensorRules(config.firewall.table, spec_from_config(config))
    return NftSensor(rules)
