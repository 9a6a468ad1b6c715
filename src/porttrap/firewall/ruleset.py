"""porttrap's nftables ruleset as libnftables JSON commands, and the parse of what nft lists.

Pure: this module builds and reads JSON; `porttrap.firewall.nftables` runs it through
`porttrap.firewall.kernel`. Everything lives in one table of family `inet`: eight sets
(temporary/permanent x address/network x IPv4/IPv6) and one base chain that drops their
members.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from porttrap.firewall.base import KernelEntry
from porttrap.firewall.kernel import JsonCommand
from porttrap.firewall.plan import timeout_seconds
from porttrap.model import Ban, IPNetwork

FAMILY = "inet"
CHAIN = "prerouting"
PRIORITY = -350
PROBE_TIMEOUT = 1  # seconds: an element added only so that deleting it cannot fail


@dataclass(frozen=True, slots=True)
class BanSet:
    """One of porttrap's sets: `net` ones hold CIDR ranges (interval sets), the others single
    addresses; `permanent` ones have no timeouts."""

    version: int
    net: bool
    permanent: bool

    @property
    def name(self) -> str:
        kind = "permanent" if self.permanent else "ban"
        return f"{kind}{'_net' if self.net else ''}_v{self.version}"

    @property
    def flags(self) -> list[str]:
        flags = ["interval"] if self.net else []
        return flags if self.permanent else [*flags, "timeout"]

    @property
    def protocol(self) -> str:
        return "ip" if self.version == 4 else "ip6"

    @property
    def type(self) -> str:
        return f"ipv{self.version}_addr"


SETS = tuple(
    BanSet(version, net, permanent)
    for version in (4, 6)
    for net in (False, True)
    for permanent in (False, True)
)
_BY_NAME = {ban_set.name: ban_set for ban_set in SETS}
_NAMES = {(ban_set.version, ban_set.net, ban_set.permanent): ban_set.name for ban_set in SETS}


def set_name(target: IPNetwork, permanent: bool) -> str:
    """The set a ban on `target` goes in: /32 and /128 in the address sets."""
    return _NAMES[target.version, target.prefixlen != target.max_prefixlen, permanent]


def value(target: IPNetwork) -> str | dict[str, Any]:
    """`target` as nft's JSON writes a set key."""
    address = str(target.network_address)
    if target.prefixlen == target.max_prefixlen:
        return address
    return {"prefix": {"addr": address, "len": target.prefixlen}}


def element(key: str | dict[str, Any], timeout: int | None) -> Any:
    """A set element from its key (see `value`), with a timeout in seconds or none."""
    return key if timeout is None else {"elem": {"val": key, "timeout": timeout}}


class Ruleset:
    """The JSON commands for porttrap's table `table` in family inet."""

    def __init__(self, table: str = "porttrap") -> None:
        self.table = table
        self._where = {"family": FAMILY, "table": table}

    def table_spec(self) -> JsonCommand:
        return {"table": {"family": FAMILY, "name": self.table}}

    def remove(self) -> list[JsonCommand]:
        """Delete the table; adding it first makes the delete succeed when it is absent."""
        return [{"add": self.table_spec()}, {"delete": self.table_spec()}]

    def replace(self, bans: Mapping[IPNetwork, Ban], now: float) -> list[JsonCommand]:
        """One batch that replaces the whole table with one holding exactly `bans`."""
        commands = [*self.remove(), {"add": self.table_spec()}]
        commands += [{"add": {"set": self._set_spec(ban_set)}} for ban_set in SETS]
        commands += [{"add": {"chain": self.chain()}}]
        commands += [{"add": {"rule": self._drop_rule(ban_set)}} for ban_set in SETS]
        final: dict[str, list[Any]] = defaultdict(list)
        for target, ban in bans.items():
            name = set_name(target, ban.permanent)
            final[name].append(element(value(target), timeout_seconds(ban, now)))
        return commands + self._element_commands("add", final)

    def update(self, states: Mapping[IPNetwork, Ban | None], now: float) -> list[JsonCommand]:
        """One batch that leaves each target in the state given (a ban, or nothing).

        The kernel refuses to delete an element that is absent, and older kernels (Debian 12's
        6.1, say) keep the timeout of an element already present on `add`. So each target
        is first added to both its sets (with a short timeout), then deleted from them, then
        added where it belongs: five element operations per ban, four per unban."""
        probe: dict[str, list[Any]] = defaultdict(list)
        delete: dict[str, list[Any]] = defaultdict(list)
        final: dict[str, list[Any]] = defaultdict(list)
        for target, ban in states.items():
            key = value(target)
            temporary, permanent = set_name(target, False), set_name(target, True)
            probe[temporary].append(element(key, PROBE_TIMEOUT))
            probe[permanent].append(key)
            delete[temporary].append(key)
            delete[permanent].append(key)
            if ban is not None:
                final[permanent if ban.permanent else temporary].append(
                    element(key, timeout_seconds(ban, now))
                )
        return [
            *self._element_commands("add", probe),
            *self._element_commands("delete", delete),
            *self._element_commands("add", final),
        ]

    def chain(self) -> JsonCommand:
        """The base chain: `type filter hook prerouting priority -350; policy accept;`.

        Why this hook and priority: a drop verdict in any base chain is final for the packet,
        while an `accept` in another table only ends that table's chain. Prerouting at -350
        runs before conntrack (-200), before the raw tables (-300) and before DNAT, so a
        banned source is dropped for local and forwarded (e.g. container) traffic alike, and
        leaves no conntrack state behind."""
        return {
            **self._where,
            "name": CHAIN,
            "type": "filter",
            "hook": "prerouting",
            "prio": PRIORITY,
            "policy": "accept",
        }

    def _set_spec(self, ban_set: BanSet) -> JsonCommand:
        spec: JsonCommand = {**self._where, "name": ban_set.name, "type": ban_set.type}
        return {**spec, "flags": ban_set.flags} if ban_set.flags else spec

    def _drop_rule(self, ban_set: BanSet) -> JsonCommand:
        source = {"payload": {"protocol": ban_set.protocol, "field": "saddr"}}
        match = {"op": "==", "left": source, "right": f"@{ban_set.name}"}
        return {**self._where, "chain": CHAIN, "expr": [{"match": match}, {"drop": None}]}

    def _element_commands(self, verb: str, groups: dict[str, list[Any]]) -> list[JsonCommand]:
        """One command per set with all its elements: far faster than one per element."""
        return [
            {verb: {"element": {**self._where, "name": name, "elem": elems}}}
            for name, elems in groups.items()
        ]


def parse_entries(items: Iterable[JsonCommand]) -> list[KernelEntry]:
    """The bans in the output of `list table` (porttrap's sets only; other objects ignored)."""
    entries: list[KernelEntry] = []
    for item in items:
        spec = item.get("set")
        if spec is not None and spec.get("name") in _BY_NAME:
            for raw in spec.get("elem", []):
                entries += parse_element(raw)
    return entries


def parse_element(raw: Any) -> list[KernelEntry]:
    """One set element as nft's JSON writes it: '192.0.2.1', {"prefix": ...}, {"range": ...}
    or {"elem": {"val": ..., "timeout": 60, "expires": 42}}."""
    remaining = None
    if isinstance(raw, dict) and "elem" in raw:
        expires = raw["elem"].get("expires")
        remaining = None if expires is None else float(expires)
        raw = raw["elem"]["val"]
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
