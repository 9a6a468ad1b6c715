"""porttrap's ipset sets and iptables chain as restore scripts, and the parse of what ipset and
iptables list. Pure: `porttrap.firewall.ipset` runs these through `porttrap.firewall.exec`.

What porttrap owns, for `[firewall] table = "porttrap"`:

* ipset sets `porttrap_v4` and `porttrap_v6`: `hash:net` with the timeout extension and a default
  timeout of 0, so an element added with `timeout N` expires after N seconds and one added with
  `timeout 0` never does (a permanent ban). `hash:net` holds single addresses (/32, /128) and
  networks alike. While `setup` fills new contents, they live in `porttrap_v4_tmp` and
  `porttrap_v6_tmp`, which are swapped in and destroyed.
* a chain `porttrap` in the `raw` table of iptables and of ip6tables, holding one rule that drops
  sources in the family's set, and a jump to it at position 1 of `raw PREROUTING`.
* with the watch (every mode the daemon runs), the sets and chains of
  `porttrap.firewall.ipset_watch`, which also take their names from `Names`.

Why raw PREROUTING, first: it is the earliest hook iptables has (before conntrack, mangle, nat
and filter), so a banned source is dropped for local and forwarded traffic alike and leaves no
conntrack state; a DROP there is final, and an ACCEPT in a later table (`iptables -I INPUT 1
-j ACCEPT`) never sees the packet. Only a rule earlier in raw PREROUTING itself could let it
through, which is why the jump is first and the backend reports it missing otherwise.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

from porttrap.errors import FirewallError
from porttrap.firewall.base import KernelEntry
from porttrap.model import IPNetwork, single_network

# ipset keeps timeouts in milliseconds in 32 bits: 2,147,483 s (24.8 days) is the longest.
MAX_TIMEOUT = 2_147_483
# A cap on elements per set, not an allocation: hash sets grow with what they hold.
MAXELEM = 1 << 24
MIN_HASHSIZE = 1024
SET_NAME_MAX = 31  # IPSET_MAXNAMELEN - 1
CHAIN_NAME_MAX = 28  # XT_EXTENSION_MAXNAMELEN - 1, iptables' limit on chain names
TMP_SUFFIX = "_tmp"
TABLE = "raw"
HOOK = "PREROUTING"
_ERROR_LINE = re.compile(r"Error in line (\d+):")


@dataclass(frozen=True, slots=True)
class Family:
    """One IP family: its ipset family and its iptables programs."""

    version: int
    ipset_family: str
    iptables: str

    @property
    def restore(self) -> str:
        return f"{self.iptables}-restore"


FAMILIES = (Family(4, "inet", "iptables"), Family(6, "inet6", "ip6tables"))


@dataclass(frozen=True, slots=True)
class Names:
    """The names porttrap's objects take from `[firewall] table`: its sets (ipset's names are
    global to the network namespace, so each starts with the table) and its chains (the raw
    table's is the table's name; the watch's in the security table add a suffix)."""

    table: str

    def __post_init__(self) -> None:
        longest = max(self.owned_sets(), key=len)  # chains take shorter suffixes than sets
        if len(longest) > SET_NAME_MAX or any(len(c) > CHAIN_NAME_MAX for c in self.chains()):
            most = SET_NAME_MAX - len(longest) + len(self.table)
            raise FirewallError(
                f"[firewall] table {self.table!r} is too long for the ipset backend: its set "
                f"{longest!r} must fit ipset's {SET_NAME_MAX} characters; use at most {most} "
                'characters, e.g. table = "porttrap"'
            )

    @property
    def chain(self) -> str:
        return self.table

    def set(self, family: Family) -> str:
        return f"{self.table}_v{family.version}"

    def tmp_set(self, family: Family) -> str:
        return self.set(family) + TMP_SUFFIX

    # -- the watch's (porttrap.firewall.ipset_watch) -------------------------------------

    def clients(self, family: Family) -> str:
        return f"{self.table}_clients_v{family.version}"

    def peers(self, family: Family) -> str:
        return f"{self.table}_peers_v{family.version}"

    def gateways(self, family: Family) -> str:
        return f"{self.table}_gateways_v{family.version}"

    @property
    def connect_udp(self) -> str:
        return f"{self.table}_connect_udp"

    @property
    def watch_tmp(self) -> str:
        """The one temporary set the watch's sets are each filled in before their swap."""
        return self.table + TMP_SUFFIX

    @property
    def watch_in(self) -> str:
        return f"{self.table}_in"

    @property
    def watch_out(self) -> str:
        return f"{self.table}_out"

    @property
    def watch_mark(self) -> str:
        return f"{self.table}_mark"

    def watch_sets(self) -> list[str]:
        """The watch's live sets (without the temporary one)."""
        per_family = [
            name for f in FAMILIES for name in (self.clients(f), self.peers(f), self.gateways(f))
        ]
        return [*per_family, self.connect_udp]

    def watch_chains(self) -> list[str]:
        """The watch's chains in the security table, the jumped-to ones first."""
        return [self.watch_in, self.watch_out, self.watch_mark]

    def chains(self) -> list[str]:
        """Every chain porttrap may have made, in any table."""
        return [self.chain, *self.watch_chains()]

    def owned_sets(self) -> list[str]:
        """Every set name porttrap may have made, live and temporary."""
        bans = [name for f in FAMILIES for name in (self.set(f), self.tmp_set(f))]
        return [*bans, *self.watch_sets(), self.watch_tmp]

    def jump(self) -> str:
        """The jump rule as `iptables -S` prints it."""
        return f"-A {HOOK} -j {self.chain}"

    def drop(self, family: Family) -> str:
        """The chain's one rule as `iptables -S` prints it."""
        return f"-A {self.chain} -m set --match-set {self.set(family)} src -j DROP"


# -- elements ------------------------------------------------------------------------------


def family_of(target: IPNetwork) -> Family:
    return FAMILIES[0] if isinstance(target, IPv4Network) else FAMILIES[1]


def key(target: IPNetwork) -> str:
    """`target` as ipset writes an element: '192.0.2.7' for a /32, '2001:db8::/48' for a
    network. inet_ntop rather than str(): it counts at 100,000 bans (see ruleset.place)."""
    family = socket.AF_INET if isinstance(target, IPv4Network) else socket.AF_INET6
    address = socket.inet_ntop(family, target.network_address.packed)
    return address if target.prefixlen == target.max_prefixlen else f"{address}/{target.prefixlen}"


def holdable(target: IPNetwork) -> bool:
    """hash:net takes prefixes from /1: a ban of every address (/0) cannot be an element."""
    return target.prefixlen > 0


@dataclass(frozen=True, slots=True)
class Element:
    """One element to add: a target with its `timeout` argument (0: never expires)."""

    target: IPNetwork
    timeout: int


# -- ipset restore scripts -----------------------------------------------------------------


def _create(name: str, family: Family, count: int) -> str:
    return (
        f"create {name} hash:net family {family.ipset_family} hashsize {hashsize(count)} "
        f"maxelem {MAXELEM} timeout 0"
    )


def hashsize(count: int) -> int:
    """Buckets for a set about to get `count` elements: a power of two, at least ipset's
    default 1024, and at least half of `count`. A hash set that starts small is rehashed
    each time a bucket fills up while it is filled: 100,000 bans went in about 40 % faster
    with 65,536 buckets than from 1,024 (bench/ipset_bulk.py)."""
    size = MIN_HASHSIZE
    while size * 2 < count:
        size *= 2
    return size


def _add(name: str, element: Element) -> str:
    return f"add {name} {key(element.target)} timeout {element.timeout}"


def setup_script(names: Names, existing: Iterable[str], elements: Iterable[Element]) -> str:
    """An `ipset restore` script that gives each live set exactly `elements`: new contents
    are filled in a temporary set, then swapped in with the live one in one kernel operation
    (renamed to it when there is none yet), so the live set is never half full."""
    have = set(existing)
    by_family: dict[int, list[Element]] = {f.version: [] for f in FAMILIES}
    for element in elements:
        by_family[family_of(element.target).version].append(element)
    lines: list[str] = []
    for family in FAMILIES:
        live, tmp = names.set(family), names.tmp_set(family)
        if tmp in have:
            lines.append(f"destroy {tmp}")
        lines.append(_create(tmp, family, len(by_family[family.version])))
        lines += [_add(tmp, element) for element in by_family[family.version]]
        swap = [f"swap {tmp} {live}", f"destroy {tmp}"]
        lines += swap if live in have else [f"rename {tmp} {live}"]
    return "\n".join(lines) + "\n"


def update_script(names: Names, states: Mapping[IPNetwork, Element | None]) -> str:
    """An `ipset -exist restore` script leaving each target as given: `-exist` makes adding
    a held element replace its timeout, and deleting an absent one succeed."""
    lines = []
    for target, element in states.items():
        name = names.set(family_of(target))
        lines.append(f"del {name} {key(target)}" if element is None else _add(name, element))
    return "\n".join(lines) + "\n" if lines else ""


def teardown_script(names: Names, existing: Iterable[str]) -> str:
    """An `ipset restore` script destroying every set of porttrap's that exists."""
    have = set(existing)
    return "".join(f"destroy {name}\n" for name in names.owned_sets() if name in have)


def error_line(stderr: str) -> int | None:
    """The script line `ipset restore` stopped at ('Error in line 3: ...'), if it says."""
    found = _ERROR_LINE.search(stderr)
    return int(found.group(1)) if found else None


# -- what ipset lists ----------------------------------------------------------------------


def parse_names(text: str) -> list[str]:
    """The output of `ipset list -n`: one set name a line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_save(text: str, sets: Sequence[str]) -> list[KernelEntry]:
    """The elements of `sets` in the output of `ipset save`: lines such as
    `add porttrap_v4 192.0.2.7 timeout 3599`; `timeout 0` is a permanent element. Other sets'
    lines, `create` lines and unknown extensions are ignored."""
    wanted = set(sets)
    entries: list[KernelEntry] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "add" and words[1] in wanted:
            entries.append(_entry(words[2], words[3:]))
    return entries


def _entry(value: str, extensions: list[str]) -> KernelEntry:
    target = single_network(value) or ipaddress.ip_network(value)
    remaining: float | None = None
    if "timeout" in extensions:
        seconds = int(extensions[extensions.index("timeout") + 1])
        remaining = float(seconds) if seconds > 0 else None
    return KernelEntry(target, remaining)


# -- iptables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing:
    """One table of one family as `iptables -t TABLE -S` prints it."""

    chains: frozenset[str]
    rules: tuple[str, ...]  # every `-A CHAIN ...` line, in order

    def chain_rules(self, chain: str) -> list[str]:
        return [rule for rule in self.rules if rule.startswith(f"-A {chain} ")]

    def first(self, hook: str) -> str | None:
        """The first rule of chain `hook`, None when it has none."""
        found = self.chain_rules(hook)
        return found[0] if found else None


def parse_listing(text: str) -> Listing:
    """`iptables -t TABLE -S`: `-P CHAIN POLICY`, `-N CHAIN` and `-A CHAIN RULE` lines."""
    chains: set[str] = set()
    rules: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("-P", "-N"):
            chains.add(words[1])
        elif words and words[0] == "-A":
            rules.append(" ".join(words))
    return Listing(frozenset(chains), tuple(rules))


def in_place(raw: Listing, names: Names, family: Family) -> bool:
    """Whether porttrap's chain exists, holds exactly its drop rule, and the jump to it is
    the first rule of raw PREROUTING (a rule before it could accept a banned source)."""
    return (
        names.chain in raw.chains
        and raw.chain_rules(names.chain) == [names.drop(family)]
        and raw.first(HOOK) == names.jump()
    )


def iptables_setup(raw: Listing, names: Names, family: Family) -> str:
    """An `iptables-restore --noflush` script (one transaction) that (re)makes porttrap's
    chain with its drop rule and moves the jump to position 1 of raw PREROUTING: every jump
    already there is deleted first, so there is exactly one. Declaring the chain creates it,
    or empties it when it exists."""
    lines = [
        f"*{TABLE}",
        f":{names.chain} - [0:0]",
        names.drop(family),
        *delete_jumps(raw, HOOK, names.chain),
        f"-I {HOOK} 1 -j {names.chain}",
        "COMMIT",
    ]
    return "\n".join(lines) + "\n"


def iptables_teardown(raw: Listing, names: Names) -> str:
    """An `iptables-restore --noflush` script removing the jumps and porttrap's chain; empty
    when the chain does not exist (nothing of porttrap's is there)."""
    if names.chain not in raw.chains:
        return ""
    lines = [f"*{TABLE}", *delete_jumps(raw, HOOK, names.chain)]
    lines += [f"-F {names.chain}", f"-X {names.chain}"]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def delete_jumps(listing: Listing, hook: str, chain: str) -> list[str]:
    """`-D` lines for every jump from `hook` to `chain` in `listing`."""
    jumps = sum(1 for rule in listing.chain_rules(hook) if rule == f"-A {hook} -j {chain}")
    return [f"-D {hook} -j {chain}"] * jumps


def parse_count(text: str) -> int:
    """`Number of entries: N` in `ipset list -t` (the header of one set); 0 when absent."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Number of entries" and value.strip().isdigit():
            return int(value.strip())
    return 0
