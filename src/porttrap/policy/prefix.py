"""Prefix bans: when the sources of a network scan, the network is banned (`[ban.prefix]`).

Three pure pieces the engine (`porttrap.policy.engine`) puts together:
- `source_unit`: what a source is counted and banned as: an IPv4 address, an IPv6 address or,
  with `v6_source` below 128, its IPv6 prefix (a scanner rotating addresses inside its /64 is
  one source);
- `Spread`: the sources banned within the window, per prefix of each allowed length; the
  `spread`-th distinct one inside a prefix bans it. The longest allowed length counts sources;
  each shorter one counts the distinct prefixes of the next longer length that hold evidence,
  so a ban grows to a shorter prefix only when the evidence spans several longer ones;
- `carve`: a prefix less the addresses the host protects, as the fewest CIDRs that cover the
  rest (`ipaddress.address_exclude`, then `collapse_addresses`), or None when that takes more
  than a bound.
A prefix ban's reason names the prefix and the sources that caused it (`prefix_reason`): the
bans list, the history, the report and the fleet all show it.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from porttrap.config.schema import PrefixPolicy
from porttrap.model import IPAddress, IPNetwork, decided_for, show

MAX_PREFIXES = 65_536  # prefixes with recent evidence held at once; the least recent go first
SHOWN_SOURCES = 3  # sources a reason names; the rest are counted
PREFIX_TAG = "prefix "


def source_unit(address: IPAddress, v6_source: int) -> IPNetwork:
    """What `address` counts and is banned as: itself, or its /`v6_source` (IPv6)."""
    if isinstance(address, IPv4Address) or v6_source >= 128:
        return ipaddress.ip_network(address)
    return IPv6Network((int(address) >> (128 - v6_source) << (128 - v6_source), v6_source))


def unit_key(address: IPAddress, v6_source: int) -> IPAddress:
    """The address that stands for `address`'s unit: the first of its prefix (IPv6)."""
    if isinstance(address, IPv4Address) or v6_source >= 128:
        return address
    return source_unit(address, v6_source).network_address


def prefix_reason(prefix: IPNetwork, sources: Sequence[IPNetwork], carved: int = 0) -> str:
    """'prefix 198.51.100.0/24 from 198.51.100.1, 198.51.100.2, 198.51.100.3': the prefix and
    the sources that banned it (the first few, then how many more); `carved`: how many
    protected addresses or networks were left out of it."""
    shown = ", ".join(show(s) for s in sources[:SHOWN_SOURCES])
    more = len(sources) - SHOWN_SOURCES
    tail = f" +{more} more" if more > 0 else ""
    cut = f" less {carved} protected" if carved else ""
    return f"{PREFIX_TAG}{show(prefix)}{cut} from {shown}{tail}"


def prefix_of(reason: str) -> IPNetwork | None:
    """The prefix a prefix ban's reason names (another host's too); None for other bans."""
    own = decided_for(reason)
    if not own.startswith(PREFIX_TAG):
        return None
    text = own[len(PREFIX_TAG) :].split(" ", 1)[0]
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        return None


def carve(
    prefix: IPNetwork, protected: Iterable[IPNetwork], limit: int
) -> tuple[IPNetwork, ...] | None:
    """`prefix` less every network in `protected`, as the fewest CIDRs; () when nothing is
    left, None when more than `limit` CIDRs would be needed."""
    rest: list[IPNetwork] = [prefix]
    for hole in protected:
        if hole.version != prefix.version or not hole.overlaps(prefix):
            continue
        rest = list(_without(rest, hole))
    pieces = tuple(_collapse(rest))
    return None if len(pieces) > limit else pieces


def _without(nets: Iterable[IPNetwork], hole: IPNetwork) -> Iterable[IPNetwork]:
    for net in nets:
        if not net.overlaps(hole):
            yield net
        elif net.prefixlen < hole.prefixlen:  # the hole is inside: the rest of net
            yield from net.address_exclude(hole)  # type: ignore[arg-type]
        # else net lies inside the hole: nothing of it is left


def _collapse(nets: list[IPNetwork]) -> Iterable[IPNetwork]:
    v4 = [n for n in nets if isinstance(n, IPv4Network)]
    v6 = [n for n in nets if isinstance(n, IPv6Network)]
    yield from ipaddress.collapse_addresses(v4)
    yield from ipaddress.collapse_addresses(v6)


@dataclass(frozen=True, slots=True)
class Evidence:
    """A prefix that the evidence bans, the sources inside it, and whether each of the
    `spread` counted ones rests on verified evidence."""

    prefix: IPNetwork
    sources: tuple[IPNetwork, ...]
    verified: bool


class Spread:
    """The sources banned within the window, per prefix of each allowed length: for each
    prefix, its units (a source, or a longer prefix holding evidence) with the time, the
    evidence and the latest source of each."""

    def __init__(self, policy: PrefixPolicy, limit: int = MAX_PREFIXES) -> None:
        self.policy = policy
        self.limit = limit
        self._prefixes: OrderedDict[IPNetwork, dict[IPNetwork, tuple[float, bool, IPNetwork]]]
        self._prefixes = OrderedDict()

    def __len__(self) -> int:
        return len(self._prefixes)

    def add(self, source: IPNetwork, at: float, verified: bool, horizon: float) -> Evidence | None:
        """Note the ban of `source` (a unit); the widest prefix it completes, if any."""
        spread = self.policy.spread
        if spread < 2:
            return None
        lengths = [n for n in self.policy.lengths(source.version) if n < source.prefixlen]
        found: Evidence | None = None
        for index, length in enumerate(lengths):
            unit = source if index == 0 else source.supernet(new_prefix=lengths[index - 1])
            units = self._of(source.supernet(new_prefix=length))
            units[unit] = (at, verified, source)
            for stale in [u for u, (when, _, _) in units.items() if when <= horizon]:
                del units[stale]
            if len(units) >= spread:
                found = self._evidence(source.supernet(new_prefix=length), units, spread)
        return found

    def clear(self, prefix: IPNetwork) -> None:
        """The prefix is banned: its evidence is spent (a new ban of it needs new sources)."""
        self._prefixes.pop(prefix, None)

    def _of(self, prefix: IPNetwork) -> dict[IPNetwork, tuple[float, bool, IPNetwork]]:
        prefixes = self._prefixes
        units = prefixes.get(prefix)
        if units is not None:
            prefixes.move_to_end(prefix)
            return units
        if len(prefixes) >= self.limit:
            prefixes.popitem(last=False)
        units = prefixes[prefix] = {}
        return units

    @staticmethod
    def _evidence(
        prefix: IPNetwork, units: dict[IPNetwork, tuple[float, bool, IPNetwork]], spread: int
    ) -> Evidence:
        held = sorted(units.values(), key=lambda u: u[0])
        sources = tuple(dict.fromkeys(source for _, _, source in held))
        verified = sum(1 for _, proven, _ in held if proven) >= spread
        return Evidence(prefix, sources, verified)


@dataclass(frozen=True, slots=True)
class Note:
    """Something about a prefix ban the log must say: `event` is "prefix-ban",
    "prefix-carved" or "prefix-refused"."""

    event: str
    prefix: IPNetwork
    why: str
