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
    Change,
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
from porttrap.policy.netbans import NetBans
from porttrap.policy.prefix import Evidence as SpreadEvidence
from porttrap.policy.prefix import Note, Spread, carve, prefix_of, prefix_reason, source_unit
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
    """What one hit led to: how it was classified, and the ban it caused, if any; `more`:
    the other changes it made (the rest of a carved prefix, a prefix ban the spread of bans
    called for and the bans inside it that end), `notes`: what the log must say of them."""

    outcome: Outcome
    ban: Ban | None = None
    more: tuple[Change, ...] = ()
    notes: tuple[Note, ...] = ()


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
        self._spread = Spread(policy.prefix)
        self._active: dict[IPNetwork, Ban] = {}
        self._active_nets = NetBans()
        # The earliest end of the timed bans (it may have been lifted since): `expire` does
        # nothing before it. A heap of ends would find each end at once, but at 100,000 bans
        # it costs 10 MiB; one pass over the bans when something is due costs 3 ms.
        self._next_end: float | None = None

    # -- state from the store ------------------------------------------------------------

    def restore(self, stored: Iterable[StoredBan], now: float) -> list[Change]:
        """Load bans from the store, oldest first (`Store.bans_to_restore`): the ones not
        lifted count toward escalation, and the newest of a target is active if it has not
        run out. Returns unbans for active bans that are now protected (an address added to
        the allow list, or now one of this host's), and the rest of a prefix ban carved
        around it."""
        # Written out for speed: at 100,000 bans every method call and every hash of an
        # ipaddress network (computed in Python) shows in the restart time.
        add, singles, nets = self._past.add, self._active, self._active_nets
        verified = Evidence.VERIFIED
        for record in stored:
            if record.lifted_at is not None:
                continue
            ban = record.ban
            target = ban.target
            if ban.reason[:7] == "prefix ":  # a prefix ban counts once, carved or not
                counted = prefix_of(ban.reason) or target
                self._past.count_once(counted, ban.banned_at, ban.evidence is verified, 0.0)
            else:
                add(target, ban.banned_at, ban.evidence is verified)
            same = singles if target.prefixlen == target.max_prefixlen else nets
            if ban.expires_at is None or ban.expires_at > now:
                same[target] = ban
            else:
                same.pop(target, None)
        ends = [b.expires_at for b in (*singles.values(), *nets.values())]
        self._next_end = min((end for end in ends if end is not None), default=None)
        overlapping: list[Change] = [*self._unban_overlapping(now)]
        return overlapping + self._unban_protected(now, scan=True)

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
    ) -> list[Change]:
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
        if policy.prefix != self.policy.prefix:
            self._spread = Spread(policy.prefix)
        self.policy = policy
        self.protection = protection
        self._trap_bans = {(t.proto, t.port, t.address): t.ban for t in traps if t.ban}
        return self._unban_protected(now, scan=True)

    def set_own_addresses(self, own: Iterable[IPAddress], now: float) -> list[Change]:
        """The host's addresses changed; returns unbans for any that were banned."""
        self.protection.set_own(own)
        return self._unban_protected(now, scan=False)

    def _unban_protected(self, now: float, scan: bool) -> list[Change]:
        """Unbans for active bans that protection forbids. The host's own addresses are looked
        up, not scanned for (they change often, bans are many); `scan` also checks every
        single-address ban against loopback and the allow list (on start: the list may have
        changed since the bans were made). A prefix ban (and an IPv6 source's prefix) is
        carved instead: what it covers, less the protected addresses, stays banned."""
        changes: list[Change] = []
        nets = [t for t in self._active_nets if self.protection.conflict(t)]
        for target in nets:
            changes += self._recarve(self._active_nets[target], now)
        found = [t for own in self.protection.own if (t := as_network(own)) in self._active]
        if scan:
            found += [t for t in self._active if self.protection.allowed(t.network_address)]
        changes += [
            self.unban(t, now, f"protected: {self.protection.conflict(t)}")
            for t in dict.fromkeys(found)
        ]
        return changes

    def _recarve(self, ban: Ban, now: float) -> list[Change]:
        """A network ban over a protected address: a prefix ban (or an IPv6 source's) is cut
        into the rest of it, with its times and reason; an admin's is lifted whole."""
        target = ban.target
        why = f"protected: {self.protection.conflict(target)}"
        holes = [hole for hole, _ in self.protection.inside(target)]
        pieces = carve(target, holes, self.policy.prefix.max_pieces)
        if not self._replaceable(ban) or not pieces:
            return [self.unban(target, now, why)]
        self._forget(target)  # not `unban`: the carve is no forgiveness, the count stays
        lifted = Unban(target, now, f"{why}; carved out")
        kept = [replace(ban, target=piece) for piece in pieces]
        for piece in kept:
            self._remember(piece)
        return [lifted, *kept]

    # -- hits ----------------------------------------------------------------------------

    def on_hit(self, hit: Hit, now: float) -> Verdict:
        """Classify one hit and ban its source when it completes the trigger. Runs for every
        packet a sensor reports (thousands a second under a scan): the work per hit is bounded
        by `trigger` and `confirm`, never by the traffic."""
        spared = self._spared(hit, now)
        if spared is not None:
            return Verdict(spared)
        unit = source_unit(hit.source, self.policy.prefix.v6_source)
        verified = self._triggered(hit, unit.network_address, now)
        if verified is None:
            return Verdict(Outcome.COUNTED)
        self._recent.pop(unit.network_address)
        if self.policy.respond(hit.proto) is Respond.LOG:
            # would have banned: reported (fail2ban may act on it), never banned
            return Verdict(Outcome.LOGGED)
        if not verified and not self._budget.take(unit.network_address, now):
            return Verdict(Outcome.HELD)
        base = self._base_time(hit)
        reason = trap_reason(hit.proto, hit.port)
        if unit.prefixlen == unit.max_prefixlen:
            ban = self._ban(unit, now, base, reason, verified)
            return self._spread_from(Verdict(Outcome.BANNED, ban), unit, verified, now)
        return self._ban_unit(hit.source, unit, now, base, reason=reason, verified=verified)

    def _ban_unit(
        self,
        source: IPAddress,
        unit: IPNetwork,
        now: float,
        base: float,
        *,
        reason: str,
        verified: bool,
    ) -> Verdict:
        """The ban of an IPv6 source as its prefix (`[ban.prefix] v6_source`), less the
        protected addresses inside it; the source alone when that cannot be (too many pieces,
        another network ban in the way)."""
        holes = self.protection.inside(unit)
        pieces = carve(unit, [hole for hole, _ in holes], self.policy.prefix.max_pieces)
        notes: list[Note] = []
        expires = self._expiry(unit, base, verified, now)
        if pieces and self._blocking(unit, expires, now) is None:
            ended = self._cover(unit, pieces, expires, now)
            bans = self._pieces(unit, pieces, now, base, reason=reason, verified=verified)
            if holes:
                notes.append(_carved_note(unit, holes, len(pieces)))
            verdict = Verdict(Outcome.BANNED, bans[0], (*ended, *bans[1:]), tuple(notes))
            return self._spread_from(verdict, unit, verified, now)
        why = "another network ban is in the way" if pieces else _too_many(unit, holes)
        notes.append(Note("prefix-refused", unit, f"{why}: {source} alone is banned"))
        ban = self._ban(as_network(source), now, base, reason, verified)
        return Verdict(Outcome.BANNED, ban, (), tuple(notes))

    def _pieces(
        self,
        target: IPNetwork,
        pieces: Sequence[IPNetwork],
        now: float,
        base: float,
        *,
        reason: str,
        verified: bool,
    ) -> list[Ban]:
        """Bans of `pieces` of `target`, as one ban of `target` (its count, its times)."""
        count = self._count_past(target, now, verified) + 1
        seconds = ban_duration(self.policy, base, count, verified)
        expires = None if seconds is None else now + seconds
        evidence = Evidence.VERIFIED if verified else Evidence.UNVERIFIED
        self._past.add(target, now, verified)
        bans = [Ban(piece, now, expires, count, reason, evidence) for piece in pieces]
        for ban in bans:
            self._remember(ban)
        return bans

    def _expiry(self, target: IPNetwork, base: float, verified: bool, now: float) -> float | None:
        """When the next ban of `target` would end (None: never)."""
        count = self._count_past(target, now, verified) + 1
        seconds = ban_duration(self.policy, base, count, verified)
        return None if seconds is None else now + seconds

    def _blocking(self, prefix: IPNetwork, expires: float | None, now: float) -> Ban | None:
        """An active network ban that a ban of `prefix` ending at `expires` cannot replace:
        one around it, or one inside it made by an admin (or adopted from the fleet as one)
        or lasting longer (the kernel's interval sets cannot hold both)."""
        for ban in self._active_nets.values():
            other = ban.target
            if other == prefix or other.version != prefix.version or not other.overlaps(prefix):
                continue  # the same prefix: an ending ban, which the new one replaces
            if not ban.active(now):
                continue
            if other.prefixlen <= prefix.prefixlen or not self._replaceable(ban):
                return ban
            if not _ends_by(ban, expires):
                return ban
        return None

    @staticmethod
    def _replaceable(ban: Ban) -> bool:
        """A ban a wider prefix ban may end: a trap's or a prefix ban (not an admin's)."""
        reason = ban.reason
        return prefix_of(reason) is not None or trapped_by(decided_for(reason)) is not None

    def _spread_from(
        self, verdict: Verdict, unit: IPNetwork, verified: bool, now: float
    ) -> Verdict:
        """The ban of `unit` is evidence against the prefixes around it: the prefix ban it
        completes, if any, joins the verdict."""
        found = self._spread.add(unit, now, verified, now - self.policy.window)
        if found is None:
            return verdict
        changes, notes = self._prefix_ban(found, now)
        return replace(
            verdict, more=verdict.more + tuple(changes), notes=verdict.notes + tuple(notes)
        )

    def _prefix_ban(self, found: SpreadEvidence, now: float) -> tuple[list[Change], list[Note]]:
        """Ban `found.prefix` less the protected addresses inside it; the bans inside it that
        would end no later end now (it covers them). Refused, with a note, when that takes
        more than `max_pieces` CIDRs, when a network ban stands in the way, or (forgeable
        evidence) over the budget."""
        prefix, settings = found.prefix, self.policy.prefix
        holes = self.protection.inside(prefix)
        pieces = carve(prefix, [hole for hole, _ in holes], settings.max_pieces)
        if not pieces:
            why = _too_many(prefix, holes) if pieces is None else "all of it is protected"
            return [], [Note("prefix-refused", prefix, why)]
        expires = self._expiry(prefix, self.policy.time, found.verified, now)
        if (blocking := self._blocking(prefix, expires, now)) is not None:
            why = f"the ban on {show(blocking.target)} stands in the way ({blocking.reason})"
            return [], [Note("prefix-refused", prefix, why)]
        if not found.verified and not self._budget.take(prefix.network_address, now):
            why = "over the budget for bans on evidence that can be forged"
            return [], [Note("prefix-refused", prefix, why)]
        reason = prefix_reason(prefix, found.sources, len(holes))
        ended = self._cover(prefix, pieces, expires, now)
        base = self.policy.time
        bans = self._pieces(prefix, pieces, now, base, reason=reason, verified=found.verified)
        self._spread.clear(prefix)
        sources = ", ".join(show(s) for s in found.sources)
        notes = [Note("prefix-ban", prefix, f"{len(found.sources)} banned sources: {sources}")]
        if holes:
            notes.append(_carved_note(prefix, holes, len(pieces)))
        return [*ended, *bans], notes

    def _cover(
        self,
        prefix: IPNetwork,
        pieces: Sequence[IPNetwork],
        expires: float | None,
        now: float,
    ) -> list[Change]:
        """End the bans inside `prefix` that would end no later than its ban (`expires`): the
        prefix ban (its `pieces`) covers them. They keep counting toward their escalation
        (this is no forgiveness); a single address's ban that outlasts it stays, and so does
        one in a hole of the carve (a live client that scanned: no piece covers it). One pass
        over the bans: prefix bans are few, each needs `spread` bans first."""
        version, shift = prefix.version, prefix.max_prefixlen - prefix.prefixlen
        first = int(prefix.network_address) >> shift
        inside = [
            ban
            for bans in (self._active, self._active_nets)
            for target, ban in bans.items()
            if target.version == version
            and target.prefixlen > prefix.prefixlen
            and int(target.network_address) >> shift == first
        ]
        why = f"covered by the prefix ban on {show(prefix)}"
        ended: list[Change] = []
        whole = len(pieces) == 1 and pieces[0] == prefix
        for ban in inside:
            if not whole and ban.target.prefixlen == ban.target.max_prefixlen:
                held = ban.target
                if not any(held.subnet_of(piece) for piece in pieces):  # type: ignore[arg-type]
                    continue  # in a hole of the carve: no piece covers it, its ban stays
            if _ends_by(ban, expires):
                self._forget(ban.target)
                ended.append(Unban(ban.target, now, why))
        return ended

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

    def _triggered(self, hit: Hit, key: IPAddress, now: float) -> bool | None:
        """Count the hit. None while it does not ban; else whether the ban rests on verified
        evidence. It bans when its source touched `trigger` distinct trap ports within the
        window (`client_trigger` for a recent client's handshakes) and, unless the source is
        proven, sent `confirm` hits in it: one forged packet must not ban an innocent."""
        recent = self._recent.of(key)
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

    def unban_all(self, target: IPNetwork, now: float, reason: str = "manual") -> list[Unban]:
        """`unban`, and for a prefix the pieces a carve left of its ban: an admin names the
        prefix, the kernel holds the pieces."""
        if target.prefixlen == target.max_prefixlen:
            return [self.unban(target, now, reason)]
        pieces = [  # a piece of one address is held with the single-address bans
            t
            for bans in (self._active_nets, self._active)
            for t, ban in bans.items()
            if t != target and t.version == target.version and prefix_of(ban.reason) == target
        ]
        return [self.unban(target, now, reason), *(self.unban(t, now, reason) for t in pieces)]

    def covering(self, address: IPAddress, now: float) -> Ban | None:
        """The active network ban that holds `address`, if any (what `unban ADDRESS` names
        when the address has no ban of its own)."""
        return self._active_nets.covering(address, now)

    def banned(self, address: IPAddress, now: float) -> Ban | None:
        """The active ban covering `address`, if any."""
        ban = self._active.get(as_network(address))
        if ban is not None and ban.active(now):
            return ban
        return self._active_nets.covering(address, now)

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


def _too_many(prefix: IPNetwork, holes: Sequence[tuple[IPNetwork, str]]) -> str:
    return (
        f"{show(prefix)} less its {len(holes)} protected addresses would take more CIDRs than "
        "[ban.prefix] max_pieces"
    )


def _carved_note(prefix: IPNetwork, holes: Sequence[tuple[IPNetwork, str]], pieces: int) -> Note:
    spared = ", ".join(f"{show(hole)} ({what})" for hole, what in holes[:5])
    more = f" and {len(holes) - 5} more" if len(holes) > 5 else ""
    return Note("prefix-carved", prefix, f"left out {spared}{more}: banned as {pieces} CIDRs")


def _ends_by(ban: Ban, expires: float | None) -> bool:
    """Whether `ban` ends no later than `expires` (None: never)."""
    end = ban.expires_at
    return expires is None or (end is not None and end <= expires)
