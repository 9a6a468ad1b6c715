"""Hits in, decisions out: trigger and window, confirmation, escalation, permanent bans,
protection.

Only a completed TCP handshake proves where a hit came from. A stealth probe (a SYN, FIN ...)
or a UDP datagram can carry any source address, so anyone could name a third party. Such hits:
- ban only when the source sent several (`confirm`) within the window;
- never ban a recent client of this host (the kernel saw it complete a connection) nor a peer
  (the host talks to it: its resolver, its gateway, a link-local neighbour), whose address a
  forger would pick to cut the host off;
- make bans that are never permanent and never longer than `unverified_max_time`, counted
  apart from verified ones (`escalation.Past`), and no more of them a second than the budgets
  allow (`budget.Budget`): what a forger can do is bounded.
A source that completed a handshake to a trap within the window is proven: its probes count as
verified evidence. A recent client must do so on `client_trigger` distinct trap ports (a health
check touches one). Peers of live SSH sessions to the host are never banned by any hit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

from porttrap.config.schema import BanPolicy, Respond, Trap
from porttrap.errors import UsageError
from porttrap.model import (
    Ban,
    Evidence,
    Hit,
    IPAddress,
    IPNetwork,
    Outcome,
    Proto,
    StoredBan,
    Unban,
    as_network,
    ban_problem,
    decided_for,
    fleet_origin,
    fleet_reason,
    show,
    trap_reason,
    trapped_by,
    unmap_network,
)
from porttrap.policy.budget import Budget
from porttrap.policy.escalation import Past, ban_duration
from porttrap.policy.protect import Protection
from porttrap.policy.recent import Watch
from porttrap.units import iso

KEPT_FROM_KERNEL = "kept from the kernel"  # the reason of a ban the store had lost

__all__ = ["Policy", "Refusal", "Verdict", "ban_duration", "enforced_under"]

_ANY: dict[int, IPAddress] = {4: IPv4Address("0.0.0.0"), 6: IPv6Address("::")}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a ban from the fleet is not held here; `protected`: the local protection said no
    (recorded in the history), rather than a ban already held, an ended one or a budget."""

    why: str
    protected: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one hit led to: how it was classified, and the ban it caused, if any."""

    outcome: Outcome
    ban: Ban | None = None


ENDING = 2.0  # seconds: a ban this close to its end may be gone from the kernel already


def _ending(ban: Ban, now: float) -> bool:
    """Whether `ban` is within `ENDING` of its end, and has held at least that long. A hit
    from its target then counts (and may ban again): the hit reached a trap, so the kernel
    has let the ban go, its timer a little ahead of this clock, and a scanner must not slip
    through the gap. A ban just made is never ending: the hits of the same burst (a scan's
    probes, read in one batch before the kernel had the ban) must not ban again and again."""
    end = ban.expires_at
    return end is not None and end - now < ENDING and now - ban.banned_at >= ENDING


def enforced_under(policy: BanPolicy, ban: Ban) -> bool:
    """Whether `ban` belongs in the kernel under `policy`. A trap ban belongs there when its
    protocol responds with "ban" ("command": the command does the banning; "log": nothing is
    banned); an admin's ban does unless no protocol responds with "ban" (the kernel is then
    porttrap's to leave alone)."""
    trap = trapped_by(decided_for(ban.reason))  # another host's trap ban too
    if trap is not None:  # only "ban" makes trap bans here; another host's may come under
        return policy.respond(trap[0]) is Respond.BAN  # any setting of this one's
    return Respond.BAN in (policy.respond_tcp, policy.respond_udp)


class Policy:
    """The ban policy and the state it needs: recent hits, past bans and active bans.

    A source is banned once it touched `trigger` distinct trap ports within `window`. A hit that
    cannot prove its source (see the module docstring) must in addition be at least the
    `confirm`-th hit from that source within the window, and one from a recent client or a
    peer never counts. Every method takes `now` (seconds since the epoch); nothing here reads
    a clock.
    """

    def __init__(self, policy: BanPolicy, traps: Sequence[Trap], protection: Protection) -> None:
        self.policy = policy
        self.protection = protection
        self._trap_bans = {(t.proto, t.port, t.address): t.ban for t in traps if t.ban}
        self._recent = Watch(policy.confirm)
        self._budget = Budget(policy.unverified_rate, policy.unverified_prefix_rate)
        self._past = Past()
        self._active: dict[IPNetwork, Ban] = {}
        self._active_nets: dict[IPNetwork, Ban] = {}
        # The earliest end of the timed bans (it may have been lifted since): `expire` does
        # nothing before it. A heap of ends would find each end at once, but at 100,000 bans
        # it costs 10 MiB; one pass over the bans when something is due costs 3 ms.
        self._next_end: float | None = None

    # -- state from the store ------------------------------------------------------------

    def restore(self, stored: Iterable[StoredBan], now: float) -> list[Unban]:
        """Load bans from the store, oldest first (`Store.bans_to_restore`): the ones not
        lifted count toward escalation, and the newest of a target is active if it has not
        run out. Returns unbans for active bans that are now protected (an address added to
        the allow list, or now one of this host's)."""
        # Written out for speed: at 100,000 bans every method call and every hash of an
        # ipaddress network (computed in Python) shows in the restart time.
        add, singles, nets = self._past.add, self._active, self._active_nets
        verified = Evidence.VERIFIED
        for record in stored:
            if record.lifted_at is not None:
                continue
            ban = record.ban
            target = ban.target
            add(target, ban.banned_at, ban.evidence is verified)
            same = singles if target.prefixlen == target.max_prefixlen else nets
            if ban.expires_at is None or ban.expires_at > now:
                same[target] = ban
            else:
                same.pop(target, None)
        ends = [b.expires_at for b in (*singles.values(), *nets.values())]
        self._next_end = min((end for end in ends if end is not None), default=None)
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
        self._recent.resize(policy.confirm)
        if (policy.unverified_rate, policy.unverified_prefix_rate) != (
            self.policy.unverified_rate,
            self.policy.unverified_prefix_rate,
        ):
            held = self._budget.held
            self._budget = Budget(policy.unverified_rate, policy.unverified_prefix_rate, now)
            self._budget.held = held
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
        verified = self._triggered(hit, now)
        if verified is None:
            return Verdict(Outcome.COUNTED)
        self._recent.pop(hit.source)
        if self.policy.respond(hit.proto) is Respond.LOG:
            # would have banned: reported (fail2ban may act on it), never banned
            return Verdict(Outcome.LOGGED)
        if not verified and not self._budget.take(hit.source, now):
            return Verdict(Outcome.HELD)
        base = self._base_time(hit)
        reason = trap_reason(hit.proto, hit.port)
        target = as_network(hit.source)
        return Verdict(Outcome.BANNED, self._ban(target, now, base, reason, verified))

    def _spared(self, hit: Hit, now: float) -> Outcome | None:
        """Why `hit` cannot count toward a ban, or None when it counts."""
        if hit.proto is Proto.UDP and self.protection.aimed_elsewhere(hit.local):
            return Outcome.NOT_UNICAST
        protected = self.protection.outcome_for(hit.source)
        if protected is not None:
            return protected
        if (ban := self.banned(hit.source, now)) is not None and not _ending(ban, now):
            return Outcome.ALREADY_BANNED
        if not hit.verified:
            # Forged probes naming a real client or a peer would cut the host off from it.
            if hit.client:
                return Outcome.CLIENT
            if hit.peer or self.protection.peer(hit.source):
                return Outcome.PEER
        return None

    def _triggered(self, hit: Hit, now: float) -> bool | None:
        """Count the hit. None while it does not ban; else whether the ban rests on verified
        evidence. It bans when its source touched `trigger` distinct trap ports within the
        window (`client_trigger` for a recent client's handshakes) and, unless the source is
        proven, sent `confirm` hits in it: one forged packet must not ban an innocent."""
        recent = self._recent.of(hit.source)
        horizon = now - self.policy.window
        ports = recent.add((hit.proto, hit.port), now, horizon, hit.verified)
        needed = self.policy.trigger
        if hit.client and hit.verified:
            needed = max(needed, self.policy.client_trigger)
        if ports < needed:
            return None
        if recent.proven(horizon):
            return True
        return False if recent.confirmed(horizon) else None

    def _base_time(self, hit: Hit) -> float:
        """The ban time of the trap hit: on its address, on every address of its family
        ("::", "0.0.0.0": a hit names the address it reached, never those), or on all."""
        bans, key = self._trap_bans, (hit.proto, hit.port)
        specific = bans.get((*key, hit.local))
        family = bans.get((*key, _ANY[hit.local.version]))
        return specific or family or bans.get((*key, None)) or self.policy.time

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
        """A ban decided outside this policy (one the kernel kept when the store lost it),
        held as it is (its times, its reason); it counts toward escalation. Refused, with
        why, when it has ended, when the local protection forbids it (own addresses, the
        allow list, loopback, a peer), when a ban held here already lasts as long, when it
        would overlap a network ban, or when its times are out of bounds (`ban_problem`).
        An IPv4-mapped target is held as IPv4."""
        ban = replace(ban, target=unmap_network(ban.target))
        why = self._refusal(ban, now)
        if why is not None:
            return why
        self._past.add(ban.target, ban.banned_at, ban.verified)
        self._remember(ban)
        return ban

    def adopt_fleet(
        self, ban: Ban, origin: str, now: float, clients: frozenset[IPAddress] = frozenset()
    ) -> Ban | Refusal:
        """A ban host `origin` of the fleet decided, as this host holds it: it counts toward
        escalation here whatever becomes of it (the fleet's third ban of a scanner is the third
        here); a trap's ban lasts what this host's `[ban]` settings give that count, an admin's
        keeps its times; evidence that can be forged is bounded as here (`unverified_max_time`,
        never permanent, within this host's budgets). Refused (a `Refusal`) when it has ended,
        when the local protection forbids it (`protected`: own addresses, allow list,
        loopback, a peer, a live client in `clients`), or when a ban held here covers it.
        Written for speed: a host that joins a fleet adopts 100,000 bans in one go."""
        if (problem := ban_problem(ban.banned_at, ban.expires_at)) is not None:
            return Refusal(problem)
        target = unmap_network(ban.target)
        verified = ban.evidence is Evidence.VERIFIED
        horizon = now - self.policy.forget_after
        count = max(ban.ban_count, self._past.count_once(target, ban.banned_at, verified, horizon))
        expires = self._fleet_expiry(ban, count, verified)
        if expires is not None and expires <= now:
            return Refusal("it has ended")
        if why := self._fleet_protected(target, clients):
            return Refusal(why, protected=True)
        if not verified and not self._budget.take(target.network_address, now):
            return Refusal("over this host's budget for bans on evidence that can be forged")
        if why := self._fleet_held(target, expires, now):
            return Refusal(why)
        reason = fleet_reason(ban.reason, origin)
        adopted = Ban(target, ban.banned_at, expires, count, reason, ban.evidence)
        self._remember(adopted)
        return adopted

    def _fleet_held(self, target: IPNetwork, expires: float | None, now: float) -> str | None:
        """Why a ban held here stands in the way: it lasts as long, or it is a network ban
        that the new one would overlap."""
        single = target.prefixlen == target.max_prefixlen
        held = (self._active if single else self._active_nets).get(target)
        if (
            held is not None
            and held.active(now)
            and (held.expires_at is None or held.expires_at >= (expires or math.inf))
        ):
            return f"already banned here until {iso(held.expires_at) or 'forever'}"
        overlap = [] if single else self._overlaps([target], now)
        return overlap[0] if overlap else None

    def _fleet_expiry(self, ban: Ban, count: int, verified: bool) -> float | None:
        """When `ban` ends here: a trap's ban after what `[ban]` here gives its count (a
        forgeable one never longer than `unverified_max_time`, never permanent); an admin's
        when it was given to."""
        if verified and trapped_by(ban.reason) is None:
            return ban.expires_at
        seconds = ban_duration(self.policy, self.policy.time, count, verified)
        return None if seconds is None else ban.banned_at + seconds

    def _fleet_protected(self, target: IPNetwork, clients: frozenset[IPAddress]) -> str | None:
        single = target.prefixlen == target.max_prefixlen
        address = target.network_address
        if single and address not in clients and self.protection.free(address):
            return None
        if why := self.protection.conflict(target):
            return why
        if peer := self.protection.peer_in(target):
            return f"{show(target)} holds {peer}, a peer of this host"
        if target.prefixlen == target.max_prefixlen:
            client = target.network_address if target.network_address in clients else None
        else:
            client = next((c for c in sorted(clients, key=str) if c in target), None)
        return None if client is None else f"{client} is a live client of this host"

    def unban_fleet(
        self, target: IPNetwork, now: float, origin: str | None, reason: str
    ) -> Unban | None:
        """Lift the ban on `target` as the fleet asks: only a ban adopted from `origin`, or
        (origin None: an admin's fleet-wide unban) any. None when nothing here is lifted."""
        held = self._held(target, now)
        if held is None or (origin is not None and fleet_origin(held.reason) != origin):
            return None
        return self.unban(target, now, reason)

    def adopt_kernel(
        self, held: Iterable[tuple[IPNetwork, float | None]], now: float
    ) -> tuple[list[Ban], list[str]]:
        """Bans the kernel holds (target, seconds left; None: permanent) that no active ban
        here covers: a store write failed before the last stop. Each is held again with the
        kernel's time left, as an admin's ban would be ("kept from the kernel"); returns them,
        and why the others were refused (the local protection, an overlap)."""
        adopted: list[Ban] = []
        refused: list[str] = []
        for target, remaining in held:
            if self._held(target, now) is not None or (remaining is not None and remaining < 1):
                continue
            expires = None if remaining is None else now + remaining
            count = self._count_past(target, now, verified=True) + 1
            ban = Ban(target, now, expires, count, KEPT_FROM_KERNEL)
            kept = self.adopt(ban, now)
            if isinstance(kept, str):
                refused.append(f"{show(target)}: {kept}")
            else:
                adopted.append(kept)
        return adopted, refused

    def shift(self, seconds: float) -> None:
        """The wall clock jumped by `seconds`: every timed ban ends that much later (earlier),
        so that it lasts the time it was given, as the kernel's timeout does."""
        for bans in (self._active, self._active_nets):
            for target, ban in bans.items():
                if ban.expires_at is not None:
                    bans[target] = replace(ban, expires_at=ban.expires_at + seconds)
        ends = [b.expires_at for b in (*self._active.values(), *self._active_nets.values())]
        self._next_end = min((end for end in ends if end is not None), default=None)

    def _refusal(self, ban: Ban, now: float) -> str | None:
        target = ban.target
        if (problem := ban_problem(ban.banned_at, ban.expires_at)) is not None:
            return problem
        if not ban.active(now):
            return "it has ended"
        if why := self.protection.conflict(target):
            return why
        if peer := self.protection.peer_in(target):
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
        """An admin's ban: verified evidence (the admin vouches for it)."""
        count = self._count_past(target, now, verified=True) + 1
        if permanent:
            expires = None
        elif duration is not None:
            expires = now + duration
        else:
            seconds = ban_duration(self.policy, self.policy.time, count)
            expires = None if seconds is None else now + seconds
        return self._record(Ban(target, now, expires, count, reason))

    def _ban(self, target: IPNetwork, now: float, base: float, reason: str, verified: bool) -> Ban:
        count = self._count_past(target, now, verified) + 1
        seconds = ban_duration(self.policy, base, count, verified)
        expires = None if seconds is None else now + seconds
        evidence = Evidence.VERIFIED if verified else Evidence.UNVERIFIED
        return self._record(Ban(target, now, expires, count, reason, evidence))

    def _count_past(self, target: IPNetwork, now: float, verified: bool) -> int:
        return self._past.count(target, verified, now - self.policy.forget_after)

    def _record(self, ban: Ban) -> Ban:
        self._past.add(ban.target, ban.banned_at, ban.verified)
        self._remember(ban)
        return ban

    def _remember(self, ban: Ban) -> None:
        single = ban.target.prefixlen == ban.target.max_prefixlen
        (self._active if single else self._active_nets)[ban.target] = ban
        end = ban.expires_at
        if end is not None and (self._next_end is None or end < self._next_end):
            self._next_end = end

    def unban(self, target: IPNetwork, now: float, reason: str = "manual") -> Unban:
        """Lift the ban on `target`. A lifted ban no longer counts toward escalation: an admin
        who unbans has forgiven it."""
        lifted = self._active.pop(target, None) or self._active_nets.pop(target, None)
        if lifted is not None:
            self._past.remove(target, lifted.banned_at, lifted.verified)
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

    @property
    def evicted(self) -> int:
        """Sources forgotten before their window closed, to make room (a flood)."""
        return self._recent.evicted

    @property
    def past_evicted(self) -> int:
        """Addresses whose unverified ban history was forgotten to make room (a flood)."""
        return self._past.evicted

    @property
    def held(self) -> int:
        """Bans on unverified evidence held back, over a budget."""
        return self._budget.held

    def expire(self, now: float) -> list[Ban]:
        """Forget the bans that ran out by `now` and return them. The daemon asks twice a
        second: nothing is done before the earliest end; then one pass finds every ended ban
        and the next end."""
        if self._next_end is None or self._next_end > now:
            return []
        expired: list[Ban] = []
        next_end: float | None = None
        for ban in (*self._active.values(), *self._active_nets.values()):
            end = ban.expires_at
            if end is None:
                continue
            if end <= now:
                expired.append(ban)
            elif next_end is None or end < next_end:
                next_end = end
        for ban in expired:
            self._forget(ban.target)
        self._next_end = next_end
        return expired

    def forget_quiet(self, now: float) -> int:
        """Forget sources whose window closed (their ports and hit counts both); returns how
        many sources are still watched."""
        return self._recent.forget_quiet(now - self.policy.window)
