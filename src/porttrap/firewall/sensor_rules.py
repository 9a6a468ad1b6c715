"""The kernel sensor of stealth and advanced modes, as nft commands in porttrap's table.

Pure, like `porttrap.firewall.ruleset`, whose table these objects join so that starting is one
transaction and `porttrap flush` removes everything. They use the sets of the watch
(`porttrap.firewall.watch_rules`: recent clients, peers, gateways), which every mode has. The
path of a packet:

    prerouting, nat, priority -100 (dstnat), TCP in the kernel (chain syn_redirect):
      a SYN to a trap from a recent client (@clients)  -> redirected to the catch-all port
        ([kernel] client_trap_port), at most 1 a second   (the daemon listens there: the
        per source after a burst of 5; over that, it      handshake proves the client's
        goes on unchanged (counted) and is reported       address, and the listener reads
        as a client's probe                               the trap it aimed at with
                                                          SO_ORIGINAL_DST)
    input, priority -150 (after conntrack and DNAT, before the usual filter chains):
      loopback                                        -> leave it
      part of a known connection (established/related) -> leave it (the watch records
                                                          clients: conntrack's `assured`;
                                                          `established` alone is true of a SYN
                                                          scanner's RST after a SYN-ACK)
      to the catch-all port: redirected (ct dnat)     -> leave it (to the daemon's listener)
                             sent there directly       -> dropped: no scan finds the port open
      source in a first-packet block                  -> `blocked`: IPv6 neighbour discovery,
                                                          and a peer's or a recent client's
                                                          packets, go on (it may have become
                                                          one since it was blocked); anyone
                                                          else's trap packet is reported as a
                                                          repeat, everything else is dropped
      trap packet (a trap port, on every address, on  -> `probe`
        one, or on every one of a family ("::"); in
        advanced mode any watched port nothing serves)
      quiet: a non-SYN TCP packet to a port nothing   -> dropped, so no RST tells its state
        serves
      a SYN to a served port ([kernel] hold on)       -> `hold` (porttrap.firewall.hold_rules)
    probe: the host's own addresses and the allow list -> reported as exempt, dropped
           a peer (link-local, @gateways, @peers)      -> reported as a peer's, dropped
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
dropped (a full redirect meter means no redirect). First-packet blocks live in two generations
of sets (a, b). The daemon counts the insertions into the current one (a named counter) and,
before it fills, flushes the older and makes it current (`rotate`): under a flood of forged
sources the oldest blocks give way, and the newest scanner is still blocked at its first packet.

The redirect's limit bounds what a forger can make porttrap send in a client's name: a forged
SYN from a client's address gets the catch-all's SYN-ACK sent to the real client (which answers
RST: no connection, no hit), and Linux retransmits an unanswered SYN-ACK up to 5 times. So at
most 6 x (5 + t) SYN-ACKs in t seconds reach each client named, about 6 packets a second, while
any served port of the host answers a forger's SYNs without any limit.

Established connections are left alone even from a blocked source: they are the host's own
connections (replies from its DNS resolver, say: one forged probe in the resolver's name must
not cut the host off) or those of a client, which is exempt anyway. A policy ban (the drop in
prerouting) cuts everything.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping

from porttrap.firewall.hold_rules import HoldRules
from porttrap.firewall.nftsets import FAMILIES as _FAMILIES
from porttrap.firewall.nftsets import dynamic_set, port_ranges
from porttrap.firewall.watch_rules import WatchRules
from porttrap.model import Proto
from porttrap.sensorspec import COUNTERS, GENERATIONS, PATHS, PREFIX, SensorSpec

__all__ = ["SensorRules", "held_ports", "port_ranges"]

INPUT_PRIORITY = -150  # after conntrack (-200) and DNAT (-100 is after: see the module doc)
REDIRECT_PRIORITY = -100  # dstnat: NAT of the first packet of each connection
SNAPLEN = 128  # bytes of each reported packet: the IP and TCP/UDP headers
METER_TIMEOUT = 60  # seconds a per-source meter lives after its last packet
# A client's SYNs to traps redirected per second, after a burst: a connect scan needs only
# `[ban] client_trigger` (2) handshakes to traps; the limit bounds a forger (module doc).
REDIRECT_RATE, REDIRECT_BURST = 1, 5
_NOT_REPLIES = "tcp flags & (syn | ack) != syn | ack tcp flags & rst == 0"
_SYN = "tcp flags & (fin | syn | rst | ack) == syn"
# What a block must never drop: without it, a neighbour's address is unreachable.
_NEIGHBOUR_DISCOVERY = (
    "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
    "nd-neighbor-advert, nd-redirect }"
)


class SensorRules:
    """The sensor's nft commands for table `table` (family inet)."""

    def __init__(self, table: str, spec: SensorSpec) -> None:
        self.spec = spec
        self.table = table
        self._where = f"inet {table}"
        self._k = spec.kernel
        self._watch = WatchRules(table, spec)  # whose sets say who is a client, a peer
        self.hold = HoldRules(table, spec, self._watch)  # the hold of the first probe

    # -- the whole sensor, part of the table's creation ---------------------------------

    def create(self, served: Mapping[Proto, frozenset[int]], generation: str = "a") -> list[str]:
        """Commands that add the sensor to a freshly created table (see `Ruleset.replace`)."""
        if not self.spec.protos:
            return []
        commands = [*self._objects(), *self._sets(served)]
        commands += self._chains()
        commands += self.hold.create(held_ports(served))
        commands += self._input_rules()
        commands += self._blocked_rules()
        commands += self._probe_rules()
        commands += self._insert_rules(generation)
        for path in PATHS:
            commands += self._report_rules(path)
        commands += self._forward_rules()
        return commands + self._redirect_rules()

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
                traps = self._at(proto, version)
                at = [f"{a} . {p}" for a, p in traps if not _every(a)]
                commands.append(self._set(name, f"{kind} . inet_service"))
                if at:
                    commands.append(self._add_elements(name, at))
                if family := {p for a, p in traps if _every(a)}:
                    commands += self._port_set(f"traps_{proto}_any_v{version}", family, True)
        for version, _, kind in _FAMILIES:
            # Merged: an interval set refuses overlapping elements (a /24 and an address in it).
            nets = [n for n in self.spec.allow if n.version == version]
            allow = [str(n) for n in ipaddress.collapse_addresses(nets)]  # type: ignore[type-var]
            commands.append(self._set(f"allow_v{version}", kind, "interval"))
            if allow:
                commands.append(self._add_elements(f"allow_v{version}", allow))
            size = self._k.client_size
            commands.append(self._dynamic(f"meter_v{version}", kind, METER_TIMEOUT, size))
            if self.spec.redirect:
                commands.append(self._dynamic(f"redirect_v{version}", kind, METER_TIMEOUT, size))
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
        return dynamic_set(self._where, name, kind, timeout, size)

    def _add_elements(self, name: str, elements: list[str]) -> str:
        return f"add element {self._where} {name} {{ {', '.join(elements)} }}"

    def _chains(self) -> list[str]:
        base = f"type filter hook {{}} priority {INPUT_PRIORITY}; policy accept;"
        chains = [
            f"add chain {self._where} input {{ {base.format('input')} }}",
            f"add chain {self._where} forward {{ {base.format('forward')} }}",
        ]
        regular = ["blocked", "probe", "block", *(f"report_{p}" for p in PATHS)]
        if self.spec.redirect:
            nat = f"type nat hook prerouting priority {REDIRECT_PRIORITY}; policy accept;"
            chains.append(f"add chain {self._where} syn_redirect {{ {nat} }}")
            regular.append("client_redirect")
        return chains + [f"add chain {self._where} {name}" for name in regular]

    def _rule(self, chain: str, text: str) -> str:
        return f"add rule {self._where} {chain} {text}"

    def _input_rules(self) -> list[str]:
        rules = [
            self._rule("input", 'iif "lo" return'),
            self._rule("input", "ct state established,related return"),
        ]
        if self.spec.redirect:  # the catch-all answers redirected SYNs only: no scan sees it
            port = self.spec.catch_all
            rules.append(self._rule("input", f"tcp dport {port} ct status dnat return"))
            rules.append(self._rule("input", f"tcp dport {port} drop"))
        if self._k.block:
            for version, protocol, _ in _FAMILIES:
                for generation in GENERATIONS:
                    rules.append(
                        self._rule(
                            "input", f"{protocol} saddr @block_{generation}_v{version} jump blocked"
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
        return rules + self.hold.input_rules()

    def _trap_matches(self) -> list[str]:
        """The matches that make a packet a trap packet, one rule each."""
        matches = []
        for proto in self.spec.protos:
            flags = f" {_NOT_REPLIES}" if proto is Proto.TCP else ""
            matches += self._matches_of(proto, flags)
        return matches

    def _matches_of(self, proto: Proto, flags: str) -> list[str]:
        """A packet of `proto` with TCP `flags` (a match, or "") to one of its traps."""
        head = f"meta l4proto {proto} fib daddr type local{flags}"
        tail = f"{proto} dport != @open_{proto}"
        matches = [f"{head} {proto} dport @traps_{proto} {tail}"]
        for version, protocol, _ in _FAMILIES:
            traps = self._at(proto, version)
            if any(not _every(a) for a, _ in traps):
                set_name = f"traps_{proto}_at_v{version}"
                matches.append(f"{head} {protocol} daddr . {proto} dport @{set_name} {tail}")
            if any(_every(a) for a, _ in traps):
                set_name = f"traps_{proto}_any_v{version}"
                family = f"meta nfproto ipv{version}"
                matches.append(f"{head} {family} {proto} dport @{set_name} {tail}")
        return matches

    def _at(self, proto: Proto, version: int) -> list[tuple[str, int]]:
        """The traps of `proto` on one address of IP `version`, or on all of it ("::")."""
        return [(a, p) for a, p in self.spec.at.get(proto, ()) if _version(a) == version]

    def _blocked_rules(self) -> list[str]:
        """A blocked source. Its neighbour discovery returns to the input chain: one forged
        probe must not make an IPv6 neighbour (the host's resolver on its link) unreachable.
        So does a peer or a recent client: the probe chain never blocks them, but a source
        may have become one after it was blocked (a forged probe named the host's resolver
        before the host first asked it), and its trap packets must be reported as theirs, not
        as a stranger's repeats, which the policy would count toward a ban."""
        exempt = [_NEIGHBOUR_DISCOVERY, *self._watch.peer_matches(), *self._watch.client_matches()]
        rules = [self._rule("blocked", f"{match} return") for match in exempt]
        rules += [self._rule("blocked", f"{m} goto report_repeat") for m in self._trap_matches()]
        return [*rules, self._rule("blocked", "drop")]

    def _probe_rules(self) -> list[str]:
        rules = [self._rule("probe", "fib saddr type local goto report_exempt")]
        for version, protocol, _ in _FAMILIES:
            allowed = f"{protocol} saddr @allow_v{version} goto report_exempt"
            rules.append(self._rule("probe", allowed))
        for match in self._watch.peer_matches():
            rules.append(self._rule("probe", f"{match} goto report_peer"))
        for match in self._watch.client_matches():
            rules.append(self._rule("probe", f"{match} goto report_client"))
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
        # The receiver asks the kernel to gather reports (nflog.QTHRESH) and a lone one waits
        # for the flush timer, 4 to 8 ms: longer than a 5 ms hold, whose SYN would pass before
        # its source's trap touch is heard of. With the hold on, each report goes at once
        # (the rule's threshold overrides the group's): they are `event_rate` a second at most.
        threshold = " queue-threshold 1" if self.spec.hold else ""
        rules.append(
            self._rule(
                chain,
                f'limit name "{limit}" counter name "reported" '
                f'log prefix "{PREFIX}{path}" group {self._k.nflog_group} snaplen {SNAPLEN}'
                f"{threshold} drop",
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

    def _redirect_rules(self) -> list[str]:
        """A recent client's SYN to a TCP trap goes to the catch-all port, limited per source:
        over the limit (or with the meter set full) it goes on unchanged, to be reported."""
        if not self.spec.redirect:
            return []
        rules = [
            self._rule("syn_redirect", f"{match} goto client_redirect")
            for match in self._matches_of(Proto.TCP, f" {_SYN}")
        ]
        limit = f"limit rate {REDIRECT_RATE}/second burst {REDIRECT_BURST} packets"
        for version, protocol, _ in _FAMILIES:
            rules.append(
                self._rule(
                    "client_redirect",
                    f"meta l4proto tcp {protocol} saddr @clients_v{version} "
                    f"update @redirect_v{version} "
                    f'{{ {protocol} saddr {limit} }} counter name "redirected" '
                    f"redirect to :{self.spec.catch_all}",
                )
            )
        over = [
            self._rule("client_redirect", f'{match} counter name "over_redirect"')
            for match in self._watch.client_matches()
        ]
        return rules + over

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


def held_ports(served: Mapping[Proto, frozenset[int]]) -> frozenset[int]:
    """The TCP ports where a new source's SYN may be held: the served ones."""
    return served.get(Proto.TCP, frozenset())


def _version(address: str) -> int:
    return 6 if ":" in address else 4


def _every(address: str) -> bool:
    """Whether a trap's address is every address of its family ("::", "0.0.0.0"): no packet
    is sent to it, so it is matched by family, not by address."""
    return ipaddress.ip_address(address).is_unspecified
