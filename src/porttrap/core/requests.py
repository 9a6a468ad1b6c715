"""Control requests (JSON from the control socket) checked and turned into events. Pure: every
bad value is a `UsageError` that names it, and nothing is half-applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from porttrap.core.events import AdminBan, AdminUnban
from porttrap.errors import UsageError
from porttrap.model import IPNetwork, parse_target

TOP_LIMIT = 100
# Longer ends past what a timestamp can hold (1e308 s overflowed the answer's ISO time), and
# Infinity or NaN would be stored as no end at all: a permanent ban nobody asked for.
MAX_DURATION = 100 * 365 * 86400


def parse_targets(raw: object) -> tuple[IPNetwork, ...]:
    """Addresses and CIDR networks; every bad one is reported, nothing is half-applied."""
    if not isinstance(raw, list) or not raw:
        raise UsageError("give at least one address or network")
    targets, problems = [], []
    for item in raw:
        try:
            targets.append(parse_target(str(item)))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise UsageError("; ".join(problems))
    return tuple(dict.fromkeys(targets))


def ban(request: Mapping[str, Any]) -> AdminBan:
    targets = parse_targets(request.get("targets", []))
    duration, permanent = request.get("for"), bool(request.get("permanent"))
    if duration is not None and not (
        isinstance(duration, int | float) and 0 < duration <= MAX_DURATION  # NaN: false
    ):
        raise UsageError(
            f"bad ban duration {duration!r}: give seconds, more than 0 and at most "
            f"{MAX_DURATION} (100 years); a ban that never ends is permanent"
        )
    return AdminBan(targets, None if duration is None else float(duration), permanent)


def unban(request: Mapping[str, Any]) -> AdminUnban:
    return AdminUnban(parse_targets(request.get("targets", [])))


def top_limit(request: Mapping[str, Any]) -> int:
    """The rows `top` wants of each table: 10 by default, at most TOP_LIMIT."""
    limit = request.get("limit", 10)
    if not isinstance(limit, int) or not 1 <= limit <= TOP_LIMIT:
        raise UsageError(f"bad limit {limit!r}: give 1 to {TOP_LIMIT}")
    return limit
