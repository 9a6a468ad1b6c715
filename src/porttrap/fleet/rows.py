"""Rows of the fleet's shared log, read back (pure: no driver, no clock, no I/O).

Every host can write to the log, so a row is input from outside: `parse` turns one into a
`FleetEntry` or says, naming the row's id and host, why it is refused. A refused row never
reaches a kernel. `parse` never raises, whatever the row holds. A catch-up parses 100,000
rows at once, so the common row (one address, verified or not) takes the short way.

`SELECT_AFTER` is the query whose rows `parse` takes (`COLUMNS_SQL`, in `COLUMNS`' order): the
times as epoch seconds, `now` being the database's clock at the read, so that the lag (how
long ago the row was committed, in the database's clock only) needs no clock of this host.
"""

from __future__ import annotations

import math
import re
import socket
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any, Final

from porttrap.model import (
    Ban,
    Evidence,
    FleetEntry,
    FleetKind,
    IPNetwork,
    ban_problem,
    show,
    unmap_network,
)

COLUMNS: Final = (
    "id", "host", "kind", "target", "ban_id", "banned_at", "expires_at", "ban_count", "reason",
    "evidence", "at", "now",
)  # fmt: skip
# The select list whose rows `parse` takes, for any query on porttrap.log (a snapshot too)
COLUMNS_SQL: Final = (
    "id, host, kind, target::text, ban_id, banned_at, expires_at, ban_count, reason, evidence,"
    " extract(epoch FROM at)::float8, extract(epoch FROM clock_timestamp())::float8"
)
SELECT: Final = f"SELECT {COLUMNS_SQL} FROM porttrap.log"  # noqa: S608 - constants only
SELECT_AFTER: Final = f"{SELECT} WHERE id > %s ORDER BY id LIMIT %s"
KINDS: Final = ("ban", "unban", "unban-fleet")
HOST_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # porttrap.hosts' CHECK
WIDEST: Final = {4: 8, 6: 32}  # the shortest prefix a fleet ban may have, per IP version
MAX_BAN_COUNT: Final = 1_000_000
MAX_REASON: Final = 200
MAX_BAN_ID: Final = 64
AHEAD: Final = 86400.0  # seconds a ban may start after the database's clock (hosts' drift)
# Where a ban makes no sense on another host: not one scanner's address on the internet.
NEVER: Final = tuple(
    ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", 0.0.0.0 among it
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local: another link's neighbours
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
    )
)
# NEVER as (first, last, network) integer spans per IP version: the check of each row's target
_NEVER_SPANS: Final = {
    version: [
        (int(n.network_address), int(n.broadcast_address), n) for n in NEVER if n.version == version
    ]
    for version in (4, 6)
}


_KINDS: Final = {kind.value: kind for kind in FleetKind}
_EVIDENCE: Final = {evidence.value: evidence for evidence in Evidence}
_SINGLE: Final = {"32": (socket.AF_INET, 4), "128": (socket.AF_INET6, 6)}
_MAPPED: Final = 0xFFFF  # ::ffff:a.b.c.d, an IPv4 address written as IPv6


class _Refused(ValueError):
    """Why a row is refused (internal: `parse` returns the text)."""


def parse(row: Sequence[Any]) -> FleetEntry | str:
    """The row as a `FleetEntry` (`ban` for a ban, None for an unban, whose ban columns, if
    any, are ignored), or the problem: "fleet log row ID from HOST: what is wrong"."""
    try:
        return _entry(row)
    except _Refused as refused:
        return f"fleet log row {_shown(row, 0)} from {_shown(row, 1)}: {refused}"
    except Exception as unexpected:  # a row must never stop the reader
        return f"fleet log row {_shown(row, 0)}: unreadable ({type(unexpected).__name__})"


def _shown(row: Sequence[Any], index: int) -> str:
    try:
        value = row[index]
    except Exception:  # only for the message
        return "?"
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return str(value)
    if isinstance(value, str) and HOST_NAME.fullmatch(value):
        return value
    return _cut(value)


def _cut(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # an object whose repr fails is still shown
        return f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def lag(row: Sequence[Any]) -> float | None:
    """Seconds from the commit of a row `parse` took to its read (None: not such a row)."""
    try:
        return max(0.0, _number(row[-1], "now") - _number(row[-2], "at"))
    except (_Refused, IndexError, TypeError):
        return None


def _entry(row: Sequence[Any]) -> FleetEntry:
    if not isinstance(row, tuple | list) or len(row) != len(COLUMNS):
        raise _Refused(f"not a row of {len(COLUMNS)} columns")
    id_, host, kind, target, ban_id, banned_at, expires_at, count, reason, evidence, at, now = row
    if not (type(id_) is int and 0 < id_ < 2**63):
        raise _Refused(f"id {_cut(id_)} is not a positive 64-bit integer")
    if not (isinstance(host, str) and HOST_NAME.fullmatch(host)):
        raise _Refused(f"host {_cut(host)} is not a host name")
    fleet_kind = _KINDS.get(kind) if isinstance(kind, str) else None
    if fleet_kind is None:
        raise _Refused(f"kind {_cut(kind)} is not one of {', '.join(KINDS)}")
    network = _target(target)
    if not (isinstance(ban_id, str) and 1 <= len(ban_id) <= MAX_BAN_ID and ban_id.isprintable()):
        raise _Refused(f"ban_id {_cut(ban_id)} is not 1 to {MAX_BAN_ID} printable characters")
    read_at = _number(now, "the database's clock (now)")
    _number(at, "at")
    ban = None
    if fleet_kind is FleetKind.BAN:
        ban = _ban(network, (banned_at, expires_at, count, reason, evidence), read_at)
    return FleetEntry(id_, host, fleet_kind, network, ban)


def _target(value: Any) -> IPNetwork:
    if type(value) is str and (single := _single(value)) is not None:
        return single
    network = unmap_network(_network(value))
    version, prefix = network.version, network.prefixlen
    if prefix < WIDEST[version]:
        raise _Refused(f"target {network} is wider than /{WIDEST[version]}: no scanner is that big")
    first = int(network.network_address)
    last = first | ((1 << (network.max_prefixlen - prefix)) - 1)
    if (never := _never(version, first, last)) is not None:
        raise _Refused(f"target {show(network)} is in {never}, no address to ban")
    return network


def _single(value: str) -> IPNetwork | None:
    """The common row, a single address as cidr::text writes it ("203.0.113.7/32"), checked on
    its number before any object is made; None when it is not that (the long way decides)."""
    address, _, prefix = value.partition("/")
    family = _SINGLE.get(prefix)
    if family is None or len(address) > 45:
        return None
    try:
        number = int.from_bytes(socket.inet_pton(family[0], address))
    except OSError:
        return None
    version = family[1]
    if version == 6 and number >> 32 == _MAPPED:
        number, version = number & 0xFFFFFFFF, 4
    network = IPv4Network(number) if version == 4 else IPv6Network(number)
    if (never := _never(version, number, number)) is not None:
        raise _Refused(f"target {show(network)} is in {never}, no address to ban")
    return network


def _never(version: int, first: int, last: int) -> IPNetwork | None:
    """The network of NEVER that the addresses first..last touch, if any."""
    for low, high, never in _NEVER_SPANS[version]:
        if first <= high and last >= low:
            return never
    return None


def _network(value: Any) -> IPNetwork:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str) or len(value) > 64:
        raise _Refused(f"target {_cut(value)} is not an address or network")
    try:
        return ip_network(value)
    except ValueError:
        raise _Refused(f"target {_cut(value)} is not an address or network") from None


def _ban(target: IPNetwork, columns: tuple[Any, ...], read_at: float) -> Ban:
    banned_at, expires_at, count, reason, evidence = columns
    start = _number(banned_at, "banned_at")
    end = None if expires_at is None else _number(expires_at, "expires_at")
    if (problem := ban_problem(start, end)) is not None:
        raise _Refused(problem)
    if start > read_at + AHEAD:
        raise _Refused(f"banned_at is {round(start - read_at)} s ahead of the database's clock")
    if not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
        raise _Refused(f"ban_count {_cut(count)} is not a whole number of at least 1")
    if count > MAX_BAN_COUNT:
        raise _Refused(f"ban_count {count} is above {MAX_BAN_COUNT:,}")
    if not (isinstance(reason, str) and len(reason) <= MAX_REASON and reason.isprintable()):
        raise _Refused(f"reason {_cut(reason)} is not up to {MAX_REASON} printable characters")
    found = _EVIDENCE.get(evidence) if isinstance(evidence, str) else None
    if found is None:
        raise _Refused(f"evidence {_cut(evidence)} is not verified or unverified")
    return Ban(target, start, end, count, reason, found)


def _number(value: Any, column: str) -> float:
    if type(value) is float and math.isfinite(value):  # the common case first
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Refused(f"{column} {_cut(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise _Refused(f"{column} {_cut(value)} is out of range") from None
    if not math.isfinite(number):
        raise _Refused(f"{column} {_cut(value)} is not a finite number")
    return number
