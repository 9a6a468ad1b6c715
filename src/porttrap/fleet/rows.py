"""Rows of the fleet's shared log, read back (pure: no driver, no clock, no I/O).

Every host can write to the log, so a row is input from outside: `parse` turns one into an
`Entry` or says, naming the row's id and host, why it is refused. A refused row never reaches
a kernel. `parse` never raises, whatever the row holds.

`SELECT_AFTER` is the query whose rows `parse` takes (`COLUMNS_SQL`, in `COLUMNS`' order): the
times as epoch seconds, `now` being the database's clock at the read, so that the lag (how
long ago the row was committed, in the database's clock only) needs no clock of this host.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
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
    single_network,
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


@dataclass(frozen=True, slots=True)
class Entry:
    """One checked row of the shared log: `ban` for a ban, None for an unban (whose ban
    columns, if any, are ignored). `lag`: seconds from the row's commit to the read."""

    id: int
    host: str
    kind: str
    target: IPNetwork
    ban_id: str
    ban: Ban | None
    lag: float

    def fleet_entry(self) -> FleetEntry:
        """The row as the core takes it."""
        return FleetEntry(self.id, self.host, FleetKind(self.kind), self.target, self.ban)


class _Refused(ValueError):
    """Why a row is refused (internal: `parse` returns the text)."""


def parse(row: Sequence[Any]) -> Entry | str:
    """The row as an `Entry`, or the problem: "fleet log row ID from HOST: what is wrong"."""
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


def _entry(row: Sequence[Any]) -> Entry:
    if not isinstance(row, tuple | list) or len(row) != len(COLUMNS):
        raise _Refused(f"not a row of {len(COLUMNS)} columns")
    id_, host, kind, target, ban_id, banned_at, expires_at, count, reason, evidence, at, now = row
    if not (isinstance(id_, int) and not isinstance(id_, bool) and 0 < id_ < 2**63):
        raise _Refused(f"id {_cut(id_)} is not a positive 64-bit integer")
    if not (isinstance(host, str) and HOST_NAME.fullmatch(host)):
        raise _Refused(f"host {_cut(host)} is not a host name")
    if kind not in KINDS:
        raise _Refused(f"kind {_cut(kind)} is not one of {', '.join(KINDS)}")
    network = _target(target)
    if not (isinstance(ban_id, str) and 1 <= len(ban_id) <= MAX_BAN_ID and ban_id.isprintable()):
        raise _Refused(f"ban_id {_cut(ban_id)} is not 1 to {MAX_BAN_ID} printable characters")
    read_at = _number(now, "the database's clock (now)")
    lag = max(0.0, read_at - _number(at, "at"))
    ban = None
    if kind == "ban":
        ban = _ban(network, (banned_at, expires_at, count, reason, evidence), read_at)
    return Entry(id_, host, kind, network, ban_id, ban, lag)


def _target(value: Any) -> IPNetwork:
    network = unmap_network(_network(value))
    version, prefix = network.version, network.prefixlen
    if prefix < WIDEST[version]:
        raise _Refused(f"target {network} is wider than /{WIDEST[version]}: no scanner is that big")
    first = int(network.network_address)
    last = first | ((1 << (network.max_prefixlen - prefix)) - 1)
    for low, high, never in _NEVER_SPANS[version]:
        if first <= high and last >= low:
            raise _Refused(f"target {show(network)} is in {never}, no address to ban")
    return network


def _network(value: Any) -> IPNetwork:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if not isinstance(value, str) or len(value) > 64:
        raise _Refused(f"target {_cut(value)} is not an address or network")
    # The common row, a single address as cidr::text writes it ("203.0.113.7/32"), the fast
    # way: a catch-up reads 100,000 of them.
    address, _, prefix = value.partition("/")
    single = single_network(address) if prefix in ("32", "128") else None
    if single is not None and single.max_prefixlen == int(prefix):
        return single
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
    if evidence not in (Evidence.VERIFIED.value, Evidence.UNVERIFIED.value):
        raise _Refused(f"evidence {_cut(evidence)} is not verified or unverified")
    return Ban(target, start, end, count, reason, Evidence(evidence))


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
