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
MAX_REASON = 200  # characters of an admin's `ban --reason`: a line in a table, not a letter


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
    """`for` (seconds: a number above zero, at most MAX_BAN) or `permanent` (true or false);
    `reason` (text, optional)."""
    targets = parse_targets(request.get("targets", []))
    duration, permanent = request.get("for"), request.get("permanent", False)
    reason = ban_reason(request.get("reason"))
    if not isinstance(permanent, bool):
        raise UsageError(f'"permanent" must be true or false, got {brief(json.dumps(permanent))}')
    if duration is None:
        return AdminBan(targets, None, permanent, reason)
    if isinstance(duration, bool) or not isinstance(duration, int | float):
        shown = brief(json.dumps(duration))
        raise UsageError(f'bad ban duration {shown}: "for" is a number of seconds')
    problem = duration_problem(duration)
    if problem is not None:
        raise UsageError(f"bad ban duration: {problem}")
    return AdminBan(targets, float(duration), permanent, reason)


def ban_reason(raw: object) -> str | None:
    """An admin's reason for a ban: one line of printable text, at most MAX_REASON
    characters; None when not given."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise UsageError(f"--reason must be text, got {brief(json.dumps(raw))}")
    text = raw.strip()
    if not text or not text.isprintable() or len(text) > MAX_REASON:
        raise UsageError(
            f"bad --reason {brief(json.dumps(raw))}: give one line of printable text, "
            f"1 to {MAX_REASON} characters"
        )
    return text


def unban(request: Mapping[str, Any]) -> AdminUnban:
    """`targets`, or `all` (true: every active ban, no targets); `fleet` (not with `all`)."""
    fleet = request.get("fleet") is True
    if request.get("all") is not True:
        return AdminUnban(parse_targets(request.get("targets", [])), fleet=fleet)
    if request.get("targets") or fleet:
        raise UsageError("unban --all takes no ADDRESS, --file nor --fleet")
    return AdminUnban((), everything=True)


def top_limit(request: Mapping[str, Any]) -> int:
    """The rows `top` wants of each table: 10 by default, at most TOP_LIMIT."""
    limit = request.get("limit", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= TOP_LIMIT:
        raise UsageError(f"bad limit {limit!r}: give 1 to {TOP_LIMIT}")
    return limit
