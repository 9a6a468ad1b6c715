"""Control requests (JSON from the control socket) checked and turned into events. Pure: every
bad value is a `UsageError` that names it, and nothing is half-applied."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from porttrap.core.events import AdminBan, AdminUnban
from porttrap.errors import UsageError
from porttrap.model import IPNetwork, parse_target
from porttrap.units import brief, duration_problem

TOP_LIMIT = 100


def parse_targets(raw: object) -> tuple[IPNetwork, ...]:
    """Addresses and CIDR networks, each a string; every bad one is reported, nothing is
    half-applied."""
    if not isinstance(raw, list) or not raw:
        raise UsageError("give at least one address or network")
    targets, problems = [], []
    for item in raw:
        try:
            targets.append(_target(item))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise UsageError("; ".join(problems))
    return tuple(dict.fromkeys(targets))


def _target(item: object) -> IPNetwork:
    if not isinstance(item, str):
        raise ValueError(f"{brief(json.dumps(item))} is not an address in a string")
    return parse_target(item)


def ban(request: Mapping[str, Any]) -> AdminBan:
    """`for` (seconds: a number above zero, at most MAX_BAN) or `permanent` (true or false)."""
    targets = parse_targets(request.get("targets", []))
    duration, permanent = request.get("for"), request.get("permanent", False)
    if not isinstance(permanent, bool):
        raise UsageError(f'"permanent" must be true or false, got {brief(json.dumps(permanent))}')
    if duration is None:
        return AdminBan(targets, None, permanent)
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        shown = brief(json.dumps(duration))
        raise UsageError(f'bad ban duration {shown}: "for" is a number of seconds')
    problem = duration_problem(duration)
    if problem is not None:
        raise UsageError(f"bad ban duration: {problem}")
    return AdminBan(targets, float(duration), permanent)


def unban(request: Mapping[str, Any]) -> AdminUnban:
    return AdminUnban(parse_targets(request.get("targets", [])), fleet=request.get("fleet") is True)


def top_limit(request: Mapping[str, Any]) -> int:
    """The rows `top` wants of each table: 10 by default, at most TOP_LIMIT."""
    limit = request.get("limit", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= TOP_LIMIT:
        raise UsageError(f"bad limit {limit!r}: give 1 to {TOP_LIMIT}")
    return limit
