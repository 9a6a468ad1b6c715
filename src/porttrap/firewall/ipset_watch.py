"""The watch with the ipset backend: what `porttrap.firewall.watch_rules` does in porttrap's
nftables table, done with ipset sets and iptables/ip6tables chains of porttrap's own. It learns
who the host's recent clients and peers are and marks the UDP datagrams to connect-mode traps,
whose sockets read the mark (SO_RCVMARK): a client's or a peer's datagram, forgeable as it is,
never bans it. Pure: `porttrap.firewall.ipset` runs these scripts. For `table = "porttrap"`:

    ipset porttrap_clients_v4, _v6     hash:ip, timeout client_time, maxelem client_size
    ipset porttrap_peers_v4, _v6       the same
    ipset porttrap_gateways_v4, _v6    hash:ip: the host's gateways, kept by the daemon
    ipset porttrap_connect_udp         bitmap:port: the ports of connect-mode UDP traps

    security INPUT, first rule: -j porttrap_in
      porttrap_in    loopback                                     -> RETURN
                     conntrack ESTABLISHED, ASSURED, ORIGINAL     -> SET: source into clients
                     udp to @connect_udp                          -> porttrap_mark
      porttrap_mark  clear bits 0x30000, then OR in MARK_CLIENT when the source is a client,
                     MARK_PEER when it is link-local, a gateway or a peer
    security OUTPUT, first rule: -j porttrap_out
      porttrap_out   loopback                                     -> RETURN
                     conntrack ORIGINAL (the host opened the flow) -> SET: destination into peers

`-j SET --add-set ... --exist` adds an element with the set's timeout, or gives one already
there its full timeout again: every packet of a flow refreshes it, as nft's `update` does.

Why the security table. iptables has no hook priority of one's choosing; its tables on the
input hook run in a fixed order: mangle (-150), filter (0), security (50 with iptables-legacy,
150 with iptables-nft). The nftables watch marks late (priority 300) so that no other rule on
the way in sees porttrap's bits; in iptables the latest place is the security table, where the
MARK and SET targets are allowed (neither is restricted to a table, and the conntrack match
works in any), so it is used rather than mangle, whose INPUT runs before the filter rules. It
also learns clients and peers only from packets the filter let through, as the nftables watch
does. The jumps are the first rules of security INPUT and OUTPUT: an ACCEPT before them would
end the table for the packet, and its datagram would go unmarked; the backend's check (every
5 s) puts them back first. Rules after porttrap's jump in the security table (SELinux's
SECMARK rules live there) and nftables chains on the input hook after its priority do see the
bits; porttrap clears them first, so bits set before are never taken for its verdict.

`[kernel] client_time = 0` turns the tracking off: the sets stay empty and no rule refers to
them (link-local sources and gateways are still peers). ipset holds timeouts of at most
2,147,483 s (24.8 days): a longer client_time is held at that.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from porttrap.firewall.ipset_rules import (
    FAMILIES,
    MAX_TIMEOUT,
    Family,
    Listing,
    Names,
    delete_jumps,
)
from porttrap.firewall.watch_rules import LINK_LOCAL
from porttrap.model import IPAddress
from porttrap.sensorspec import MARK_CLIENT, MARK_MASK, MARK_PEER, SensorSpec

TABLE = "security"
HOOK_IN, HOOK_OUT = "INPUT", "OUTPUT"
PORTS = "1-65535"  # a bitmap:port set's range: every port a trap can have
ASSURED = "-m conntrack --ctstate ESTABLISHED --ctstatus ASSURED --ctdir ORIGINAL"


def client_timeout(client_time: float) -> int:
    """The clients' and peers' sets' timeout: `client_time` in whole seconds, at least 1 (a
    set's timeout 0 would keep elements for good) and at most what ipset can hold."""
    return max(1, min(math.ceil(client_time), MAX_TIMEOUT))


@dataclass(frozen=True, slots=True)
class IpsetWatch:
    """The watch's ipset and iptables scripts for porttrap's `names`, as `spec` says."""

    names: Names
    spec: SensorSpec

    @property
    def tracking(self) -> bool:
        return self.spec.kernel.client_time > 0

    # -- ipset ------------------------------------------------------------------------------

    def sets_script(
        self,
        existing: Iterable[str],
        gateways: Iterable[IPAddress],
        before: IpsetWatch | None = None,
    ) -> str:
        """`ipset restore` lines that give each of the watch's sets its create options and
        exactly its elements: each is filled in the temporary set, then swapped with the live
        one in one kernel operation, or renamed to it when there is none yet. The clients and
        peers start empty, as in a new nftables table, except that a set the setup `before`
        (this backend's last) made with the same options is kept with what it learned: a
        rebuild after a rule of someone else's got in the way forgets no client."""
        have = set(existing)
        kept = before.learned() if before is not None else {}
        tmp = self.names.watch_tmp
        lines = [f"destroy {tmp}"] if tmp in have else []
        for live, options, elements in self._sets(frozenset(gateways)):
            if elements is None and live in have and kept.get(live) == options:
                continue
            lines.append(f"create {tmp} {options}")
            lines += [f"add {tmp} {element}" for element in elements or ()]
            swap = [f"swap {tmp} {live}", f"destroy {tmp}"]
            lines += swap if live in have else [f"rename {tmp} {live}"]
        return "\n".join(lines) + "\n"

    def learned(self) -> dict[str, str]:
        """The sets filled from the packet path (clients, peers), with their create options."""
        return {name: options for name, options, elements in self._sets() if elements is None}

    def gateways_script(self, added: Iterable[IPAddress], removed: Iterable[IPAddress]) -> str:
        """`ipset -exist restore` lines for gateways that are new, or gone."""
        lines = []
        for verb, addresses in (("add", added), ("del", removed)):
            for address in _keys(addresses):
                name = self.names.gateways(FAMILIES[0] if address.version == 4 else FAMILIES[1])
                lines.append(f"{verb} {name} {address.compressed}")
        return "\n".join(lines) + "\n" if lines else ""

    def _sets(
        self, gateways: frozenset[IPAddress] = frozenset()
    ) -> Iterator[tuple[str, str, list[str] | None]]:
        """(name, create options, elements) of each of the watch's sets; None as elements:
        the packet path fills it."""
        timeout = client_timeout(self.spec.kernel.client_time)
        size = self.spec.kernel.client_size
        keys = _keys(gateways)
        for family in FAMILIES:
            tracked = f"hash:ip family {family.ipset_family} timeout {timeout} maxelem {size}"
            yield self.names.clients(family), tracked, None
            yield self.names.peers(family), tracked, None
            mine = [a.compressed for a in keys if a.version == family.version]
            yield self.names.gateways(family), f"hash:ip family {family.ipset_family}", mine
        ports = [str(port) for port in sorted(self.spec.connect_udp)]
        yield self.names.connect_udp, f"bitmap:port range {PORTS}", ports

    # -- iptables ---------------------------------------------------------------------------

    def rules(self, family: Family) -> dict[str, list[str]]:
        """The rules of each of the watch's chains, as `iptables -S` prints them."""
        names = self.names
        return {
            names.watch_in: self._in_rules(family),
            names.watch_out: self._out_rules(family),
            names.watch_mark: self._mark_rules(family),
        }

    def iptables_setup(self, security: Listing, family: Family) -> str:
        """An `iptables-restore --noflush` section (with its COMMIT) that (re)makes the
        watch's chains with their rules and puts the jumps to them first in security INPUT
        and OUTPUT, any earlier jump deleted. Declaring a chain creates or empties it."""
        chains = self.rules(family)
        lines = [f"*{TABLE}", *(f":{chain} - [0:0]" for chain in chains)]
        for chain_rules in chains.values():
            lines += chain_rules
        for hook, chain in self._hooks():
            lines += delete_jumps(security, hook, chain)
            lines.append(f"-I {hook} 1 -j {chain}")
        return "\n".join([*lines, "COMMIT"]) + "\n"

    def in_place(self, security: Listing, family: Family) -> bool:
        """Whether the watch's chains hold exactly their rules and the jumps to them are the
        first rules of security INPUT and OUTPUT."""
        chains = self.rules(family)
        return all(
            chain in security.chains and security.chain_rules(chain) == chain_rules
            for chain, chain_rules in chains.items()
        ) and all(security.first(hook) == f"-A {hook} -j {chain}" for hook, chain in self._hooks())

    def _hooks(self) -> list[tuple[str, str]]:
        return [(HOOK_IN, self.names.watch_in), (HOOK_OUT, self.names.watch_out)]

    def _in_rules(self, family: Family) -> list[str]:
        chain = self.names.watch_in
        found = [f"-A {chain} -i lo -j RETURN"]
        if self.tracking:
            clients = self.names.clients(family)
            found.append(f"-A {chain} {ASSURED} -j SET --add-set {clients} src --exist")
        if self.spec.connect_udp:
            udp = f"-p udp -m set --match-set {self.names.connect_udp} dst"
            found.append(f"-A {chain} {udp} -j {self.names.watch_mark}")
        return found

    def _out_rules(self, family: Family) -> list[str]:
        chain = self.names.watch_out
        found = [f"-A {chain} -o lo -j RETURN"]
        if self.tracking:
            peers = self.names.peers(family)
            found.append(
                f"-A {chain} -m conntrack --ctdir ORIGINAL -j SET --add-set {peers} dst --exist"
            )
        return found

    def _mark_rules(self, family: Family) -> list[str]:
        """Clear porttrap's two bits, then set each that applies, in a rule of its own: a
        source may be client and peer. `--set-xmark V/M` is how iptables prints both the
        clearing (`--and-mark`) and `--or-mark`."""
        chain = self.names.watch_mark
        clients = [self._source(self.names.clients(family))] if self.tracking else []
        peers = [f"-s {LINK_LOCAL[family.version]}", self._source(self.names.gateways(family))]
        if self.tracking:
            peers.append(self._source(self.names.peers(family)))
        found = [f"-A {chain} -j MARK --set-xmark 0x0/{MARK_MASK:#x}"]
        for bit, matches in ((MARK_CLIENT, clients), (MARK_PEER, peers)):
            found += [
                f"-A {chain} {match} -j MARK --set-xmark {bit:#x}/{bit:#x}" for match in matches
            ]
        return found

    @staticmethod
    def _source(name: str) -> str:
        return f"-m set --match-set {name} src"


def iptables_teardown(security: Listing, names: Names) -> str:
    """An `iptables-restore --noflush` section removing the jumps to the watch's chains and
    the chains (all emptied before any is deleted: one jumps to another); empty when none of
    them exists."""
    chains = [chain for chain in names.watch_chains() if chain in security.chains]
    if not chains:
        return ""
    lines = [f"*{TABLE}"]
    lines += delete_jumps(security, HOOK_IN, names.watch_in)
    lines += delete_jumps(security, HOOK_OUT, names.watch_out)
    lines += [f"-F {chain}" for chain in chains] + [f"-X {chain}" for chain in chains]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def sets_teardown(names: Names, existing: Iterable[str]) -> str:
    """An `ipset restore` script destroying the watch's sets that exist (after the rules that
    refer to them are gone)."""
    have = set(existing)
    return "".join(
        f"destroy {name}\n" for name in [*names.watch_sets(), names.watch_tmp] if name in have
    )


def _keys(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    """Sorted, without IPv6 scopes (`fe80::1%eth0` is `fe80::1`): the sets hold none."""
    keys = {ipaddress.ip_address(address.packed) for address in addresses}
    return sorted(keys, key=lambda a: (a.version, int(a)))
