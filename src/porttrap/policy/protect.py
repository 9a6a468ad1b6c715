"""Who is never banned: the allow list, the host's own addresses, loopback and the peers of
live SSH sessions to the host (its admin); and who is never banned on evidence that can be
forged: the host's gateways and link-local neighbours (the other peers of the host, the
destinations of its own flows, are known to the kernel's rules, which flag their packets)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from porttrap.model import IPAddress, IPNetwork, Outcome, as_network

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))

_LOOPBACK_V4 = 127  # 127.0.0.0/8, by its first 8 bits
_LINK_LOCAL_V4 = 0xA9FE  # 169.254.0.0/16, by its first 16 bits
_LINK_LOCAL_V6 = 0x3FA  # fe80::/10, by its first 10 bits
_MAPPED = 0xFFFF  # ::ffff:0:0/96, IPv4-mapped addresses, by their first 96 bits


class Protection:
    """Answers 'may this address or network be banned?' with the reason when it may not.

    `patterns` are regular expressions matched against the whole text of an address (port_trap's
    whitelist entries that are not exact networks); they protect single addresses only, so a
    network ban is never refused for them.
    """

    def __init__(
        self,
        allow: Iterable[IPNetwork],
        own: Iterable[IPAddress] = (),
        patterns: Iterable[str] = (),
    ) -> None:
        self._allow = tuple(allow)
        self._own: frozenset[IPAddress] = frozenset(own)
        self._patterns = tuple(re.compile(pattern) for pattern in patterns)
        self._gateways: frozenset[IPAddress] = frozenset()
        self._sessions: frozenset[IPAddress] = frozenset()
        self._clients: frozenset[IPAddress] = frozenset()
        self._guarded: frozenset[IPAddress] = self._own  # own, sessions and gateways: `free`

    @property
    def own(self) -> frozenset[IPAddress]:
        return self._own

    def set_own(self, own: Iterable[IPAddress]) -> None:
        self._own = frozenset(own)
        self._guard()

    @property
    def sessions(self) -> frozenset[IPAddress]:
        return self._sessions

    def set_sessions(self, peers: Iterable[IPAddress]) -> None:
        """The peers of the live SSH sessions to this host: never banned by anything."""
        self._sessions = frozenset(peers)
        self._guard()

    @property
    def gateways(self) -> frozenset[IPAddress]:
        return self._gateways

    def set_gateways(self, gateways: Iterable[IPAddress]) -> None:
        """The host's gateways and next hops (its routes): a forged probe in their name must
        not cut the host's routing."""
        self._gateways = frozenset(gateways)
        self._guard()

    @property
    def clients(self) -> frozenset[IPAddress]:
        return self._clients

    def set_clients(self, clients: Iterable[IPAddress]) -> None:
        """The peers of the host's established connections (its live clients): a prefix ban
        leaves them out (a single-address ban of one of them still needs its own hits)."""
        self._clients = frozenset(clients)

    def take_peers(self, other: Protection) -> None:
        """Carry what the protection this one replaces learnt while running (a reload): the
        gateways, sessions and live clients."""
        self._gateways, self._sessions = other._gateways, other._sessions
        self._clients = other._clients
        self._guard()

    def _guard(self) -> None:
        self._guarded = self._own | self._sessions | self._gateways

    def free(self, address: IPAddress) -> bool:
        """True when nothing here protects `address`, nor makes it a peer: the question
        `conflict` and `peer_in` answer (False when either would object), asked in one go for
        a single address (a host joining a fleet asks it 100,000 times). False for an
        IPv4-mapped address (never one in a ban: targets are unmapped first), whose loopback and
        link-local answers differ between Python versions: the full checks decide."""
        number = int(address)
        if address.version == 4:
            if number >> 24 == _LOOPBACK_V4 or number >> 16 == _LINK_LOCAL_V4:
                return False
        elif number == 1 or number >> 118 == _LINK_LOCAL_V6 or number >> 32 == _MAPPED:
            return False
        if address in self._guarded:
            return False
        if self._allow and any(address in net for net in self._allow):
            return False
        return not self._patterns or not any(p.fullmatch(str(address)) for p in self._patterns)

    def inside(self, prefix: IPNetwork) -> list[tuple[IPNetwork, str]]:
        """Every protected address or network that overlaps `prefix`, with what it is: what a
        prefix ban must leave out. The allow list's patterns protect single addresses that
        match them, which no prefix lists: they are not looked at (as for network bans)."""
        found = [(net, "loopback") for net in _LOOPBACK if net.overlaps(prefix)]
        found += [(net, "link-local") for net in _LINK_LOCAL if net.overlaps(prefix)]
        found += [(net, "allow list") for net in self._allow if net.overlaps(prefix)]
        for what, addresses in (
            ("address of this host", self._own),
            ("SSH session peer", self._sessions),
            ("gateway", self._gateways),
            ("live client", self._clients),
        ):
            found += [(as_network(a), what) for a in addresses if a in prefix]
        return found

    def peer(self, address: IPAddress) -> bool:
        """A peer the daemon knows of: a gateway, or a link-local address (a neighbour on the
        link: the IPv6 next hop is one)."""
        return address.is_link_local or address in self._gateways

    def peer_in(self, target: IPNetwork) -> IPAddress | None:
        """A gateway or link-local address inside `target` (a network or one address)."""
        if target.prefixlen == target.max_prefixlen:
            address = target.network_address
            return address if self.peer(address) else None
        if target.network_address.is_link_local:
            return target.network_address
        return next((a for a in sorted(self._gateways, key=str) if a in target), None)

    def allowed(self, address: IPAddress) -> bool:
        """On the allow list, or loopback (the host's own addresses are not checked here)."""
        return address.is_loopback or self._listed(address)

    def _listed(self, address: IPAddress) -> bool:
        if any(address in net for net in self._allow):
            return True
        if not self._patterns:
            return False
        text = str(address)
        return any(pattern.fullmatch(text) for pattern in self._patterns)

    def outcome_for(self, address: IPAddress) -> Outcome | None:
        """ALLOWED, OWN_ADDRESS or SESSION when `address` must never be banned, else None."""
        if address.is_loopback or address in self._own:
            return Outcome.OWN_ADDRESS
        if self._listed(address):
            return Outcome.ALLOWED
        if address in self._sessions:
            return Outcome.SESSION
        return None

    def aimed_elsewhere(self, local: IPAddress) -> bool:
        """True for a broadcast or multicast destination (LAN chatter that reached a UDP
        trap bound to every address): such a datagram was not aimed at this host."""
        if local.is_multicast or str(local) == "255.255.255.255":
            return True
        return bool(self._own) and local not in self._own

    def conflict(self, target: IPNetwork) -> str | None:
        """Why banning `target` would hit a protected address, or None when it is safe."""
        if target.prefixlen == target.max_prefixlen:
            return self._address_conflict(target.network_address)
        return self._network_conflict(target)

    def _address_conflict(self, address: IPAddress) -> str | None:
        outcome = self.outcome_for(address)
        if outcome is Outcome.OWN_ADDRESS:
            return f"{address} is an address of this host"
        if outcome is Outcome.ALLOWED:
            return f"{address} is on the allow list"
        if outcome is Outcome.SESSION:
            return f"{address} is the peer of a live SSH session to this host"
        return None

    def _network_conflict(self, target: IPNetwork) -> str | None:
        if target.is_loopback:
            return f"{target} is loopback"
        for own in sorted(self._own, key=str):
            if own.version == target.version and own in target:
                return f"{target} contains {own}, an address of this host"
        for net in self._allow:
            if net.version == target.version and target.overlaps(net):
                return f"{target} overlaps allow-list entry {net}"
        for peer in sorted(self._sessions, key=str):
            if peer.version == target.version and peer in target:
                return f"{target} contains {peer}, the peer of a live SSH session to this host"
        return None
