"""What an action is told about an event, with no I/O: the event built from a hit, a ban or an
unban; the `$TARGET$ $PORT$ $MODE$` placeholders; the PORTTRAP_* environment of commands; the
JSON body of webhooks.

Placeholder values come from packets (an address, a port) and are never trusted: they are
substituted in one pass (a value is never expanded again), and for a shell command line each
one is shell-quoted, so that no value can become shell syntax.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from porttrap import __version__, log
from porttrap.config.schema import CommandAction, Event, Modes, TrapMode
from porttrap.model import (
    Ban,
    Evidence,
    Hit,
    Outcome,
    Proto,
    Unban,
    show,
    trap_reason,
    trapped_by,
)

ADMIN = "admin"  # $MODE$ of a ban no trap caused (`porttrap ban`), and of an unknown lifted ban
EXPIRED = "expired"  # the reason of the unban event of a ban that ran out
SHELL = "/bin/sh"
_PLACEHOLDER = re.compile(r"\$(TARGET|PORT|MODE)\$")
_MODE_PREFIX = {TrapMode.CONNECT: "", TrapMode.STEALTH: "s", TrapMode.ADVANCED: "a"}


@dataclass(frozen=True, slots=True)
class ActionEvent:
    """One event, as every action sees it. `port` 0 and `proto` None: no trap (an admin's ban,
    or the unban of a ban not known)."""

    name: Event
    address: str  # the source of a hit; the target of a ban (an address or a CIDR network)
    at: float
    port: int
    proto: Proto | None
    mode: str  # PortSentry's mode names: tcp, stcp, atcp, udp, sudp, audp; or "admin"
    reason: str
    ban_count: int = 0
    expires_at: float | None = None
    permanent: bool = False
    kind: str = ""  # hits: how the trap was touched (connect, udp, syn, fin ...)
    outcome: str = ""  # hits: what the policy made of it
    source_port: int = 0  # hits
    local: str = ""  # hits: the address the trap was touched on
    # What it rests on: "verified" (a handshake, an admin) or "unverified" (forgeable); a
    # hit's own evidence, or its ban's; empty for the unban of an unknown ban.
    evidence: str = ""


def mode_name(modes: Modes, proto: Proto) -> str:
    """PortSentry's name of the mode `proto` is watched in: tcp, stcp, atcp, udp, sudp, audp."""
    return _MODE_PREFIX[modes.of(proto)] + proto.value


def from_hit(hit: Hit, outcome: Outcome, ban: Ban | None, modes: Modes) -> ActionEvent:
    """A "hit" event; `ban` is the ban this hit caused, if any."""
    return ActionEvent(
        name=Event.HIT,
        address=str(hit.source),
        at=hit.at,
        port=hit.port,
        proto=hit.proto,
        mode=mode_name(modes, hit.proto),
        reason=ban.reason if ban is not None else trap_reason(hit.proto, hit.port),
        ban_count=ban.ban_count if ban is not None else 0,
        expires_at=ban.expires_at if ban is not None else None,
        permanent=ban is not None and ban.permanent,
        kind=hit.kind,
        outcome=outcome.value,
        source_port=hit.source_port,
        local=str(hit.local),
        evidence=_evidence(ban.verified if ban is not None else hit.verified),
    )


def _evidence(verified: bool) -> str:
    return str(Evidence.VERIFIED if verified else Evidence.UNVERIFIED)


def from_ban(ban: Ban, modes: Modes) -> ActionEvent:
    """A "ban" or "permanent-ban" event."""
    name = Event.PERMANENT_BAN if ban.permanent else Event.BAN
    return _with_ban(name, ban, ban.banned_at, ban.reason, modes)


def from_unban(unban: Unban, lifted: Ban | None, modes: Modes) -> ActionEvent:
    """An "unban" event; `lifted` (when known) gives the port, mode and count of the ban."""
    if lifted is not None:
        return _with_ban(Event.UNBAN, lifted, unban.at, unban.reason, modes)
    return ActionEvent(Event.UNBAN, show(unban.target), unban.at, 0, None, ADMIN, unban.reason)


def from_expiry(ban: Ban, modes: Modes) -> ActionEvent:
    """The "unban" event of a ban that ran out (reason "expired")."""
    at = ban.expires_at if ban.expires_at is not None else ban.banned_at
    return _with_ban(Event.UNBAN, ban, at, EXPIRED, modes)


def _with_ban(name: Event, ban: Ban, at: float, reason: str, modes: Modes) -> ActionEvent:
    trap = trapped_by(ban.reason)
    proto, port = trap if trap is not None else (None, 0)
    return ActionEvent(
        name=name,
        address=show(ban.target),
        at=at,
        port=port,
        proto=proto,
        mode=ADMIN if proto is None else mode_name(modes, proto),
        reason=reason,
        ban_count=ban.ban_count,
        expires_at=ban.expires_at,
        permanent=ban.permanent,
        evidence=str(ban.evidence),
    )


def placeholders(event: ActionEvent) -> dict[str, str]:
    return {"TARGET": event.address, "PORT": str(event.port), "MODE": event.mode}


def expand(text: str, values: dict[str, str], *, quote: bool = False) -> str:
    """`text` with each `$NAME$` replaced by values[NAME], shell-quoted when `quote`. One pass:
    a value that contains `$PORT$` stays as it is."""

    def value(match: re.Match[str]) -> str:
        found = values[match.group(1)]
        return shlex.quote(found) if quote else found

    return _PLACEHOLDER.sub(value, text)


def argv(action: CommandAction, event: ActionEvent) -> list[str]:
    """The argv to execute: the program and its arguments, or /bin/sh -c and the line."""
    values = placeholders(event)
    if action.shell:
        return [SHELL, "-c", expand(action.run[0], values, quote=True)]
    return [expand(item, values) for item in action.run]


def environment(event: ActionEvent) -> dict[str, str]:
    """The PORTTRAP_* variables a command gets (on top of the daemon's own environment)."""
    return {
        "PORTTRAP_EVENT": event.name.value,
        "PORTTRAP_ADDRESS": event.address,
        "PORTTRAP_PORT": str(event.port),
        "PORTTRAP_PROTO": event.proto.value if event.proto is not None else "",
        "PORTTRAP_MODE": event.mode,
        "PORTTRAP_KIND": event.kind,
        "PORTTRAP_OUTCOME": event.outcome,
        "PORTTRAP_BAN_COUNT": str(event.ban_count),
        "PORTTRAP_EXPIRES_AT": log.iso(event.expires_at) or "",
        "PORTTRAP_PERMANENT": "1" if event.permanent else "0",
        "PORTTRAP_REASON": event.reason,
        "PORTTRAP_EVIDENCE": event.evidence,
    }


def document(event: ActionEvent, host: str) -> dict[str, object]:
    """The event as a JSON object (a webhook's body). Hit fields are null for other events."""
    hit = event.name is Event.HIT
    return {
        "event": event.name.value,
        "address": event.address,
        "at": log.iso(event.at),
        "port": event.port or None,
        "proto": event.proto.value if event.proto is not None else None,
        "mode": event.mode,
        "reason": event.reason,
        "ban_count": event.ban_count,
        "expires_at": log.iso(event.expires_at),
        "permanent": event.permanent,
        "evidence": event.evidence or None,
        "kind": event.kind if hit else None,
        "outcome": event.outcome if hit else None,
        "source_port": event.source_port if hit else None,
        "local": event.local if hit else None,
        "host": host,
        "porttrap": __version__,
    }


def body(event: ActionEvent, host: str) -> bytes:
    return json.dumps(document(event, host), separators=(",", ":")).encode()
