"""porttrap's nftables ruleset as nft commands, and the parse of what nft lists.

Pure: this module writes commands in nft's own syntax and reads nft's JSON listing;
`porttrap.firewall.nftables` runs them through `porttrap.firewall.kernel`. Everything lives in
one table of family `inet`: four sets (address/network x IPv4/IPv6), all with the timeout flag,
and one base chain that drops their members. A temporary ban is an element with a timeout; a
permanent ban is one without, which never expires.

Writes use nft's syntax rather than JSON because it is cheaper to build here and to parse in
libnftables (100,000 bans in about half the time, end to end). Every address in it comes from a
validated `ipaddress` object, so nothing needs quoting; a table name that is an nft keyword
(`ip`, `meta` ...) does not parse, and the backend says so.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from porttrap.firewall.base import KernelEntry
from porttrap.firewall.kernel import JsonCommand
from porttrap.firewall.nftsets import nft_time
from porttrap.firewall.plan import timeout_seconds
from porttrap.model import Ban, IPNetwork

FAMILY = "inet"
CHAIN = "prerouting"
PRIORITY = -350
PROBE_TIMEOUT = 1  # seconds: an element added only so that deleting it cannot fail


@dataclass(frozen=True, slots=True)
class BanSet:
    """One of porttrap's sets: `net` ones hold CIDR ranges (interval sets), the others single
    addresses. Each holds temporary bans (with a timeout) and permanent ones (without)."""

    version: int
    net: bool

    @property
    def name(self) -> str:
        return f"ban{'_net' if self.net else ''}_v{self.version}"

    @property
    def flags(self) -> list[str]:
        return ["interval", "timeout"] if self.net else ["timeout"]

    @property
    def protocol(self) -> str:
        return "ip" if self.version == 4 else "ip6"

    @property
    def type(self) -> str:
        return f"ipv{self.version}_addr"


SETS = tuple(BanSet(version, net) for version in (4, 6) for net in (False, True))
_BY_NAME = {ban_set.name: ban_set for ban_set in SETS}
_PLACES = {  # per target type: address family, full prefix length, address set, network set
    IPv4Network: (socket.AF_INET, 32, BanSet(4, net=False).name, BanSet(4, net=True).name),
    IPv6Network: (socket.AF_INET6, 128, BanSet(6, net=False).name, BanSet(6, net=True).name),
}


def place(target: IPNetwork) -> tuple[str, str]:
    """The set a ban on `target` goes in (/32 and /128 in the address sets) and `target` as
    nft's syntax writes a set key: ('ban_v4', '192.0.2.1'), ('ban_net_v6', '2001:db8::/48').
    Done in one go, with inet_ntop rather than str(), because it counts at 100,000 bans:
    str() of an IPv6 address costs about as much as nft's own work on the element."""
    family, full, single, net = _PLACES[type(target)]
    address = socket.inet_ntop(family, target.network_address.packed)
    prefixlen = target.prefixlen
    return (single, address) if prefixlen == full else (net, f"{address}/{prefixlen}")


def element(key: str, timeout: int | None) -> str:
    """A set element from its key (see `place`), with a timeout in seconds or none (permanent)."""
    return key if timeout is None else f"{key} timeout {nft_time(timeout)}"


class Ruleset:
    """The nft commands for porttrap's table `table` in family inet."""

    def __init__(self, table: str = "porttrap") -> None:
        self.table = table
        self._where = f"{FAMILY} {table}"

    def set_spec(self, name: str) -> JsonCommand:
        """Set `name` of the table as nft's JSON names it, to list it (and only it)."""
        return {"set": {"family": FAMILY, "table": self.table, "name": name}}

    def remove(self) -> list[str]:
        """Delete the table; adding it first makes the delete succeed when it is absent."""
        return [f"add table {self._where}", f"delete table {self._where}"]

    def replace(self, bans: Mapping[IPNetwork, Ban], now: float) -> list[str]:
        """One batch that replaces the whole table with one holding exactly `bans`."""
        commands = [*self.remove(), f"add table {self._where}"]
        commands += [self._set(ban_set) for ban_set in SETS]
        commands += [self.chain()]
        commands += [self._drop_rule(ban_set) for ban_set in SETS]
        final: dict[str, list[str]] = defaultdict(list)
        for target, ban in bans.items():
            name, key = place(target)
            final[name].append(element(key, timeout_seconds(ban, now)))
        return commands + self._elements("add", final)

    def update(
        self,
        states: Iterable[tuple[IPNetwork, Ban | None]],
        now: float,
        absent: AbstractSet[IPNetwork] = frozenset(),
    ) -> list[str]:
        """One batch that leaves each target in the state given (a ban, or nothing), each
        target once (`final_states(...).items()`).

        The kernel refuses to delete an element that is absent, and older kernels (Debian 12's
        6.1, say) keep the timeout of an element already present on `add`, or its lack of one.
        So each target is first added to its set with a short timeout, then deleted from it,
        then added again as it should be: three element operations per ban, two per unban.
        A target of `absent`, known to be in no ban set, is only added: one operation (a host
        joining a fleet adds 100,000 bans that way in a third of the time)."""
        keys: dict[str, list[str]] = defaultdict(list)
        final: dict[str, list[str]] = defaultdict(list)
        for target, ban in states:
            name, key = place(target)
            if ban is None or target not in absent:
                keys[name].append(key)
            if ban is not None:
                final[name].append(element(key, timeout_seconds(ban, now)))
        return [
            *self._elements("add", keys, each=f" timeout {PROBE_TIMEOUT}s"),
            *self._elements("delete", keys),
            *self._elements("add", final),
        ]

    def chain(self) -> str:
        """The base chain: `type filter hook prerouting priority -350; policy accept;`.

        Why this hook and priority: a drop verdict in any base chain is final for the packet,
        while an `accept` in another table only ends that table's chain. Prerouting at -350
        runs before conntrack (-200), before the raw tables (-300) and before DNAT, so a
        banned source is dropped for local and forwarded (e.g. container) traffic alike, and
        leaves no conntrack state behind."""
        return (
            f"add chain {self._where} {CHAIN} "
            f"{{ type filter hook prerouting priority {PRIORITY}; policy accept; }}"
        )

    def _set(self, ban_set: BanSet) -> str:
        flags = ",".join(ban_set.flags)
        return f"add set {self._where} {ban_set.name} {{ type {ban_set.type}; flags {flags}; }}"

    def _drop_rule(self, ban_set: BanSet) -> str:
        return f"add rule {self._where} {CHAIN} {ban_set.protocol} saddr @{ban_set.name} drop"

    def _elements(self, verb: str, groups: dict[str, list[str]], each: str = "") -> list[str]:
        """One command per set with all its elements, `each` after every one of them: far
        faster than one command per element."""
        return [
            f"{verb} element {self._where} {name} {{ {(each + ', ').join(elements)}{each} }}"
            for name, elements in groups.items()
        ]


def parse_entries(items: Iterable[JsonCommand]) -> list[KernelEntry]:
    """The bans in the output of `list set` (or `list table`): porttrap's ban sets only."""
    entries: list[KernelEntry] = []
    for item in items:
        spec = item.get("set")
        if spec is not None and spec.get("name") in _BY_NAME:
            for raw in spec.get("elem", []):
                entries += parse_element(raw)
    return entries


def parse_element(raw: Any) -> list[KernelEntry]:
    """One set element as nft's JSON writes it: '192.0.2.1', {"prefix": ...}, {"range": ...}
    or {"elem": {"val": ..., "timeout": 60, "expires": 42}}. Without a timeout (and so
    without "expires") it is permanent."""
    remaining = None
    if isinstance(raw, dict) and "elem" in raw:
        elem = raw["elem"]
        expires = elem.get("expires", elem.get("timeout"))
        remaining = None if expires is None else float(expires)
        raw = elem["val"]
    return [KernelEntry(target, remaining) for target in _targets(raw)]


def _targets(raw: Any) -> list[IPNetwork]:
    if isinstance(raw, str):
        return [ipaddress.ip_network(raw)]
    if "prefix" in raw:
        prefix = raw["prefix"]
        return [ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}")]
    if "range" in raw:
        first, last = (ipaddress.ip_address(bound) for bound in raw["range"])
        return list(ipaddress.summarize_address_range(first, last))
    raise ValueError(f"unexpected set element in nft's output: {raw!r}")
