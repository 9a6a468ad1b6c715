"""Hits in, decisions out: trigger and window, confirmation, escalation, permanent bans,
protection.

Only a completed TCP handshake proves where a hit came from. A stealth probe (a SYN, FIN ...)
or a UDP datagram can carry any source address, so anyone could get a third party banned with
one forged packet: such hits ban only when the source sent several (`confirm`) within the window,
and never when they name a recent client of this host (the kernel saw it complete a connection
to a served port), whose address a forger would pick to cut the host off from its users.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from porttrap.config.schema import BanPolicy, Escalation, Respond, Trap
from porttrap.errors import UsageError
from porttrap.model import (
    Ban,
    Hit,
    IPAddress,
    IPNetwork,
    Outcome,
    Proto,
    StoredBan,
    Unban,
    as_network,
    show,
    trap_reason,
    trapped_by,
)
from porttrap.policy.protect import Protection
from porttrap.units import iso

TrapKey = tuple[Proto, int]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one hit led to: how it was classified, and the ban it caused, if any."""

    outcome: Outcome
    ban: Ban | None = None


class _Recent:
    """What the window holds of one source: each trap port it touched, with the time of the
    latest hit there, and the times of its latest `confirm` hits of any kind (oldest first).
    Both stay small, whatever the traffic: a source is banned once it has touched
    max(trigger, confirm) ports within the window, and `hits` holds `confirm` times at most."""

    __slots__ = ("hits", "ports")

    def __init__(self, confirm: int) -> None:
        self.ports: dict[TrapKey, float] = {}
        self.hits: deque[float] = deque(maxlen=max(confirm, 1))

    def add(self, key: TrapKey, now: float, horizon: float) -> int:
        """Note a hit on `key`; returns the distinct ports touched after `horizon`."""
        ports = self.ports
        ports[key] = now
        self.hits.append(now)
        for stale in [k for k, at in ports.items() if at <= horizon]:
            del ports[stale]
        return len(ports)

    def confirmed(self, horizon: float) -> bool:
        """Whether the latest `confirm` hits all came after `horizon`: at least `confirm`
        hits within the window."""
        hits = self.hits
        return len(hits) == hits.maxlen and hits[0] > horizon

    @property
    def last(self) -> float:
        """When the source last hit a trap (once it has gone a window, expire drops it)."""
        return self.hits[-1]


def enforced_under(policy: BanPolicy, ban: Ban) -> bool:
    """Whether `ban` belongs in the kernel under `policy`. A trap ban belongs there when its
    protocol responds with "ban" ("command": the command does the banning; "log": nothing is
    banned); an admin's ban does unless no protocol responds with "ban" (the kernel is then
    porttrap's to leave alone)."""
    trap = trapped_by(ban.reason)
    if trap is not None:  # only "ban" makes trap bans here; another host's may come under
        return policy.respond(trap[0]) is Respond.BAN  # any setting of this one's
    return Respond.BAN in (policy.respond_tcp, policy.respond_udp)


def ban_duration(policy: BanPolicy, base: float, count: int) -> float | None:
    """Seconds the `count`-th ban lasts (None: permanent), from first-ban time `base`."""
    if policy.permanent_after and count >= policy.permanent_after:
        return None
    if policy.escalation is Escalation.QUADRATIC:
        seconds = base * count * count
    elif policy.escalation is Escalation.EXPONENTIAL:
        seconds = base * 2 ** min(count - 1, 64)
    else:
        seconds = base
    return min(seconds, policy.max_time)


class Policy:
    """The ban policy and the state it needs: recent hits, past bans and active bans.

    A source is banned once it touched `trigger` distinct trap ports within `window`. A hit that
    cannot prove its source (see the module docstring) must in addition be at least the
    `confirm`-th hit from that source within the window, and one from a recent client never
    counts. Every method takes `now` (seconds since the epoch); nothing here reads a clock.
    """

    def __init__(self, policy: BanPolicy, traps: Sequence[Trap], protection: Protection) -> None:
        self.policy = policy
        self.protection = protection
        self._trap_bans = {(t.proto, t.port, t.address): t.ban for t in traps if t.ban}
        self._recent: dict[IPAddress, _Recent] = {}
        self._past: dict[IPNetwork, list[float]] = {}
        self._active: dict[IPNetwork, Ban] = {}
        self._active_nets: dict[IPNetwork, Ban] = {}
        # When each timed ban runs out: (expires_at, tie-break, target). An entry whose ban
        # was lifted or replaced since is stale and skipped (see `expire`).
        self._ends: list[tuple[float, int, IPNetwork]] = []
        self._order = itertools.count()

    # -- state from the store ------------------------------------------------------------

    def restore(self, stored: Iterable[StoredBan], now: float) -> list[Unban]:
        """Load bans from the store, oldest first (`Store.bans_to_restore`): the ones not
        lifted count toward escalation, and the newest of a target is active if it has not
        run out. Returns unbans for active bans that are now protected (an address added to
        the allow list, or now one of this host's)."""
        # Written out for speed: at 100,000 bans every method call and every hash of an
        # ipaddress network (computed in Python) shows in the restart time.
        past, singles, nets = self._past, self._active, self._active_nets
        for record in stored:
            if record.lifted_at is not None:
                continue
            ban = record.ban
            target = ban.target
            if (times := past.get(target)) is None:
                past[target] = times = []
            times.append(ban.banned_at)
            same = singles if target.prefixlen == target.max_prefixlen else nets
            if ban.expires_at is None or ban.expires_at > now:
                same[target] = ban
            else:
                same.pop(target, None)
        order = self._order
        self._ends = [
            (b.expires_at, next(order), b.target)
            for b in (*singles.values(), *nets.values())
            if b.expires_at is not None
        ]
        heapq.heapify(self._ends)
        return self._unban_overlapping(now) + self._unban_protected(now, scan=True)

    def _unban_overlapping(self, now: float) -> list[Unban]:
        """Older network bans that a newer one overlaps (a database from before porttrap
        refused such bans, or edited by hand): the kernel cannot hold both."""
        kept: list[Ban] = []
        unbans = []
        for ban in sorted(self._active_nets.values(), key=lambda b: b.banned_at, reverse=True):
            newer = next(
                (
                    k
                    for k in kept
                    if k.target.version == ban.target.version and k.target.overlaps(ban.target)
                ),
                None,
            )
            if newer is None:
                kept.append(ban)
            else:
                reason = f"overlapped by the newer ban on {show(newer.target)}"
                unbans.append(self.unban(ban.target, now, reason))
        return unbans

    def _forget(self, target: IPNetwork) -> None:
        self._active.pop(target, None)
        self._active_nets.pop(target, None)

    def reconfigure(
        self, policy: BanPolicy, traps: Sequence[Trap], protection: Protection, now: float
    ) -> list[Unban]:
        """A reloaded configuration: new rules, the same state (recent hits, past bans and
        active bans: escalation goes on where it was). The host's own addresses carry over.
        Returns unbans for active bans that the new allow list protects."""
        protection.set_own(self.protection.own)
        protection.take_peers(self.protection)
        if policy.confirm != self.policy.confirm:  # each source's hit times, kept to the new size
            for recent in self._recent.values():
                recent.hits = deque(recent.hits, maxlen=max(policy.confirm, 1))
        self.policy = policy
        self.protection = protection
        self._trap_bans = {(t.proto, t.port, t.address): t.ban for t in traps if t.ban}
        return self._unban_protected(now, scan=True)

    def set_own_addresses(self, own: Iterable[IPAddress], now: float) -> list[Unban]:
        """The host's addresses changed; returns unbans for any that were banned."""
        self.protection.set_own(own)
        return self._unban_protected(now, scan=False)

    def _unban_protected(self, now: float, scan: bool) -> list[Unban]:
        """Unbans for active bans that protection forbids. The host's own addresses are looked
        up, not scanned for (they change often, bans are many); `scan` also checks every
        single-address ban against loopback and the allow list (on start: the list may have
        changed since the bans were made)."""
        found = [t for t in self._active_nets if self.protection.conflict(t)]
        found += [t for own in self.protection.own if (t := as_network(own)) in self._active]
        if scan:
            found += [t for t in self._active if self.protection.allowed(t.network_address)]
        return [
            self.unban(t, now, f"protected: {self.protection.conflict(t)}")
            for t in dict.fromkeys(found)
        ]

    # -- hits ----------------------------------------------------------------------------

    def on_hit(self, hit: Hit, now: float) -> Verdict:
        """Classify one hit and ban its source when it completes the trigger. Runs for every
        packet a sensor reports (thousands a second under a scan): the work per hit is bounded
        by `trigger` and `confirm`, never by the traffic."""
        spared = self._spared(hit, now)
        if spared is not None:
            return Verdict(spared)
        if not self._triggered(hit, hit.verified, now):
            return Verdict(Outcome.COUNTED)
        self._recent.pop(hit.source, None)
        if self.policy.respond(hit.proto) is Respond.LOG:
            # would have banned: reported (fail2ban may act on it), never banned
            return Verdict(Outcome.LOGGED)
        base = self._base_time(hit)
        reason = trap_reason(hit.proto, hit.port)
        return Verdict(Outcome.BANNED, self._ban(as_network(hit.source), now, base, reason))

    def _spared(self, hit: Hit, now: float) -> Outcome | None:
        """Why `hit` cannot count toward a ban, or None when it counts."""
        if hit.proto is Proto.UDP and self.protection.aimed_elsewhere(hit.local):
            return Outcome.NOT_UNICAST
        protected = self.protection.outcome_for(hit.source)
        if protected is not None:
            return protected
        if self.banned(hit.source, now) is not None:
            return Outcome.ALREADY_BANNED
        if not hit.verified:
            # Forged probes naming a real client or a peer would cut the host off from it.
            if hit.client:
                return Outcome.CLIENT
            if self.protection.peer(hit.source, now):
                return Outcome.PEER
        return None

    def _triggered(self, hit: Hit, verified: bool, now: float) -> bool:
        """Count the hit; True when its source touched `trigger` distinct trap ports within
        the window and, unless the hit proves its source, sent `confirm` hits in it: one
        forged packet must not ban an innocent address."""
        recent = self._recent.get(hit.source)
        if recent is None:
            recent = self._recent[hit.source] = _Recent(self.policy.confirm)
        horizon = now - self.policy.window
        if recent.add((hit.proto, hit.port), now, horizon) < self.policy.trigger:
            return False
        return verified or recent.confirmed(horizon)

    def _base_time(self, hit: Hit) -> float:
        specific = self._trap_bans.get((hit.proto, hit.port, hit.local))
        general = self._trap_bans.get((hit.proto, hit.port, None))
        return specific or general or self.policy.time

    # -- bans ----------------------------------------------------------------------------

    def ban(
        self,
        targets: Sequence[IPNetwork],
        now: float,
        *,
        duration: float | None = None,
        permanent: bool = False,
        reason: str = "manual",
    ) -> list[Ban]:
        """An admin's bans. Without `duration` or `permanent` the escalation decides.
        All or nothing: raises UsageError naming every protected target, and bans none."""
        conflicts = [f"{show(t)}: {why}" for t in targets if (why := self.protection.conflict(t))]
        conflicts += self._overlaps(targets, now)
        if conflicts:
            raise UsageError("refusing to ban " + "; ".join(conflicts))
        return [self._manual(t, now, duration, permanent, reason) for t in targets]

    def adopt(self, ban: Ban, now: float) -> Ban | str:
        """A ban another host decided, held here as it was decided (its times, its reason);
        it counts toward escalation here too. Refused, with why, when it has ended, when the
        local protection forbids it (own addresses, the allow list, loopback, a peer), when a
        ban held here already lasts as long, or when it would overlap a network ban."""
        why = self._refusal(ban, now)
        if why is not None:
            return why
        bisect.insort(self._past.setdefault(ban.target, []), ban.banned_at)
        self._remember(ban)
        return ban

    def _refusal(self, ban: Ban, now: float) -> str | None:
        target = ban.target
        if not ban.active(now):
            return "it has ended"
        if why := self.protection.conflict(target):
            return why
        if peer := self.protection.peer_in(target, now):
            return f"{show(target)} holds {peer}, a peer of this host"
        held = self._held(target, now)
        if held is not None and (
            held.expires_at is None or held.expires_at >= (ban.expires_at or math.inf)
        ):
            return f"already banned here until {iso(held.expires_at) or 'forever'}"
        overlap = self._overlaps([target], now)
        return overlap[0] if overlap else None

    def _held(self, target: IPNetwork, now: float) -> Ban | None:
        ban = self._active.get(target) or self._active_nets.get(target)
        return ban if ban is not None and ban.active(now) else None

    def _overlaps(self, targets: Sequence[IPNetwork], now: float) -> list[str]:
        """Network bans may not overlap each other (the kernel's interval sets refuse it): a
        new one must not overlap an active one, other than the same network, nor another new
        one. Single addresses inside a banned network are fine."""
        nets = [t for t in targets if t.prefixlen != t.max_prefixlen]
        if not nets:
            return []
        held = [b.target for b in self._active_nets.values() if b.active(now)]
        problems = []
        for n, net in enumerate(nets):
            for other in [*held, *nets[:n]]:
                if other != net and other.version == net.version and net.overlaps(other):
                    problems.append(f"{show(net)}: overlaps the ban on {show(other)}")
                    break
        return problems

    def _manual(
        self, target: IPNetwork, now: float, duration: float | None, permanent: bool, reason: str
    ) -> Ban:
        count = self._count_past(target, now) + 1
        if permanent:
            return self._record(target, now, None, reason, count)
        if duration is not None:
            return self._record(target, now, now + duration, reason, count)
        seconds = ban_duration(self.policy, self.policy.time, count)
        return self._record(target, now, None if seconds is None else now + seconds, reason, count)

    def _ban(self, target: IPNetwork, now: float, base: float, reason: str) -> Ban:
        count = self._count_past(target, now) + 1
        seconds = ban_duration(self.policy, base, count)
        return self._record(target, now, None if seconds is None else now + seconds, reason, count)

    def _count_past(self, target: IPNetwork, now: float) -> int:
        past = self._past.get(target)
        if past is None:
            return 0
        horizon = now - self.policy.forget_after
        if past and past[0] <= horizon:
            past[:] = [at for at in past if at > horizon]
        return len(past)

    def _record(
        self, target: IPNetwork, now: float, expires: float | None, reason: str, count: int
    ) -> Ban:
        ban = Ban(target, now, expires, count, reason)
        self._past.setdefault(target, []).append(now)
        self._remember(ban)
        return ban

    def _remember(self, ban: Ban) -> None:
        single = ban.target.prefixlen == ban.target.max_prefixlen
        (self._active if single else self._active_nets)[ban.target] = ban
        if ban.expires_at is not None:
            heapq.heappush(self._ends, (ban.expires_at, next(self._order), ban.target))
            if len(self._ends) > 2 * (len(self._active) + len(self._active_nets)) + 64:
                self._compact_ends()

    def _compact_ends(self) -> None:
        """Drop the stale entries (lifted or replaced bans) so that they cannot pile up."""
        self._ends = [end for end in self._ends if self._current(end[2], end[0]) is not None]
        heapq.heapify(self._ends)

    def _current(self, target: IPNetwork, expires_at: float) -> Ban | None:
        """The active ban on `target` if it ends at `expires_at` (else the entry is stale)."""
        ban = self._active.get(target) or self._active_nets.get(target)
        return ban if ban is not None and ban.expires_at == expires_at else None

    def unban(self, target: IPNetwork, now: float, reason: str = "manual") -> Unban:
        """Lift the ban on `target`. A lifted ban no longer counts toward escalation: an admin
        who unbans has forgiven it."""
        lifted = self._active.pop(target, None) or self._active_nets.pop(target, None)
        if lifted is not None:
            past = self._past.get(target, [])
            if lifted.banned_at in past:
                past.remove(lifted.banned_at)
        return Unban(target, now, reason)

    def banned(self, address: IPAddress, now: float) -> Ban | None:
        """The active ban covering `address`, if any."""
        ban = self._active.get(as_network(address))
        if ban is not None and ban.active(now):
            return ban
        for net_ban in self._active_nets.values():
            if address in net_ban.target and net_ban.active(now):
                return net_ban
        return None

    def enforced(self, ban: Ban) -> bool:
        """Whether `ban` belongs in the kernel (`enforced_under` the current settings)."""
        return enforced_under(self.policy, ban)

    def active(self, now: float) -> list[Ban]:
        return [b for b in (*self._active.values(), *self._active_nets.values()) if b.active(now)]

    def watched(self) -> int:
        """How many sources the engine holds recent hits of (what `forget_quiet` trims)."""
        return len(self._recent)

    def expire(self, now: float) -> list[Ban]:
        """Forget the bans that ran out by `now` and return them, oldest end first. Costs
        O(log n) per ended ban, nothing more: the daemon asks twice a second."""
        ends, expired = self._ends, []
        while ends and ends[0][0] <= now:
            expires_at, _, target = heapq.heappop(ends)
            ban = self._current(target, expires_at)
            if ban is not None:
                self._forget(target)
                expired.append(ban)
        return expired

    def forget_quiet(self, now: float) -> int:
        """Forget sources whose window closed (their ports and hit counts both); returns how
        many sources are still watched."""
        horizon = now - self.policy.window
        for source in [s for s, recent in self._recent.items() if recent.last <= horizon]:
            del self._recent[source]
        self.protection.forget_peers(now)
        return len(self._recent)
