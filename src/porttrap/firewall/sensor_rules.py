"""The kernel sensor of stealth and advanced modes, as nft commands in porttrap's table.

Pure, like `porttrap.firewall.ruleset`, whose table these objects join so that starting is one
transaction and `porttrap flush` removes everything. The path of a packet:

    input, priority -150 (after conntrack and DNAT, before the usual filter chains):
      loopback                                        -> leave it
      part of a known connection (established/related) -> leave it; a TCP client's packet
                                                          refreshes its place in @clients
                                                          (only once the handshake completed:
                                                          conntrack's `assured`; `established`
                                                          alone is true of a SYN scanner's RST
                                                          after a SYN-ACK)
      source in a first-packet block                  -> `blocked`: a trap packet is reported
                                                          as a repeat, everything is dropped
      trap packet (a trap port, or in advanced mode   -> `probe`
        any watched port nothing serves)
      quiet: a non-SYN TCP packet to a port nothing   -> dropped, so no RST tells its state
        serves
    probe: the host's own addresses and the allow list -> reported as exempt, dropped
           a recent client (@clients)                  -> reported as a client's, dropped
           anyone else                                 -> put in the current block set,
                                                          reported as new, dropped

Every trap packet is dropped: the port looks filtered, neither open nor closed. Reports go to
the daemon over NFLOG (`log group`), at most `source_rate` per second per source (a dynamic set
of meters) and `event_rate` per second per path (named limits; new sources and repeats have one
each, so a flood of forged new sources cannot hide a real scanner's repeats). What the limits
hold back is dropped all the same, and counted.

A set filled from the packet path stops growing at its size: an `update` then fails and ends
its rule, so each update has a rule of its own and the packet goes on to be reported and
dropped. First-packet blocks live in two generations of sets (a, b). The daemon counts the
insertions into the current one (a named counter) and, before it fills, flushes the older and
makes it current (`rotate`): under a flood of forged sources the oldest blocks give way, and the
newest scanner is still blocked at its first packet.

Established connections are left alone even from a blocked source: they are the host's own
connections (replies from its DNS resolver, say: one forged probe in the resolver's name must
not cut the host off) or those of a client, which is exempt anyway. A policy ban (the drop in
prerouting) cuts everything.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping

from porttrap.model import Proto
from porttrap.sensorspec import COUNTERS, GENERATIONS, PATHS, PREFIX, SensorSpec

INPUT_PRIORITY = -150  # after conntrack (-200) and DNAT (-100 is after: see the module doc)
SNAPLEN = 128  # bytes of each reported packet: the IP and TCP/UDP headers
METER_TIMEOUT = 60  # seconds a per-source meter lives after its last packet
_FAMILIES = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))
_NOT_REPLIES = "tcp flags & (syn | ack) != syn | ack tcp flags & rst == 0"


def port_ranges(ports: Iterable[int]) -> list[str]:
    """Ports as nft set elements, runs joined: {22, 23, 24, 80} -> ['22-24', '80']."""
    found: list[str] = []
    ordered = sorted(set(ports))
    start = 0
    for index, port in enumerate(ordered):
        last = index + 1 == len(ordered) or ordered[index + 1] != port + 1
        if last:
            first = ordered[start]
            found.append(str(first) if first == port else f"{first}-{port}")
            start = index + 1
    return found


class SensorRules:
    """The sensor's nft commands for table `table` (family inet)."""

    def __init__(self, table: str, spec: SensorSpec) -> None:
        self.spec = spec
        self.table = table
        self._where = f"inet {table}"
        self._k = spec.kernel

    # -- the whole sensor, part of the table's creation ---------------------------------

    def create(self, served: Mapping[Proto, frozenset[int]], generation: str = "a") -> list[str]:
        """Commands that add the sensor to a freshly created table (see `Ruleset.replace`)."""
        if not self.spec.protos:
            return []
        commands = [*self._objects(), *self._sets(served)]
        commands += self._chains()
        commands += self._input_rules()
        commands += self._blocked_rules()
        commands += self._probe_rules()
        commands += self._insert_rules(generation)
        for path in PATHS:
            commands += self._report_rules(path)
        commands += self._forward_rules()
        return commands

    def _objects(self) -> list[str]:
        rate, where = self._k.event_rate, self._where
        limits = [
            f"add limit {where} rate_{name} {{ rate {rate}/second burst {rate} packets; }}"
            for name in ("new", "repeat")
        ]
        return limits + [f"add counter {where} {name}" for name in COUNTERS]

    def _sets(self, served: Mapping[Proto, frozenset[int]]) -> list[str]:
        commands = []
        for proto in self.spec.protos:
            commands += self._port_set(f"traps_{proto}", self.spec.ports[proto], interval=True)
            open_ports = self.spec.open_ports(served, proto)
            commands += self._port_set(f"open_{proto}", open_ports, interval=False)
            for version, _, kind in _FAMILIES:
                name = f"traps_{proto}_at_v{version}"
                traps = self.spec.at.get(proto, ())
                at = [f"{a} . {p}" for a, p in traps if _version(a) == version]
                commands.append(self._set(name, f"{kind} . inet_service"))
                if at:
                    commands.append(self._add_elements(name, at))
        for version, _, kind in _FAMILIES:
            # Merged: an interval set refuses overlapping elements (a /24 and an address in it).
            nets = [n for n in self.spec.allow if n.version == version]
            allow = [str(n) for n in ipaddress.collapse_addresses(nets)]  # type: ignore[type-var]
            commands.append(self._set(f"allow_v{version}", kind, "interval"))
            if allow:
                commands.append(self._add_elements(f"allow_v{version}", allow))
            size = self._k.client_size
            timeout = math.ceil(self._k.client_time)
            commands.append(self._dynamic(f"clients_v{version}", kind, timeout, size))
            commands.append(self._dynamic(f"meter_v{version}", kind, METER_TIMEOUT, size))
            for generation in GENERATIONS:
                block = math.ceil(self._k.block_time)
                name = f"block_{generation}_v{version}"
                commands.append(self._dynamic(name, kind, block, self._k.block_size))
        return commands

    def _port_set(self, name: str, ports: Iterable[int], interval: bool) -> list[str]:
        """A set of ports: an interval set holds ranges (1-65535 is one element)."""
        ports = set(ports)
        commands = [self._set(name, "inet_service", "interval" if interval else None)]
        if ports:
            elements = port_ranges(ports) if interval else [str(p) for p in sorted(ports)]
            commands.append(self._add_elements(name, elements))
        return commands

    def _set(self, name: str, kind: str, flags: str | None = None) -> str:
        flagged = f" flags {flags};" if flags else ""
        return f"add set {self._where} {name} {{ type {kind};{flagged} }}"

    def _dynamic(self, name: str, kind: str, timeout: int, size: int) -> str:
        return (
            f"add set {self._where} {name} {{ type {kind}; flags dynamic,timeout; "
            f"timeout {max(timeout, 1)}s; size {size}; }}"
        )

    def _add_elements(self, name: str, elements: list[str]) -> str:
        return f"add element {self._where} {name} {{ {', '.join(elements)} }}"

    def _chains(self) -> list[str]:
        base = f"type filter hook {{}} priority {INPUT_PRIORITY}; policy accept;"
        chains = [
            f"add chain {self._where} input {{ {base.format('input')} }}",
            f"add chain {self._where} forward {{ {base.format('forward')} }}",
        ]
        regular = ["known", "blocked", "probe", "block", *(f"report_{p}" for p in PATHS)]
        return chains + [f"add chain {self._where} {name}" for name in regular]

    def _rule(self, chain: str, text: str) -> str:
        return f"add rule {self._where} {chain} {text}"

    def _input_rules(self) -> list[str]:
        rules = [
            self._rule("input", 'iif "lo" return'),
            self._rule("input", "ct state established,related goto known"),
        ]
        if self._k.client_time > 0:
            for version, protocol, _ in _FAMILIES:
                rules.append(
                    self._rule(
                        "known",
                        f"meta l4proto tcp ct direction original ct status assured "
                        f"update @clients_v{version} {{ {protocol} saddr }}",
                    )
                )
        if self._k.block:
            for version, protocol, _ in _FAMILIES:
                for generation in GENERATIONS:
                    rules.append(
                        self._rule(
                            "input", f"{protocol} saddr @block_{generation}_v{version} goto blocked"
                        )
                    )
        rules += [self._rule("input", f"{match} goto probe") for match in self._trap_matches()]
        if self._k.quiet and Proto.TCP in self.spec.protos:
            rules.append(
                self._rule(
                    "input",
                    "meta l4proto tcp fib daddr type local "
                    "tcp flags & (fin | syn | rst | ack) != syn "
                    'tcp dport != @open_tcp counter name "quiet" drop',
                )
            )
        return rules

    def _trap_matches(self) -> list[str]:
        """The matches that make a packet a trap packet, one rule each."""
        matches = []
        for proto in self.spec.protos:
            head = f"meta l4proto {proto} fib daddr type local"
            if proto is Proto.TCP:
                head += f" {_NOT_REPLIES}"
            tail = f"{proto} dport != @open_{proto}"
            matches.append(f"{head} {proto} dport @traps_{proto} {tail}")
            for version, protocol, _ in _FAMILIES:
                if any(_version(a) == version for a, _ in self.spec.at.get(proto, ())):
                    set_name = f"traps_{proto}_at_v{version}"
                    matches.append(f"{head} {protocol} daddr . {proto} dport @{set_name} {tail}")
        return matches

    def _blocked_rules(self) -> list[str]:
        rules = [self._rule("blocked", f"{m} goto report_repeat") for m in self._trap_matches()]
        return [*rules, self._rule("blocked", "drop")]

    def _probe_rules(self) -> list[str]:
        rules = [self._rule("probe", "fib saddr type local goto report_exempt")]
        for version, protocol, _ in _FAMILIES:
            allowed = f"{protocol} saddr @allow_v{version} goto report_exempt"
            rules.append(self._rule("probe", allowed))
        if self._k.client_time > 0:
            for version, protocol, _ in _FAMILIES:
                rules.append(
                    self._rule("probe", f"{protocol} saddr @clients_v{version} goto report_client")
                )
        if self._k.block:
            rules.append(self._rule("probe", "jump block"))
        return [*rules, self._rule("probe", "goto report_new")]

    def _insert_rules(self, generation: str) -> list[str]:
        """Into the current generation's block sets, counted: one rule per family, as a
        failed update (a full set) ends its rule."""
        if not self._k.block:
            return []
        return [
            self._rule(
                "block",
                f"update @block_{generation}_v{version} {{ {protocol} saddr }} "
                f'counter name "block_{generation}"',
            )
            for version, protocol, _ in _FAMILIES
        ]

    def _report_rules(self, path: str) -> list[str]:
        chain = f"report_{path}"
        rate = self._k.source_rate
        rules = [
            self._rule(
                chain,
                f"update @meter_v{version} {{ {protocol} saddr limit rate over {rate}/second "
                f'burst {rate} packets }} counter name "over_source" drop',
            )
            for version, protocol, _ in _FAMILIES
        ]
        limit = "rate_repeat" if path == "repeat" else "rate_new"
        rules.append(
            self._rule(
                chain,
                f'limit name "{limit}" counter name "reported" '
                f'log prefix "{PREFIX}{path}" group {self._k.nflog_group} snaplen {SNAPLEN} drop',
            )
        )
        return [*rules, self._rule(chain, 'counter name "over_rate" drop')]

    def _forward_rules(self) -> list[str]:
        """New connections from a blocked source to containers or other forwarded hosts."""
        if not self._k.block:
            return []
        rules = [self._rule("forward", "ct state established,related return")]
        for version, protocol, _ in _FAMILIES:
            for generation in GENERATIONS:
                rules.append(
                    self._rule("forward", f"{protocol} saddr @block_{generation}_v{version} drop")
                )
        return rules

    # -- changes while running ----------------------------------------------------------

    def set_open(self, proto: Proto, opened: Iterable[int], closed: Iterable[int]) -> list[str]:
        """Ports that are now served (never trapped) or no longer served. The caller knows
        the set's content, so nothing is added twice or deleted when absent."""
        commands = []
        if opened := sorted(opened):
            commands.append(self._add_elements(f"open_{proto}", [str(p) for p in opened]))
        if closed := sorted(closed):
            elements = ", ".join(str(p) for p in closed)
            commands.append(f"delete element {self._where} open_{proto} {{ {elements} }}")
        return commands

    def rotate(self, to: str) -> list[str]:
        """Make generation `to` current: empty it (its blocks are the oldest), then point the
        insert rules at it. One transaction: there is no moment without a current set."""
        commands = [f"flush set {self._where} block_{to}_v{v}" for v, _, _ in _FAMILIES]
        commands.append(f"flush chain {self._where} block")
        return commands + self._insert_rules(to)


def _version(address: str) -> int:
    return 6 if ":" in address else 4
