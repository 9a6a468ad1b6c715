"""The watch: what porttrap's table holds in every mode with nftables, besides the bans and the
kernel sensor. It learns who the host's recent clients and peers are, for the sensor's probe
chain (stealth, advanced: their probes never block them) and for connect-mode UDP traps (a mark
on each datagram says what the kernel knows of its source). Pure nft commands, like
`porttrap.firewall.ruleset`, whose table they join: one transaction, and `delete table` (flush,
teardown) removes them with the rest.

    input, priority 300 (after the filter chains)      chain watch_in
      loopback                                         -> leave it
      a packet of an assured flow in its original      -> its source into @clients (refreshed)
        direction, to this host: the remote side opened
        it and it went both ways (TCP: the handshake
        completed; UDP: replies for over 2 seconds;
        any protocol conntrack assures)
      a UDP datagram to a connect-mode trap port       -> `watch_mark`: the bits MARK_CLIENT and
        (@connect_udp)                                    MARK_PEER cleared, then set when the
                                                          source is a client, a peer
    output, priority 0 (filter)                        chain watch_out
      loopback                                         -> leave it
      a packet in the original direction of its flow   -> its destination into @peers
        (the host opened it: its resolver, NTP server,    (refreshed by every packet, so a
        mirrors)                                          long connection keeps it)

A peer is a link-local source (169.254.0.0/16, fe80::/10: neighbours, the IPv6 next hop), a
gateway of the host (@gateways, which the daemon keeps from the routes) or a recent destination
(@peers). A forger can name any of them; the daemon never bans a peer or a client on evidence
that can be forged.

The mark is set late on the input hook, after the usual filter chains, so that no other rule on
the way in sees porttrap's bits, and cleared first, so that bits set earlier by another tool are
not taken for porttrap's verdict. The trap's socket reads it with SO_RCVMARK (Linux >= 5.19).

Assured UDP proves less than a TCP handshake: a forger whose datagrams a UDP service of the host
answers can make any address a client. That only spares the address (a client is never banned
on forgeable evidence); it never bans anyone.

`[kernel] client_time = 0` turns the tracking off: the sets stay empty and no rule refers to
them (link-local sources and gateways are still peers).

The ipset backend's watch (`porttrap.firewall.ipset_watch`) does the same with ipset sets and
iptables chains.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable

from porttrap.firewall.nftsets import FAMILIES, dynamic_set, elements_command, port_ranges
from porttrap.model import IPAddress
from porttrap.sensorspec import MARK_CLIENT, MARK_MASK, MARK_PEER, SensorSpec

WATCH_IN_PRIORITY = 300  # after filter (0) and security (50): see the module doc
WATCH_OUT_PRIORITY = 0  # filter: after conntrack (-200) has seen the host's packet
LINK_LOCAL = {4: "169.254.0.0/16", 6: "fe80::/10"}
_KEEP = 0xFFFFFFFF & ~MARK_MASK  # every mark bit but porttrap's


class WatchRules:
    """The watch's nft commands for table `table` (family inet)."""

    def __init__(self, table: str, spec: SensorSpec) -> None:
        self.spec = spec
        self._where = f"inet {table}"
        self.tracking = spec.kernel.client_time > 0

    def create(self, gateways: Iterable[IPAddress] = ()) -> list[str]:
        """Commands that add the watch to a freshly created table, before the sensor (whose
        probe chain refers to its sets): see `Ruleset.replace`."""
        commands = self._sets(frozenset(gateways))
        commands += [
            self._base("watch_in", "input", WATCH_IN_PRIORITY),
            self._base("watch_out", "output", WATCH_OUT_PRIORITY),
            f"add chain {self._where} watch_mark",
        ]
        return commands + self._in_rules() + self._out_rules() + self._mark_rules()

    def client_matches(self) -> list[str]:
        """A recent client of the host, one match per family (none without tracking)."""
        if not self.tracking:
            return []
        return [f"{protocol} saddr @clients_v{version}" for version, protocol, _ in FAMILIES]

    def peer_matches(self) -> list[str]:
        """A peer of the host: link-local, a gateway, a recent destination (with tracking)."""
        matches = [f"{protocol} saddr {LINK_LOCAL[version]}" for version, protocol, _ in FAMILIES]
        matches += [f"{protocol} saddr @gateways_v{version}" for version, protocol, _ in FAMILIES]
        if self.tracking:
            matches += [f"{protocol} saddr @peers_v{version}" for version, protocol, _ in FAMILIES]
        return matches

    def set_gateways(self, added: Iterable[IPAddress], removed: Iterable[IPAddress]) -> list[str]:
        """Gateways that are new, or gone. The caller knows the sets' content, so nothing is
        added twice or deleted when absent."""
        commands = []
        for verb, addresses in (("add", added), ("delete", removed)):
            by_version = _by_version(addresses)
            for version, _, _ in FAMILIES:
                if by_version[version]:
                    name = f"gateways_v{version}"
                    commands.append(elements_command(verb, self._where, name, by_version[version]))
        return commands

    # -- the parts --------------------------------------------------------------------------

    def _sets(self, gateways: frozenset[IPAddress]) -> list[str]:
        timeout, size = math.ceil(self.spec.kernel.client_time), self.spec.kernel.client_size
        commands = []
        by_version = _by_version(gateways)
        for version, _, kind in FAMILIES:
            commands.append(dynamic_set(self._where, f"clients_v{version}", kind, timeout, size))
            commands.append(dynamic_set(self._where, f"peers_v{version}", kind, timeout, size))
            name = f"gateways_v{version}"
            commands.append(f"add set {self._where} {name} {{ type {kind}; flags interval; }}")
            if by_version[version]:
                commands.append(elements_command("add", self._where, name, by_version[version]))
        connect_udp = "add set {} connect_udp {{ type inet_service; flags interval; }}"
        commands.append(connect_udp.format(self._where))
        if self.spec.connect_udp:
            ports = port_ranges(self.spec.connect_udp)
            commands.append(elements_command("add", self._where, "connect_udp", ports))
        return commands

    def _base(self, name: str, hook: str, priority: int) -> str:
        kind = f"type filter hook {hook} priority {priority}; policy accept;"
        return f"add chain {self._where} {name} {{ {kind} }}"

    def _rule(self, chain: str, text: str) -> str:
        return f"add rule {self._where} {chain} {text}"

    def _in_rules(self) -> list[str]:
        rules = [self._rule("watch_in", 'iif "lo" return')]
        if self.tracking:
            assured = "ct state established ct direction original ct status assured"
            rules += [
                self._rule("watch_in", f"{assured} update @clients_v{v} {{ {protocol} saddr }}")
                for v, protocol, _ in FAMILIES
            ]
        if self.spec.connect_udp:
            rules.append(self._rule("watch_in", "udp dport @connect_udp goto watch_mark"))
        return rules

    def _out_rules(self) -> list[str]:
        rules = [self._rule("watch_out", 'oif "lo" return')]
        if self.tracking:
            rules += [
                self._rule(
                    "watch_out", f"ct direction original update @peers_v{v} {{ {protocol} daddr }}"
                )
                for v, protocol, _ in FAMILIES
            ]
        return rules

    def _mark_rules(self) -> list[str]:
        """Each update of the mark in a rule of its own: a packet may be client and peer."""
        rules = [self._rule("watch_mark", f"meta mark set meta mark & {_KEEP:#010x}")]
        verdicts = ((MARK_CLIENT, self.client_matches()), (MARK_PEER, self.peer_matches()))
        for bit, matches in verdicts:
            rules += [
                self._rule("watch_mark", f"{match} meta mark set meta mark | {bit:#010x}")
                for match in matches
            ]
        return rules


def _by_version(addresses: Iterable[IPAddress]) -> dict[int, list[str]]:
    """Set keys per IP version, sorted, without IPv6 scopes (`fe80::1%eth0` is `fe80::1`):
    the kernel's sets hold none."""
    keys = {ipaddress.ip_address(address.packed) for address in addresses}
    found: dict[int, list[str]] = {4: [], 6: []}
    for address in sorted(keys, key=lambda a: (a.version, int(a))):
        found[address.version].append(address.compressed)
    return found
