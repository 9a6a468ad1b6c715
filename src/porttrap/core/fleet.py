"""The core's part of the fleet (pure): which of this host's decisions are shared, and what the
rows of the shared log become here.

Shared: this host's own bans (trap hits, escalations, an admin's) and an admin's unbans. Not
shared: bans adopted from other hosts (they are in the log already), bans the store had lost
and the kernel still held, and unbans the local policy makes (an allow-listed address lifted).

A row from another host becomes a ban here through `Policy.adopt_fleet` (local protection
first, this host's durations, forgeable evidence bounded as here). A refusal by the local
protection is logged and recorded in the history, as a ban over as soon as it began whose
reason says why; one for lesser reasons (already banned longer here, ended, a budget) is
only counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from porttrap.config.schema import FleetConfig
from porttrap.core.commands import Command, Log, Publish, RecordChanges
from porttrap.core.events import FleetLinkChanged, FleetReceived
from porttrap.model import (
    Ban,
    Change,
    FleetEntry,
    FleetKind,
    Unban,
    fleet_origin,
    fleet_reason,
    show,
)
from porttrap.policy.engine import KEPT_FROM_KERNEL, Policy, Refusal

MANUAL = "manual"  # an admin's unban on this host: shared, the copies of its ban go
MANUAL_FLEET = "manual, on every host"  # `porttrap unban --fleet`: every ban on the target goes


@dataclass(slots=True)
class FleetCounts:
    received: int = 0  # rows from other hosts
    adopted: int = 0  # bans now held here
    refused: int = 0  # refused by the local protection (recorded)
    ignored: int = 0  # ended, already held longer, over a budget
    lifted: int = 0  # bans lifted here by the fleet's unbans


class FleetSide:
    """The fleet settings and counters the core keeps; None settings: this host is alone."""

    def __init__(self, config: FleetConfig | None) -> None:
        self.config = config
        self.counts = FleetCounts()
        self.up = False
        self.error: str | None = None  # why the link is down (None: up, or never tried)

    @property
    def name(self) -> str | None:
        return None if self.config is None else self.config.name

    def publish(self, batch: list[Change]) -> list[Command]:
        """A `Publish` of the batch's shareable changes (none when not publishing)."""
        if self.config is None or not self.config.publish:
            return []
        shared = [c for c in batch if _shared(c)]
        if not shared:
            return []
        wide = frozenset(
            c.target for c in shared if isinstance(c, Unban) and c.reason == MANUAL_FLEET
        )
        return [Publish(shared, wide)]

    def link(self, event: FleetLinkChanged) -> list[Command]:
        """The loss and the return of the link, each logged once."""
        if event.up == self.up and (event.up or self.error is not None):
            return []
        self.up, self.error = event.up, event.error
        if event.up:
            return [Log("fleet-connected", logging.INFO, {"host": self.name})]
        why = "this host protects itself alone meanwhile; its bans wait in the outbox"
        return [Log("fleet-lost", logging.WARNING, {"error": event.error, "why": why})]

    def received(
        self, policy: Policy, event: FleetReceived, now: float
    ) -> tuple[list[Change], list[Command]]:
        """The changes the rows make here (to the turn's batch), and what else to do."""
        changes: list[Change] = []
        commands: list[Command] = []
        if self.config is None or not self.config.accept:
            return changes, commands
        for entry in event.entries:
            if entry.host == self.name:
                continue
            self.counts.received += 1
            if entry.kind is FleetKind.BAN and entry.ban is not None:
                held, done = self._ban(policy, entry, entry.ban, event, now)
                changes += held
                commands += done
            else:
                changes += self._unban(policy, entry, now)
        return changes, commands

    def _ban(
        self, policy: Policy, entry: FleetEntry, ban: Ban, event: FleetReceived, now: float
    ) -> tuple[list[Change], list[Command]]:
        held = policy.adopt_fleet(ban, entry.host, now, event.clients)
        if not isinstance(held, Refusal):
            self.counts.adopted += 1
            return [held], []
        if not held.protected:
            self.counts.ignored += 1
            return [], []
        self.counts.refused += 1
        fields = {"address": show(ban.target), "origin": entry.host, "why": held.why}
        # In the history as a ban over as soon as it began, its reason saying why; at its own
        # time, so that it counts toward escalation once, after a restart too.
        reason = fleet_reason(f"refused here: {held.why}", entry.host)[:200]
        at = ban.banned_at
        refused = Ban(ban.target, at, at, ban.ban_count, reason, ban.evidence)
        return [], [Log("fleet-ban-refused", logging.INFO, fields), RecordChanges([refused])]

    def _unban(self, policy: Policy, entry: FleetEntry, now: float) -> list[Change]:
        wide = entry.kind is FleetKind.UNBAN_FLEET
        origin = None if wide else entry.host
        why = f"unbanned {'fleet-wide ' if wide else ''}by {entry.host}"
        lifted = policy.unban_fleet(entry.target, now, origin, why)
        if lifted is None:
            return []
        self.counts.lifted += 1
        return [lifted]


def _shared(change: Change) -> bool:
    if isinstance(change, Unban):
        return change.reason in (MANUAL, MANUAL_FLEET)
    return fleet_origin(change.reason) is None and change.reason != KEPT_FROM_KERNEL
