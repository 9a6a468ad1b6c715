"""Model values to and from database rows. Reading never trusts the file: anything that does
not convert cleanly raises `BadRow` saying what is wrong, and the caller skips the row."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any, TypeVar

from porttrap.model import (
    Ban,
    Evidence,
    Hit,
    IPAddress,
    IPNetwork,
    Outcome,
    Proto,
    ban_problem,
    show,
    single_network,
    unmap,
    unmap_network,
)
from porttrap.store.base import StoredBan
from porttrap.units import LAST_TIME, MAX_BAN, time_problem

Row = tuple[Any, ...]
_Choice = TypeVar("_Choice", Proto, Outcome, Evidence)
_EVIDENCE = {e.value: e for e in Evidence}
_LONGEST = MAX_BAN.seconds


class BadRow(ValueError):
    """One row that cannot be read; the message says which column and why."""


def hit_row(hit: Hit, outcome: Outcome) -> Row:
    """A hit as columns: (at, source, source_port, local, port, proto, kind, outcome)."""
    return (
        hit.at,
        str(hit.source),
        hit.source_port,
        str(hit.local),
        hit.port,
        hit.proto.value,
        hit.kind,
        outcome.value,
    )


def ban_row(ban: Ban) -> Row:
    """A ban as columns: (target, banned_at, expires_at, ban_count, reason, evidence)."""
    return (
        show(ban.target),
        ban.banned_at,
        ban.expires_at,
        ban.ban_count,
        ban.reason,
        ban.evidence.value,
    )


def hit_from(row: Row) -> tuple[Hit, Outcome]:
    """A hit and its outcome from the columns `hit_row` gives."""
    at, source, source_port, local, port, proto, kind, outcome = row
    hit = Hit(
        at=_time(at, "at"),
        source=_address(source, "source"),
        source_port=_port(source_port, "source_port"),
        local=_address(local, "local"),
        port=_port(port, "port"),
        proto=_choice(Proto, proto, "proto"),
        kind=_text(kind, "kind"),
    )
    return hit, _choice(Outcome, outcome, "outcome")


def ban_from(row: Row) -> Ban:
    """A ban from the columns `ban_row` gives, within the bounds of `ban_problem`."""
    target, banned_at, expires_at, ban_count, reason, evidence = row
    # The common case in as few checks as possible: startup reads every active ban. The
    # comparisons are `ban_problem`'s, written out (False for NaN, so NaN takes the long way).
    known = _EVIDENCE.get(evidence)
    if (
        type(banned_at) is float
        and 0.0 <= banned_at < LAST_TIME
        and (
            expires_at is None
            or (
                type(expires_at) is float
                and 0.0 <= expires_at < LAST_TIME
                and expires_at - banned_at <= _LONGEST
            )
        )
        and type(ban_count) is int
        and ban_count >= 1
        and type(reason) is str
        and known is not None
    ):
        return Ban(_network(target), banned_at, expires_at, ban_count, reason, known)
    ban = Ban(
        target=_network(target),
        banned_at=_number(banned_at, "banned_at"),
        expires_at=None if expires_at is None else _number(expires_at, "expires_at"),
        ban_count=_count(ban_count),
        reason=_text(reason, "reason"),
        evidence=_choice(Evidence, evidence, "evidence"),
    )
    problem = ban_problem(ban.banned_at, ban.expires_at)
    if problem is not None:
        raise BadRow(problem)
    return ban


def stored_ban_from(row: Row) -> StoredBan:
    """A ban and how it ended: `ban_row`'s columns, then lifted_at, lifted_reason."""
    lifted_at, lifted_reason = row[6], row[7]
    return StoredBan(
        ban=ban_from(row[:6]),
        lifted_at=None if lifted_at is None else _time(lifted_at, "lifted_at"),
        lifted_reason=None if lifted_reason is None else _text(lifted_reason, "lifted_reason"),
    )


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise BadRow(f"target {value!r} is not text")
    try:
        network = single_network(value) or ip_network(value)
    except ValueError as e:
        raise BadRow(f"target {value!r} is not an address or network: {e}") from None
    return unmap_network(network) if network.version == 6 else network


def _address(value: Any, column: str) -> IPAddress:
    if not isinstance(value, str):
        raise BadRow(f"{column} {value!r} is not text")
    try:
        return unmap(ip_address(value))
    except ValueError:
        raise BadRow(f"{column} {value!r} is not an IP address") from None


def _number(value: Any, column: str) -> float:
    if not isinstance(value, int | float):
        raise BadRow(f"{column} {value!r} is not a number")
    return float(value)


def _time(value: Any, column: str) -> float:
    at = _number(value, column)
    if (problem := time_problem(at)) is not None:
        raise BadRow(f"{column} {problem}")
    return at


def _count(value: Any) -> int:
    if not isinstance(value, int) or value < 1:
        raise BadRow(f"ban_count {value!r} is not a whole number of at least 1")
    return value


def _port(value: Any, column: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 65535:
        raise BadRow(f"{column} {value!r} is not a port number (0-65535)")
    return value


def _text(value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise BadRow(f"{column} {value!r} is not text")
    return value


def _choice(kind: type[_Choice], value: Any, column: str) -> _Choice:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise BadRow(f"{column} {value!r} is not one of: {known}") from None
