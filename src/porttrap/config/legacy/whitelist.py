"""port_trap's whitelist.txt entries as porttrap allow-list entries.

port_trap checks each entry as a Python regular expression with `re.match`: anchored at the start
of the address text only, so `1.2.3.4` also lets 1.2.3.45 through, and `.` matches any character
(`:` too). An entry becomes CIDR networks only when they are proven to hold exactly the addresses
the pattern matches; otherwise it stays a pattern, rewritten for porttrap's `re.fullmatch`.

The proof walks the address space as a tree of address texts with the `regex` module's partial
matching. For a text T that begins the text of every address of a network N, and of no other:
- no match, not even a partial one: no address of N matches;
- a complete match within T: every address of N matches (the match never looked past T);
- a partial match: N's parts are looked at one by one (IPv4 octet by octet, IPv6 group by group
  and, within a group, hex digit by hex digit), down to single IPv4 addresses, decided by `re`.
This holds for patterns that never look ahead of their match: patterns with `$` (other than a
last one, which the walk handles by deciding single addresses), `\\b`, `\\B`, `\\Z`,
lookaheads, atomic groups or possessive quantifiers stay patterns. Each network decided
by a partial test is also checked with `re` itself on its first and last address, and the walk
gives up (the entry stays a pattern) beyond a budget of tests.

Scope: every IPv4 address, and IPv6 from 2000:: up (global, unique-local, link-local and
multicast addresses). Below 2000:: (0000::/3: loopback, IPv4-mapped, NAT64 and reserved space)
no trap hit ever comes from; a dotted pattern such as `12.34.56.*` does match texts there
(`12:34:56::1`, since `.` matches `:`), and `Converted.below_2000` says so for a note.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import regex

from porttrap.model import IPAddress, IPNetwork

BUDGET = 150_000  # pattern tests per entry: under a second (about 4 us each)
MAX_NETWORKS = 64  # more than this and the pattern is the clearer allow-list entry
# Pattern text that may look past the end of a match (conservative: `[$]` counts too), or
# that the `regex` module reads differently from `re` (POSIX classes such as [[:digit:]]).
_LOOKS_AHEAD = ("$", "\\b", "\\B", "\\Z", "(?=", "(?!", "(?>", "++", "*+", "?+", "}+", "[:", "[[")
_HEX = "0123456789abcdef"
_FLAGS = re.compile(r"\(\?[aiLmsux]+\)")


class _Verdict(enum.Enum):
    NONE = "no address matches"
    ALL = "every address matches"
    SOME = "look closer"


class _Unproven(Exception):
    """The walk cannot prove an exact set of networks; the message says why."""


@dataclass(frozen=True, slots=True)
class Converted:
    """One whitelist entry for porttrap. `networks` when proven exact (possibly none: the
    pattern matches no address); otherwise `pattern`, the entry for porttrap's fullmatch, and
    `why` the networks could not be proven."""

    networks: tuple[IPNetwork, ...] = ()
    pattern: str | None = None
    why: str = ""
    below_2000: bool = False  # the pattern also matches IPv6 texts below 2000::
    tests: int = 0  # pattern tests the walk spent (for an import's budget over all entries)


def check(pattern: str) -> list[str]:
    """Compile `pattern` as port_trap did (`re`); returns the warnings Python gives about it.
    Raises ValueError with re's message when it is not a valid regular expression."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"not a valid regular expression: {err}") from None
    return [str(w.message) for w in caught]


def convert(pattern: str, budget: int = BUDGET) -> Converted:
    """The exact networks `re.match(pattern, address_text)` holds, or the kept pattern.
    `pattern` must have passed `check`."""
    anchored = "|" not in pattern and _ends_with_dollar(pattern)
    checked = pattern[:-1] if anchored else pattern
    unsafe = next((text for text in _LOOKS_AHEAD if text in checked), None)
    if unsafe is not None:
        why = f"it contains {unsafe!r}, so whether it matches may depend on what follows"
        return _keep(pattern, why)
    walk = _Walk(pattern, budget, anchored)
    try:
        walk.ipv4(())
        walk.ipv6()
    except _Unproven as err:
        return _keep(pattern, str(err), tests=budget - max(walk.left, 0))
    networks = _collapse(walk.networks)
    spent = budget - walk.left
    if len(networks) > MAX_NETWORKS:
        return _keep(pattern, f"it matches {len(networks)} separate networks", tests=spent)
    return Converted(networks=networks, below_2000=walk.below_2000(), tests=spent)


def fullmatch_form(pattern: str) -> str:
    """A pattern P for porttrap's `re.fullmatch` that matches what `re.match(P)` matched:
    `(?:P).*`, with leading inline flags kept in front (Python refuses them elsewhere); P as it
    is when its matches already end at the end of the text (a last `$`, no alternation)."""
    flags = ""
    while match := _FLAGS.match(pattern):
        flags += match.group()
        pattern = pattern[match.end() :]
    if "|" not in pattern and _ends_with_dollar(pattern):
        return flags + pattern
    end = "\n" if "x" in flags else ""  # a verbose pattern's trailing comment must end
    return f"{flags}(?:{pattern}{end}).*"


def _ends_with_dollar(pattern: str) -> bool:
    backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
    return pattern.endswith("$") and backslashes % 2 == 0


def _keep(pattern: str, why: str, tests: int = 0) -> Converted:
    return Converted(pattern=fullmatch_form(pattern), why=why, tests=tests)


def _collapse(found: list[IPNetwork]) -> tuple[IPNetwork, ...]:
    v4 = ipaddress.collapse_addresses(n for n in found if isinstance(n, IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in found if isinstance(n, IPv6Network))
    return (*v4, *v6)


class _Walk:
    """One entry's walk over the address texts; collects the networks proven to match."""

    def __init__(self, pattern: str, budget: int, anchored: bool = False) -> None:
        self.full = re.compile(pattern)
        # A pattern ending in `$` only matches whole texts: a text the walk tests is always
        # followed by more, so its "complete" matches there (at the end of the test string)
        # prove nothing, and are looked at closer; its failures still hold.
        self.anchored = anchored
        try:
            self.partial = regex.compile(pattern)
        except regex.error as err:
            raise _Unproven(f"the regex module cannot read it ({err})") from None
        self.left = budget
        self.networks: list[IPNetwork] = []

    def _spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _Unproven("it matches too irregular a set of addresses to list as networks")

    def verdict(self, text: str) -> _Verdict:
        self._spend()
        found = self.partial.match(text, partial=True)
        if found is None:
            return _Verdict.NONE
        return _Verdict.SOME if found.partial or self.anchored else _Verdict.ALL

    def matches(self, text: str) -> bool:
        self._spend()
        return self.full.match(text) is not None

    def decided(self, first: IPAddress, last: IPAddress, verdict: _Verdict) -> None:
        """The range first..last matches entirely (ALL) or not at all (NONE): checked with
        `re` at both ends, then kept."""
        expected = verdict is _Verdict.ALL
        for address in (first, last):
            if self.matches(str(address)) != expected:
                raise _Unproven(f"the regex module and re disagree about {address}")
        if expected:
            self.networks.extend(ipaddress.summarize_address_range(first, last))

    # -- IPv4: "a." "a.b." "a.b.c." then single addresses --------------------------------

    def ipv4(self, octets: tuple[int, ...]) -> None:
        for octet in range(256):
            here = (*octets, octet)
            text = ".".join(map(str, here))
            if len(here) == 4:
                if self.matches(text):
                    self.networks.append(IPv4Network(text))
                continue
            verdict = self.verdict(text + ".")
            if verdict is _Verdict.SOME:
                self.ipv4(here)
            else:
                self.decided(_v4(here, 0), _v4(here, 255), verdict)

    # -- IPv6 from 2000:: up: "g1:" ... "g1:...:gk:" with every group nonzero --------------

    def ipv6(self) -> None:
        for digit in "23456789abcdef":  # a first group of 0x2000 and up has four digits
            self._group_text((), digit, width=4)

    def _group_text(self, groups: tuple[int, ...], digits: str, width: int | None) -> None:
        """The groups after `groups` whose text starts with `digits` (all `width` digits
        long at the top, where shorter groups are below 2000::)."""
        verdict = self.verdict(_v6_text(groups) + digits)
        if verdict is not _Verdict.SOME:
            for low, high in _group_ranges(digits, width):
                self.decided(_v6(groups, low, 0), _v6(groups, high, 0xFFFF), verdict)
            return
        if width is None or len(digits) == width:
            self._node((*groups, int(digits, 16)))
        if len(digits) < (width or 4):
            for digit in _HEX:
                self._group_text(groups, digits + digit, width)

    def _node(self, groups: tuple[int, ...]) -> None:
        """The network of addresses that begin with `groups` (all nonzero: never compressed)."""
        text = _v6_text(groups)
        verdict = self.verdict(text)
        if verdict is not _Verdict.SOME:
            self.decided(
                _v6(groups[:-1], groups[-1], 0), _v6(groups[:-1], groups[-1], 0xFFFF), verdict
            )
            return
        if len(groups) >= 6:
            raise _Unproven("it matches too irregular a set of IPv6 addresses to list")
        for zero in (text + ":", text + "0:"):  # the next group is zero, compressed or not
            if self.verdict(zero) is not _Verdict.NONE:
                raise _Unproven(
                    f"it matches IPv6 texts that go on with a zero group after {text}, which "
                    "depend on the rest of the address, not on a network"
                )
        for digit in _HEX[1:]:
            self._group_text(groups, digit, None)

    def below_2000(self) -> bool:
        """Whether the pattern may match IPv6 texts below 2000:: (a first group under 0x2000:
        zero, or one to three hex digits, or four starting with 1)."""
        texts = ["::", "0:"]
        texts += [digit + tail for digit in _HEX[1:] for tail in _tails(4 if digit == "1" else 3)]
        try:
            return any(self.verdict(text) is not _Verdict.NONE for text in texts)
        except _Unproven:
            return True


def _tails(length: int) -> Iterator[str]:
    """What may follow a group's first digit in a group of up to `length` digits: up to
    `length - 1` more digits, then the colon after the group."""
    yield ":"
    if length > 1:
        for digit in _HEX:
            for tail in _tails(length - 1):
                yield digit + tail


def _group_ranges(digits: str, width: int | None) -> Iterator[tuple[int, int]]:
    """The group values whose text starts with `digits`: one range per text length."""
    value = int(digits, 16)
    lengths = [width] if width is not None else range(len(digits), 5)
    for length in lengths:
        shift = 4 * (length - len(digits))
        yield value << shift, ((value + 1) << shift) - 1


def _v4(octets: tuple[int, ...], fill: int) -> IPv4Address:
    full = [*octets, fill, fill, fill][:4]
    return IPv4Address(".".join(map(str, full)))


def _v6(groups: tuple[int, ...], value: int, fill: int) -> IPv6Address:
    full = [*groups, value] + [fill] * (7 - len(groups))
    return IPv6Address(":".join(f"{g:x}" for g in full))


def _v6_text(groups: tuple[int, ...]) -> str:
    return "".join(f"{g:x}:" for g in groups)
