"""The vocabulary every layer shares: hits, bans, unbans. Frozen values, no behaviour with I/O."""

from __future__ import annotations

import enum
import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from porttrap.units import MAX_BAN, time_problem

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class Proto(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class Outcome(enum.StrEnum):
    """What the policy made of one hit."""

    BANNED = "banned"  # this hit led to a ban
    COUNTED = "counted"  # below the trigger: remembered, no ban yet
    ALREADY_BANNED = "already-banned"  # source is banned already: nothing changes in the kernel
    ALLOWED = "allowed"  # source is on the allow list
    OWN_ADDRESS = "own-address"  # source is one of this host's addresses (or loopback)
    NOT_UNICAST = "not-unicast"  # a UDP broadcast/multicast: not aimed at this host, so no scan
    CLIENT = "client"  # a probe or datagram (forgeable) from a recent client: never bans
    PEER = "peer"  # a probe or datagram (forgeable) from a peer of the host: never bans
    SESSION = "session"  # from the peer of a live SSH session to this host: never bans
    HELD = "held-back"  # would have banned on forgeable evidence, over the budget for that
    LOGGED = "logged"  # would have banned, but the protocol responds with "log" ([ban] respond)
    # Not a trap hit: a SYN to a served port, held (`[kernel] hold`) and dropped because its
    # source touched a trap meanwhile; the service was never revealed to it.
    HIDDEN = "hidden"


@dataclass(frozen=True, slots=True)
class Hit:
    """One touch of a trap, as a sensor saw it. `at` is seconds since the epoch (UTC)."""

    at: float
    source: IPAddress
    source_port: int
    local: IPAddress
    port: int
    proto: Proto
    # How the trap was touched: "connect" (a TCP handshake), "udp" (a datagram), or the class
    # of a TCP probe the kernel saw: syn, fin, null, xmas, ack, maimon, "other FSRPAU".
    kind: str = "connect"
    # The kernel saw this source complete a connection to this host recently (any protocol).
    client: bool = False
    # The kernel saw this host talk to this source of its own accord (its resolver, a mirror).
    peer: bool = False

    @property
    def verified(self) -> bool:
        """Only a completed handshake proves the source address; anything else can be forged."""
        return self.kind == "connect"


class Evidence(enum.StrEnum):
    """What a ban rests on. Only a completed handshake (or an admin) proves who is banned: a
    probe or a datagram can carry any source address, so bans on such evidence are bounded."""

    VERIFIED = "verified"  # a completed TCP handshake to a trap, or an admin's ban
    UNVERIFIED = "unverified"  # probes or datagrams only, which a forger can send


@dataclass(frozen=True, slots=True)
class Ban:
    """Drop everything from `target` from `banned_at` until `expires_at` (None: for good)."""

    target: IPNetwork
    banned_at: float
    expires_at: float | None
    ban_count: int
    reason: str
    evidence: Evidence = Evidence.VERIFIED

    @property
    def verified(self) -> bool:
        return self.evidence is Evidence.VERIFIED

    @property
    def permanent(self) -> bool:
        return self.expires_at is None

    def active(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now

    def remaining(self, now: float) -> float | None:
        """Seconds left, or None when permanent."""
        return None if self.expires_at is None else max(0.0, self.expires_at - now)


def ban_problem(banned_at: float, expires_at: float | None) -> str | None:
    """What is wrong with a ban's times as read from outside the daemon (its database, another
    host, an import), None when nothing: each a time from 1970 to 2106, and the ban no longer
    than `MAX_BAN`. Inside those bounds every backend holds the ban and every date shows."""
    if (problem := time_problem(banned_at)) is not None:
        return f"banned_at {problem}"
    if expires_at is None:
        return None
    if (problem := time_problem(expires_at)) is not None:
        return f"expires_at {problem}"
    if not expires_at - banned_at <= MAX_BAN.seconds:
        return MAX_BAN.refusal(f"a ban of {round(expires_at - banned_at)} s")
    return None


@dataclass(frozen=True, slots=True)
class Unban:
    """Lift every ban on `target` now."""

    target: IPNetwork
    at: float
    reason: str


Change = Ban | Unban


@dataclass(frozen=True, slots=True)
class StoredBan:
    """A ban as recorded, with how it ended if it was lifted early."""

    ban: Ban
    lifted_at: float | None = None
    lifted_reason: str | None = None


@dataclass(frozen=True, slots=True)
class BoundTrap:
    """A trap socket that is listening. `address` as bound: "0.0.0.0", "::" or one address."""

    proto: Proto
    port: int
    address: str


@dataclass(frozen=True, slots=True)
class SkippedTrap:
    """A trap socket that could not be bound, why, and who holds the port when known."""

    proto: Proto
    port: int
    address: str
    reason: str
    holder: str | None = None  # "sshd pid=123"


@dataclass(frozen=True)
class TrapReport:
    """What the socket traps managed to set. The daemon decides what to do with none set."""

    set: list[BoundTrap] = field(default_factory=list)
    skipped: list[SkippedTrap] = field(default_factory=list)

    @property
    def none_set(self) -> bool:
        return not self.set


def trap_reason(proto: Proto, port: int) -> str:
    """The reason of a ban a trap caused: 'trap:tcp/23'."""
    return f"trap:{proto}/{port}"


@functools.lru_cache(maxsize=4096)  # a few reasons, met once per ban (100,000 on a catch-up)
def trapped_by(reason: str) -> tuple[Proto, int] | None:
    """The (protocol, port) of a trap ban's reason; None for any other reason (an admin's)."""
    kind, _, where = reason.partition(":")
    proto, _, port = where.partition("/")
    if kind != "trap" or proto not in ("tcp", "udp") or not port.isdigit():
        return None
    return Proto(proto), int(port)


FLEET_TAG = " (fleet: "  # a ban adopted from another host: its reason, then " (fleet: web-1)"


def fleet_reason(reason: str, origin: str) -> str:
    """The reason of a ban adopted from host `origin`: its own, and where it came from."""
    return f"{reason}{FLEET_TAG}{origin})"


def fleet_origin(reason: str) -> str | None:
    """The host a ban was adopted from (`fleet_reason`), None for this host's own bans."""
    head, tag, tail = reason.rpartition(FLEET_TAG)
    return tail[:-1] if tag and tail.endswith(")") and head else None


def decided_for(reason: str) -> str:
    """A ban's reason as the host that decided it gave it (without `fleet_reason`'s tag)."""
    head, tag, tail = reason.rpartition(FLEET_TAG)
    return head if tag and tail.endswith(")") and head else reason


class FleetKind(enum.StrEnum):
    """What a row of the fleet's shared log says."""

    BAN = "ban"
    UNBAN = "unban"  # its host's admin lifted its ban: the copies of that ban go
    UNBAN_FLEET = "unban-fleet"  # an admin lifted every ban on the target, on every host


@dataclass(frozen=True, slots=True)
class FleetEntry:
    """One row of the fleet's shared log, checked (`porttrap.fleet.rows`): host `host` banned
    `target` (`ban`), or lifted bans on it. `id` orders the log."""

    id: int
    host: str
    kind: FleetKind
    target: IPNetwork
    ban: Ban | None = None  # for FleetKind.BAN


def as_network(address: IPAddress | IPNetwork) -> IPNetwork:
    """A single address as a /32 or /128 network; networks unchanged."""
    if isinstance(address, IPv4Network | IPv6Network):
        return address
    return ipaddress.ip_network(address)


def unmap(address: IPAddress) -> IPAddress:
    """::ffff:192.0.2.1 (an IPv4 peer on a dual-stack socket) as 192.0.2.1."""
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def unmap_network(network: IPNetwork) -> IPNetwork:
    """::ffff:192.0.2.0/120 as 192.0.2.0/24, ::ffff:192.0.2.1 as 192.0.2.1; others unchanged.
    An IPv4 host's packets reach the firewall as IPv4, never in the mapped form that `ss` and
    dual-stack sockets show: a mapped address in a ban or the allow list would match nothing,
    so every address that enters (config, CLI, control socket, imports, rows) goes through here."""
    first = int(network.network_address)
    if network.version == 6 and network.prefixlen >= 96 and first >> 32 == 0xFFFF:
        return IPv4Network((first & 0xFFFFFFFF, network.prefixlen - 96))
    return network


MAPPED_WIDEST = 104  # ::ffff:0:0/104, an IPv4 /8: the widest mapped network taken as written


def unmap_written(network: IPNetwork) -> IPNetwork:
    """`unmap_network` for what a person wrote (config, CLI, control socket): ValueError for a
    mapped network wider than an IPv4 /8, which would silently name a large part of IPv4
    (`::ffff:0:0/96` is all of it) where the writer most likely meant an IPv6 network."""
    unmapped = unmap_network(network)
    if unmapped.version == 4 and network.version == 6 and network.prefixlen < MAPPED_WIDEST:
        raise ValueError(
            f"{network} is an IPv4-mapped network, all of {unmapped} in IPv4 (the kernel sees "
            f"IPv4 hosts as IPv4): write {unmapped} if that is meant"
        )
    return unmapped


def show(target: IPNetwork) -> str:
    """A ban target as people write it: a plain address for /32 and /128, CIDR otherwise."""
    if target.prefixlen == target.max_prefixlen:
        return str(target.network_address)
    return str(target)


def single_network(text: str) -> IPNetwork | None:
    """A plain address as a /32 or /128, twice as fast as ip_network (which parses in Python):
    restoring or banning 100,000 addresses is mostly this. None: not a plain address."""
    try:
        if ":" in text:
            return IPv6Network(socket.inet_pton(socket.AF_INET6, text))
        return IPv4Network(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        return None


def parse_target(text: str) -> IPNetwork:
    """'198.51.100.7', '2001:db8::/48' ... as a network (an IPv4-mapped one as IPv4:
    `unmap_network`); ValueError says what is wrong."""
    text = text.strip()
    single = single_network(text)
    if single is not None:
        return unmap_network(single)
    try:
        written = ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    else:
        return unmap_written(written)
    try:
        fixed = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4/IPv6 address or network") from None
    raise ValueError(f"{text!r} has host bits set: did you mean {fixed}?")
