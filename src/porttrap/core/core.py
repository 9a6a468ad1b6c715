"""The daemon's core: `handle(event, now)` returns the commands that the event calls for.

It holds the policy (which hits ban, for how long), the daemon's counters, the changes decided
in the current loop turn, the hits waiting to be stored, the kernel sensor's desired state and
a reload in progress. It reads no clock (`now` is given), opens nothing and waits for nothing:
the shell (`porttrap.daemon.shell`) turns sensor reports and timers into events and carries out
the commands. Tests feed events and assert the exact commands (`porttrap.testing.playbook`).

The paths, in the order of the commands each returns:
- a hit: the policy's verdict; a ban joins the turn's batch (`FlushSoon` for the first); the
  hit's actions and log line. At the end of the turn (`TurnEnded`) the batch goes out:
  `first` actions, the kernel (one `Apply`), the store, the log, the other actions.
- an admin's ban or unban: the same, at once, then the answer once the store has it.
- a tick (0.5 s): bans that ran out (`Expire`), hits to the store (they give way when the disk
  is far behind; bans never do); every 5 s the firewall check and upkeep; every minute the
  pruning of old hits and quiet sources.
- the kernel sensor (stealth, advanced): served ports never trapped, block sets rotated.
- a reload: refused, or prepared by the shell, then the table rebuilt when its rules change,
  then committed; see `_reload_*`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from porttrap.config.schema import Config, Event, Trap, TrapMode
from porttrap.core import reload
from porttrap.core.commands import (
    ActionsAfter,
    ActionsBefore,
    ActionsExpired,
    ActionsHit,
    ActionsStart,
    Answer,
    Apply,
    CheckFirewall,
    Command,
    Expire,
    FlushSoon,
    Log,
    LogChanges,
    Maintain,
    PrepareReload,
    PruneHits,
    RecordChanges,
    RecordHidden,
    RecordHits,
    Refuse,
    Reloaded,
    ReplaceActions,
    Schedule,
    SetGateways,
    Setup,
    SetupReason,
    StopHolding,
    UpdateCatchAll,
    UpdateSessions,
    UpdateTraps,
)
from porttrap.core.events import (
    ActionsReplaced,
    AddressesChanged,
    AdminBan,
    AdminUnban,
    BlocksRotated,
    ClientsChanged,
    CountersRead,
    FirewallChecked,
    FirewallFailed,
    FirewallMissing,
    FleetLinkChanged,
    FleetReceived,
    GatewaysChanged,
    HitSeen,
    HoldEnded,
    Reconcile,
    ReloadCommitted,
    ReloadFailed,
    ReloadInvalid,
    ReloadPrepared,
    ReloadRequested,
    ServedPortsChanged,
    ServeFailed,
    SessionsChanged,
    Started,
    Stopping,
    StoreFailed,
    StoreRecovered,
    SynHeld,
    Tick,
    TurnEnded,
)
from porttrap.core.events import Event as CoreEvent
from porttrap.core.fleet import MANUAL, MANUAL_FLEET, FleetSide
from porttrap.core.hold import DEFAULT_HOLD, HoldFigures, Holds
from porttrap.core.kernel import KernelState
from porttrap.core.snapshot import IoFigures, KernelView, Snapshot
from porttrap.core.stats import Stats
from porttrap.core.views import ban_json
from porttrap.errors import UsageError
from porttrap.model import Ban, Change, Hit, IPAddress, IPNetwork, Outcome, Proto, Unban, show
from porttrap.policy import Policy, Protection
from porttrap.policy.budget import Bucket
from porttrap.policy.engine import ENDING, enforced_under
from porttrap.policy.prefix import Note, prefix_of
from porttrap.sensorspec import GENERATIONS, SensorState, no_ports, spec_from_config

TICK = 0.5  # seconds between ticks: the shell feeds `Tick` this often
MAX_BUFFERED_HITS = 100_000  # hits waiting for the store; past it they are counted, not kept
MAX_WRITE_BACKLOG = 20  # store jobs waiting (about 10 s of hit batches) before hits give way
MAX_ANSWERED = 1000  # bans listed in the answer to a bulk ban; the count covers all
RECONCILE_DELAY = 5.0  # seconds before a refused kernel change is tried again, as a rebuild
CHECK_EVERY = round(5.0 / TICK)  # ticks between checks that porttrap's ruleset is still there
MAINTAIN_EVERY = round(60.0 / TICK)  # ticks between prunings of old hits and quiet sources
LIST_BANS = 1000  # up to this many bans a check lists them (about 15 ms) and compares each;
COUNT_EVERY_BANS = 20_000  # above, it counts them (about 0.5 s at 100,000): every check up
# to this many, then once in (bans / this) checks
CLOCK_JUMP = 2.0  # seconds of difference between the wall clock's and the monotonic clock's
# advance from one tick to the next that count as a jump of the wall clock
STORE_HINT = (
    "bans stay in the kernel and in memory, and the write is tried again until it succeeds; "
    "free space in (or fix) the state_dir; a restart meanwhile keeps the kernel's bans"
)
REFUSED_HINT = "the running configuration stays; fix the file and reload again"

Handler = Callable[[Any, float], list[Command]]


def protection(config: Config) -> Protection:
    return Protection(config.allow.networks, patterns=config.allow.patterns)


def catch_all_port(config: Config) -> int:
    """Where the catch-all listener for clients' redirected SYNs listens (0: nowhere)."""
    spec = spec_from_config(config)
    return spec.catch_all if spec.redirect else 0


def connect_traps(config: Config) -> tuple[Trap, ...]:
    """The traps the socket sensor sets (those of protocols in connect mode)."""
    return tuple(t for t in config.traps if config.modes.of(t.proto) is TrapMode.CONNECT)


class Core:
    """Events in, commands out. `started_at`: when the daemon started (for status)."""

    def __init__(self, config: Config, started_at: float) -> None:
        self.config = config
        self.started_at = started_at
        self.policy = Policy(config.ban, config.traps, protection(config))
        self.stats = Stats()
        self.hits_not_stored = 0  # the store fell behind
        self.hits_sampled = 0  # over [store] hit_rate
        self._storable = Bucket(config.store.hit_rate, started_at)
        self.kernel = KernelState(spec_from_config(config)) if config.modes.kernel else None
        self._pending: list[Change] = []  # decided this loop turn, not yet sent out
        self._arrivals: list[float] = []  # the shell's stamps of the hits that banned
        self._flush_asked = False
        self._hits: list[tuple[Hit, Outcome]] = []
        self._reconcile_due = False
        self._stopping = False
        self._ticks = 0
        self._reload: tuple[Config, tuple[str, ...]] | None = None
        self.store_error: str | None = None  # why store writes fail now (None: they succeed)
        self.store_failing_since: float | None = None
        self.clock_skew = 0.0  # how far the wall clock jumped since the start, in all
        self._last_tick: tuple[float, float] | None = None  # (wall, monotonic) of the last
        self._checks = 0
        self.fleet = FleetSide(config.fleet)
        # SYNs held in the kernel (docs/hold.md)
        kernel = config.kernel
        self.holds = Holds(kernel.hold or DEFAULT_HOLD, kernel.hold_memory, kernel.client_size)
        self._read_actions(config)
        self._handlers: dict[type, Handler] = {
            Started: self._started,
            HitSeen: self._hit,
            TurnEnded: self._turn_ended,
            Tick: self._tick,
            AddressesChanged: self._addresses,
            ServedPortsChanged: self._served,
            CountersRead: self._counters,
            BlocksRotated: self._rotated,
            FirewallFailed: self._firewall_failed,
            FirewallMissing: self._firewall_missing,
            FirewallChecked: self._firewall_checked,
            StoreFailed: self._store_failed,
            StoreRecovered: self._store_recovered,
            Reconcile: self._reconcile,
            AdminBan: self._admin_ban,
            AdminUnban: self._admin_unban,
            FleetReceived: self._fleet_received,
            FleetLinkChanged: self._fleet_link,
            SessionsChanged: self._sessions,
            ClientsChanged: self._clients,
            GatewaysChanged: self._gateways,
            ReloadRequested: self._reload_requested,
            ReloadInvalid: self._reload_invalid,
            ReloadPrepared: self._reload_prepared,
            ReloadCommitted: self._reload_committed,
            ReloadFailed: self._reload_failed,
            ActionsReplaced: self._actions_replaced,
            ServeFailed: self._serve_failed,
            SynHeld: self._syn_held,
            HoldEnded: self.holds.ended,
            Stopping: self._stop,
        }

    def handle(self, event: CoreEvent, now: float) -> list[Command]:
        """The commands `event`, happening at `now` (seconds since the epoch), calls for."""
        return self._handlers[type(event)](event, now)

    def _read_actions(self, config: Config) -> None:
        actions = config.actions
        self._hit_actions = any(Event.HIT in a.on for a in actions.commands) or any(
            Event.HIT in a.on for a in actions.webhooks
        )
        self._first_actions = any(command.first for command in config.actions.commands)

    # -- start and stop ------------------------------------------------------------------

    def _started(self, event: Started, now: float) -> list[Command]:
        """Bans from the store back into the policy and, in one transaction, the kernel."""
        self.policy.protection.set_own(event.own)
        self.policy.protection.set_gateways(event.gateways)
        if self.kernel is not None and event.served is not None:
            self.kernel.start(event.served)
        commands: list[Command] = self._sessions(SessionsChanged(event.sessions), now)
        unbans = self.policy.restore(event.stored, now)
        if unbans:  # no Apply: the setup leaves them out
            commands += [RecordChanges(unbans), LogChanges(unbans), ActionsAfter(unbans)]
        commands += self._keep_kernel_bans(event.kernel, now)
        commands.append(self._setup(now, SetupReason.START))
        commands.append(ActionsStart(self.policy.active(now)))
        return commands

    def _keep_kernel_bans(
        self, held: Sequence[tuple[IPNetwork, float | None]], now: float
    ) -> list[Command]:
        """Bans the kernel holds that the store lacks (a write failed, the disk was full)
        are kept with the kernel's time left, and recorded: an acknowledged ban is never
        dropped by a restart."""
        kept, refused = self.policy.adopt_kernel(held, now)
        commands: list[Command] = [
            Log("kernel-ban-not-kept", logging.WARNING, {"why": why}) for why in refused
        ]
        if kept:
            why = "in the kernel but not in the store (a store write failed before the stop)"
            fields = {"count": len(kept), "why": why}
            commands += [Log("bans-kept-from-kernel", logging.WARNING, fields)]
            commands += [RecordChanges(kept), LogChanges(kept)]
        return commands

    def restore_since(self, now: float) -> float:
        """How far back the start reads bans: those older no longer count toward escalation."""
        return now - self.config.ban.forget_after

    def _stop(self, _event: Stopping, now: float) -> list[Command]:
        """Whatever is decided goes out; every hit kept is written. Nothing is scheduled from
        now on (a refusal is logged, not retried)."""
        self._stopping = True
        commands = self.holds.stopping() + self._flush(now)
        if self._hits:
            batch, self._hits = self._hits, []
            commands.append(RecordHits(batch))
        return commands

    # -- hits ----------------------------------------------------------------------------

    def _hit(self, event: HitSeen, now: float) -> list[Command]:
        hit = event.hit
        verdict = self.policy.on_hit(hit, now)
        outcome = verdict.outcome
        changes = [] if verdict.ban is None else [verdict.ban, *verdict.more]
        commands = self._touched(hit, outcome, now) if self._holding else []
        commands += self._queue(changes, event.arrived)
        commands += [_note(note) for note in verdict.notes]
        self.stats.hit(hit, outcome)
        if self._hit_actions:  # bounded by [actions] queue, whatever the flood
            commands.append(ActionsHit(hit, outcome, verdict.ban))
        self._keep(hit, outcome, verdict.ban is not None, now)
        commands.append(Log("hit", _hit_level(hit, outcome), _hit_fields(hit, outcome)))
        return commands

    # -- the hold of new sources' first SYNs (docs/hold.md) ------------------------------

    @property
    def _holding(self) -> bool:
        return self.kernel is not None and self.kernel.spec.hold

    def _syn_held(self, event: SynHeld, now: float) -> list[Command]:
        return self._hidden(self.holds.held(event, now), now)

    def _touched(self, hit: Hit, outcome: Outcome, now: float) -> list[Command]:
        return self._hidden(self.holds.touched(hit.source, hit.kind, outcome, now), now)

    def _hidden(self, commands: list[Command], now: float) -> list[Command]:
        """The hold's commands, with each hidden probe kept for the store (as a hit of
        outcome `hidden`, stored whatever the rate: one per service a scanner missed) and
        logged."""
        out: list[Command] = []
        for command in commands:
            if not isinstance(command, RecordHidden):
                out.append(command)
                continue
            local = _UNSPECIFIED[command.source.version]
            hit = Hit(command.at, command.source, 0, local, command.port, Proto.TCP, "syn")
            self._keep(hit, Outcome.HIDDEN, True, now)
            fields = {"src": command.source, "port": command.port, "trap": command.kind}
            out.append(Log("hidden", logging.INFO, fields))
        return out

    def hold_figures(self) -> HoldFigures | None:
        """What the hold did, when it is on (None: off)."""
        return self.holds.figures() if self._holding else None

    def _keep(self, hit: Hit, outcome: Outcome, banned: bool, now: float) -> None:
        """The hit for the store: every one that banned; the others up to `[store] hit_rate`
        a second (a flood of forged sources would fill the disk), the rest only counted."""
        if not banned and not self._storable.take(now):
            self.hits_sampled += 1
        elif len(self._hits) < MAX_BUFFERED_HITS:
            self._hits.append((hit, outcome))
        else:
            self.hits_not_stored += 1

    # -- the batch of a loop turn --------------------------------------------------------

    def _queue(self, changes: Sequence[Change], arrived: float | None = None) -> list[Command]:
        """Changes join the turn's batch; the first asks for the end of the turn."""
        if not changes:
            return []
        self._pending.extend(changes)
        if arrived is not None:
            self._arrivals.append(arrived)
        if self._flush_asked:
            return []
        self._flush_asked = True
        return [FlushSoon()]

    def _turn_ended(self, _event: TurnEnded, now: float) -> list[Command]:
        return self._flush(now)

    def _flush(self, now: float) -> list[Command]:
        """The batch out: `first` actions, the kernel, the store, the log, the actions."""
        self._flush_asked = False
        batch, self._pending = self._pending, []
        arrivals, self._arrivals = tuple(self._arrivals), []
        if not batch:
            return []
        commands: list[Command] = [ActionsBefore(batch)] if self._first_actions else []
        enforced = self.policy.enforced
        kernel = [c for c in batch if isinstance(c, Unban) or enforced(c)]
        if kernel:
            commands.append(Apply(kernel, now, arrivals))
        commands += [RecordChanges(batch), *self.fleet.publish(batch)]
        commands += [LogChanges(batch), ActionsAfter(batch)]
        self.stats.applied(batch)
        return commands

    # -- time ----------------------------------------------------------------------------

    def _tick(self, event: Tick, now: float) -> list[Command]:
        self._ticks += 1
        commands = self._clock_jump(now, event.mono)
        commands += self._expire(now) + self._store_hits(event.store_backlog)
        if self._ticks % CHECK_EVERY == 0:
            commands += [self._check(now), Maintain(now)]
        if self._ticks % MAINTAIN_EVERY == 0:
            self.policy.forget_quiet(now)
            commands += self._prune(now)
        return commands

    def _clock_jump(self, now: float, mono: float | None) -> list[Command]:
        """A step of the wall clock (NTP after a wrong start, an admin's `date -s`), told from
        the monotonic clock's advance: the bans keep the time they were given (the kernel's
        timeouts count it so), and pruning discounts the jump."""
        if mono is None:
            return []
        last, self._last_tick = self._last_tick, (now, mono)
        if last is None:
            return []
        jump = (now - last[0]) - (mono - last[1])
        if abs(jump) < CLOCK_JUMP:
            return []
        self.clock_skew += jump
        self.policy.shift(jump)
        why = "bans keep their time left; pruning of old hits discounts the jump"
        return [Log("clock-jumped", logging.WARNING, {"seconds": round(jump, 1), "why": why})]

    def _prune(self, now: float) -> list[Command]:
        """Hits older than the retention, by the wall clock or, when it jumped forward since
        the start, by the time that really went by (a jump of 100 days must not prune all)."""
        store = self.config.store
        commands: list[Command] = []
        steady = now - self.clock_skew  # the wall clock had it not jumped
        if steady < now:
            fields = {"clock_jumped_by": round(self.clock_skew, 1), "pruning_as_of": steady}
            commands.append(Log("prune-discounts-clock-jump", logging.DEBUG, fields))
        commands.append(PruneHits(min(now, steady) - store.hit_retention, store.hit_rows))
        return commands

    def _check(self, now: float) -> CheckFirewall:
        """The ruleset's check: with few bans each is looked for; with many they are counted,
        less often the more there are (the cost grows with them)."""
        self._checks += 1
        bans = len(self.policy.active(now))
        if bans <= LIST_BANS:
            return CheckFirewall(entries=True)
        return CheckFirewall(count=self._checks % (1 + bans // COUNT_EVERY_BANS) == 0)

    def _expire(self, now: float) -> list[Command]:
        """Bans that ran out: the kernel let them go by itself (or is told to), the actions
        hear of it."""
        expired = self.policy.expire(now)
        if not expired:
            return []
        self.stats.expired(expired)
        held = [ban for ban in expired if self.policy.enforced(ban)]
        commands: list[Command] = [Expire(held, now)] if held else []
        commands += [
            Log("ban-expired", logging.INFO, {"address": show(b.target), "ban_count": b.ban_count})
            for b in expired
        ]
        commands.append(ActionsExpired(expired))
        return commands

    def _store_hits(self, backlog: int) -> list[Command]:
        if not self._hits:
            return []
        batch, self._hits = self._hits, []
        if backlog > MAX_WRITE_BACKLOG:  # the disk is far behind: hits give way
            self.hits_not_stored += len(batch)
            fields = {"count": len(batch), "backlog": backlog}
            return [Log("hits-not-stored", logging.WARNING, fields)]
        return [RecordHits(batch)]

    # -- the host and the kernel ---------------------------------------------------------

    def _addresses(self, event: AddressesChanged, now: float) -> list[Command]:
        return self._queue(self.policy.set_own_addresses(event.own, now))

    def _served(self, event: ServedPortsChanged, _now: float) -> list[Command]:
        return [] if self.kernel is None else self.kernel.served(event.ports, event.mono)

    def _serve_failed(self, _event: ServeFailed, _now: float) -> list[Command]:
        if self.kernel is not None:
            self.kernel.serve_failed()
        return []

    def _counters(self, event: CountersRead, _now: float) -> list[Command]:
        if self.kernel is None:
            return []
        if event.counters is not None and "held" in event.counters:
            self.holds.counted(event.counters["held"])
        return self.kernel.read(event.counters, event.mono)

    def _rotated(self, event: BlocksRotated, _now: float) -> list[Command]:
        return [] if self.kernel is None else self.kernel.rotated(event.emptied, event.mono)

    def _kernel_bans(self, now: float, enforced: Callable[[Ban], bool]) -> list[Ban]:
        return [ban for ban in self.policy.active(now) if enforced(ban)]

    def _setup(self, now: float, reason: SetupReason) -> Setup:
        bans = self._kernel_bans(now, self.policy.enforced)
        return Setup(bans, now, reason, self._sensor_state(self.config))

    def _sensor_state(self, config: Config) -> SensorState:
        """What porttrap's table holds besides the bans: the kernel sensor (stealth, advanced)
        with its served ports and block generation, and in every mode the watch (clients,
        peers, the marks of connect-mode UDP traps) with the host's gateways."""
        gateways = self.policy.protection.gateways
        if self.kernel is not None and config is self.config:
            return self.kernel.state(gateways)
        kernel = self.kernel
        if kernel is None:
            return SensorState(spec_from_config(config), no_ports(), gateways=gateways)
        return SensorState(spec_from_config(config), kernel.wanted, kernel.generation, gateways)

    def _firewall_failed(self, event: FirewallFailed, _now: float) -> list[Command]:
        fields = {"error": event.error, "retry_in": RECONCILE_DELAY}
        commands: list[Command] = [Log("firewall-error", logging.ERROR, fields)]
        if not self._reconcile_due and not self._stopping:
            self._reconcile_due = True
            commands.append(Schedule(RECONCILE_DELAY, Reconcile()))
        return commands

    def _reconcile(self, _event: Reconcile, now: float) -> list[Command]:
        """Make the kernel hold exactly the active bans (one transaction)."""
        self._reconcile_due = False
        return [self._setup(now, SetupReason.RECONCILE)]

    def _firewall_checked(self, event: FirewallChecked, now: float) -> list[Command]:
        """The ruleset is there: rebuilt, with every ban and its exact time left, when its
        chains, rules or sets are not as porttrap wrote them, or when a ban is missing from
        it (`nft flush table`, a deleted chain, a flushed set)."""
        problem = event.damaged
        if problem is None and event.held is not None:
            problem = self._missing_bans(event.held, now)
        if problem is None and event.count is not None:
            problem = self._too_few(event.count, now)
        if problem is None:
            return []
        fields = {"table": self.config.firewall.table, "problem": problem}
        return [
            Log("firewall-damaged", logging.WARNING, fields),
            self._setup(now, SetupReason.RECONCILE),
        ]

    def _missing_bans(self, held: frozenset[IPNetwork], now: float) -> str | None:
        missing = [ban for ban in self._must_hold(now) if ban.target not in held]
        if not missing:
            return None
        return f"{len(missing)} bans missing from the kernel, e.g. {show(missing[0].target)}"

    def _too_few(self, count: int, now: float) -> str | None:
        """A count below the bans the kernel must hold: some are gone (a flushed set)."""
        wanted = len(self._must_hold(now))
        return f"the kernel holds {count} bans of {wanted}" if count < wanted else None

    def _must_hold(self, now: float) -> list[Ban]:
        """The bans the kernel must hold now: not one just decided (its batch has not gone
        out), nor one within `ENDING` of its end (the kernel may have let it go)."""
        pending = {change.target for change in self._pending}
        return [
            ban
            for ban in self._kernel_bans(now, self.policy.enforced)
            if ban.target not in pending
            and (ban.expires_at is None or ban.expires_at - now > ENDING)
        ]

    def _store_failed(self, event: StoreFailed, now: float) -> list[Command]:
        self.store_error = event.error
        if self.store_failing_since is None:
            self.store_failing_since = now
        fields = {"error": event.error, "hint": STORE_HINT}
        return [Log("store-failing", logging.ERROR, fields)]

    def _store_recovered(self, event: StoreRecovered, now: float) -> list[Command]:
        since = self.store_failing_since
        self.store_error = self.store_failing_since = None
        failed_for = round(now - since, 1) if since is not None else None
        fields = {"retries": event.retries, "failed_for": failed_for}
        return [Log("store-recovered", logging.INFO, fields)]

    def _firewall_missing(self, _event: FirewallMissing, now: float) -> list[Command]:
        """Something removed the ruleset (`nft flush ruleset`): bans must not vanish."""
        fields = {"table": self.config.firewall.table}
        return [
            Log("firewall-missing", logging.WARNING, fields),
            self._setup(now, SetupReason.RECONCILE),
        ]

    # -- admin requests ------------------------------------------------------------------

    def _admin_ban(self, event: AdminBan, now: float) -> list[Command]:
        try:
            bans = self.policy.ban(
                event.targets,
                now,
                duration=event.duration,
                permanent=event.permanent,
                reason=MANUAL if event.reason is None else f"{MANUAL}: {event.reason}",
            )
        except UsageError as err:  # a protected target, an overlap: refused, nothing banned
            return [Refuse(str(err))]
        self._pending.extend(bans)
        answer = {"count": len(bans), "bans": [ban_json(b) for b in bans[:MAX_ANSWERED]]}
        return [*self._flush(now), Answer(answer, after_store=True)]

    def _admin_unban(self, event: AdminUnban, now: float) -> list[Command]:
        if event.fleet and self.config.fleet is None:
            return [
                Refuse("unban --fleet: this host is in no fleet (no [fleet] section)", usage=True)
            ]
        active = self.policy.active(now)
        banned = {b.target for b in active}
        targets = sorted(banned, key=str) if event.everything else event.targets
        was_banned = [show(t) for t in targets if t in banned]
        nets = [b for b in active if b.target.prefixlen < b.target.max_prefixlen]
        held = self._held_by(targets, banned, nets, now) if nets else {}
        reason = MANUAL_FLEET if event.fleet else MANUAL
        unbans = self._lift(targets, now, reason, event.everything)
        named = set(targets)
        was_banned += [show(u.target) for u in unbans if u.target not in named]  # carved pieces
        self._pending.extend(unbans)
        answer: dict[str, object] = {
            "count": len(unbans),
            "unbanned": [show(u.target) for u in unbans[:MAX_ANSWERED]],
            "were_banned": was_banned[:MAX_ANSWERED],
            "held_by": {t: show(h.target) for t, h in held.items()},
        }
        prefix_bans = {show(h.target): h.reason for h in held.values() if h.prefix}
        if prefix_bans:
            answer["prefix_bans"] = prefix_bans
        return [*self._flush(now), Answer(answer, after_store=True)]

    def _lift(
        self, targets: Sequence[IPNetwork], now: float, reason: str, everything: bool
    ) -> list[Unban]:
        """The unbans of `targets`; a prefix an admin names takes the pieces a carve left of
        its ban with it (`unban --all` lists those pieces itself)."""
        if everything:
            return [self.policy.unban(t, now, reason) for t in targets]
        seen: set[IPNetwork] = set()
        unbans = []
        for target in targets:
            for unban in self.policy.unban_all(target, now, reason):
                if unban.target not in seen:
                    seen.add(unban.target)
                    unbans.append(unban)
        return unbans

    def _held_by(
        self, targets: Sequence[IPNetwork], banned: set[IPNetwork], nets: list[Ban], now: float
    ) -> dict[str, _Holder]:
        """The targets with no ban of their own that a network ban holds (an admin's, a prefix
        ban): the network to unban to lift them, a prefix ban's whole prefix (for its carved
        pieces too). An address is looked up by prefix length (thousands of prefix bans), a
        network among the network bans."""
        found: dict[str, _Holder] = {}
        for target in targets:
            if target in banned:
                continue
            if target.prefixlen == target.max_prefixlen:
                ban = self.policy.covering(target.network_address, now)
                holder = None if ban is None else ban.target
            else:
                holder = _holder(target, nets)
                ban = next((b for b in nets if b.target == holder), None)
            if ban is None or holder is None:
                continue
            prefix = prefix_of(ban.reason)
            found[show(target)] = _Holder(prefix or holder, ban.reason, prefix is not None)
        return found

    # -- the fleet (porttrap.core.fleet) -------------------------------------------------

    def _fleet_received(self, event: FleetReceived, now: float) -> list[Command]:
        changes, commands = self.fleet.received(self.policy, event, now)
        return commands + self._queue(changes)

    def _fleet_link(self, event: FleetLinkChanged, _now: float) -> list[Command]:
        return self.fleet.link(event)

    def _sessions(self, event: SessionsChanged, _now: float) -> list[Command]:
        """The admin's SSH sessions: each new peer is named, so that the log says who is
        protected (and why a trap hit from there never bans)."""
        protection = self.policy.protection
        new = sorted(event.peers - protection.sessions, key=str)
        protection.set_sessions(event.peers)
        why = "the peer of a live SSH session to this host: never banned by a trap hit"
        return [Log("session-protected", logging.INFO, {"peer": p, "why": why}) for p in new]

    def _clients(self, event: ClientsChanged, _now: float) -> list[Command]:
        """The host's live clients: a prefix ban decided from now on leaves them out."""
        protection = self.policy.protection
        if event.peers == protection.clients:
            return []
        protection.set_clients(event.peers)
        return [Log("live-clients", logging.DEBUG, {"count": len(event.peers)})]

    def _gateways(self, event: GatewaysChanged, _now: float) -> list[Command]:
        """The routes' gateways: protected in the policy, and in the kernel's peer set."""
        if event.gateways == self.policy.protection.gateways:
            return []
        self.policy.protection.set_gateways(event.gateways)
        return [SetGateways(event.gateways)]

    # -- reload --------------------------------------------------------------------------

    def _reload_requested(self, event: ReloadRequested, _now: float) -> list[Command]:
        """Refused when a part needs a restart; nothing to do when nothing changed; else the
        shell prepares what can fail to open (`PrepareReload`)."""
        new = event.config
        if restart := reload.needs_restart(self.config, new):
            message = (
                "not reloaded, these changes need a restart (systemctl restart porttrap): "
                + "; ".join(restart)
            )
            return _refused(message)
        changed = tuple(reload.changed(self.config, new))
        if not changed:
            self.config = new
            return [Reloaded(())]
        self._reload = (new, changed)
        return [PrepareReload(new, changed)]

    def _reload_invalid(self, event: ReloadInvalid, _now: float) -> list[Command]:
        return _refused("invalid configuration", event.problems)

    def _reload_prepared(self, _event: ReloadPrepared, now: float) -> list[Command]:
        """Rebuild the table when its rules or `[ban] respond` change: one transaction, with
        every active ban that belongs in the kernel under the new settings (anything queued
        goes out first, into the old table). The shell feeds `ReloadCommitted`, or
        `ReloadFailed` when the kernel refuses (the old table then stays)."""
        assert self._reload is not None, "ReloadPrepared without a reload in progress"
        new, _ = self._reload
        if not reload.kernel_changed(self.config, new):
            return self._commit(now)
        sensor = self._sensor_state(new)
        bans = self._kernel_bans(now, lambda ban: enforced_under(new.ban, ban))
        return [*self._flush(now), Setup(bans, now, SetupReason.RELOAD, sensor)]

    def _reload_committed(self, _event: ReloadCommitted, now: float) -> list[Command]:
        return self._commit(now)

    def _commit(self, now: float) -> list[Command]:
        """The new settings in force: policy, allow list, kernel sensor, actions, traps.
        Bans, escalation and counters carry over."""
        assert self._reload is not None, "a reload commits only once prepared"
        (new, changed), self._reload = self._reload, None
        old, self.config = self.config, new
        unbans = self.policy.reconfigure(new.ban, new.traps, protection(new), now)
        if new.store.hit_rate != old.store.hit_rate:
            self._storable = Bucket(new.store.hit_rate, now)
        if self.kernel is not None and reload.kernel_changed(old, new):
            self.kernel.respec(spec_from_config(new))
        self._read_actions(new)
        commands = self._queue(unbans) + self._rehold(old, new)
        if "actions" in changed or "modes" in changed:
            commands.append(ReplaceActions(new))
        if {"traps", "modes", "banner"} & set(changed):
            commands.append(UpdateTraps(connect_traps(new), new.banner))
        if "protect" in changed:
            commands.append(UpdateSessions(new.protect.ssh_ports))
        if self.kernel is not None and {"kernel", "banner"} & set(changed):
            commands.append(UpdateCatchAll(catch_all_port(new), new.banner))
        return [*commands, Reloaded(changed)]

    def _rehold(self, old: Config, new: Config) -> list[Command]:
        """The hold's new settings; turned off, every SYN held is let through and the queue
        unbound (turned on, the shell bound it while preparing the reload)."""
        kernel = new.kernel
        self.holds.configure(kernel.hold or DEFAULT_HOLD, kernel.hold_memory, kernel.client_size)
        if spec_from_config(old).hold and not spec_from_config(new).hold:
            return [*self.holds.stopping(), StopHolding()]
        return []

    def _reload_failed(self, event: ReloadFailed, _now: float) -> list[Command]:
        self._reload = None
        return _refused(event.error)

    def _actions_replaced(self, _event: ActionsReplaced, now: float) -> list[Command]:
        """The new actions start from the bans active now, not when the reload began: the
        old actions had up to their grace time to finish, and bans came and went meanwhile."""
        return [ActionsStart(self.policy.active(now))]

    # -- views ---------------------------------------------------------------------------

    def snapshot(self, now: float, io: IoFigures) -> Snapshot:
        kernel = self.kernel
        view = None
        if kernel is not None:
            view = KernelView(
                modes=kernel.spec.modes,
                served=kernel.wanted,
                settings=kernel.settings,
                generation=kernel.generation,
                fill={g: kernel.fill.fill(g) for g in GENERATIONS},
                rotations=kernel.rotations,
                counters=kernel.counters,
            )
        return Snapshot(
            now=now,
            started_at=self.started_at,
            source=self.config.source,
            modes=self.config.modes,
            active=self.policy.active(now),
            enforced=self.policy.enforced,
            stats=self.stats,
            hits_not_stored=self.hits_not_stored,
            hits_sampled=self.hits_sampled,
            sources_evicted=self.policy.evicted,
            past_evicted=self.policy.past_evicted,
            bans_held=self.policy.held,
            watched=self.policy.watched(),
            kernel=view,
            io=io,
            store_error=self.store_error,
            store_failing_since=self.store_failing_since,
            clock_skew=self.clock_skew,
            hold=self.hold_figures(),
        )


_UNSPECIFIED: dict[int, IPAddress] = {4: ipaddress.IPv4Address(0), 6: ipaddress.IPv6Address(0)}


def _note(note: Note) -> Log:
    """A prefix ban made, carved around protected addresses, or refused: always logged."""
    level = logging.WARNING if note.event == "prefix-refused" else logging.INFO
    return Log(note.event, level, {"prefix": show(note.prefix), "why": note.why})


def _hit_level(hit: Hit, outcome: Outcome) -> int:
    """A forged flood can make thousands of unverified hits a second: they are stored (up to
    the rate) and counted, and logged only when they ban (or would have, with respond = "log").
    A hit from the admin's own session is a warning: it would have cut them off."""
    if outcome is Outcome.SESSION:
        return logging.WARNING
    quiet = not hit.verified and outcome not in (Outcome.BANNED, Outcome.LOGGED)
    return logging.DEBUG if quiet else logging.INFO


def _hit_fields(hit: Hit, outcome: Outcome) -> dict[str, object]:
    return {
        "src": hit.source,
        "sport": hit.source_port,
        "dst": hit.local,
        "port": hit.port,
        "proto": hit.proto,
        "kind": hit.kind,
        "outcome": outcome,
    }


class _Holder(NamedTuple):
    """The network ban that holds an address an admin unbans: the network to unban (a prefix
    ban's whole prefix), its reason, and whether it is a prefix ban."""

    target: IPNetwork
    reason: str
    prefix: bool


def _holder(target: IPNetwork, active: Sequence[Ban]) -> IPNetwork | None:
    """The network of an active ban that holds `target` (an address, or a smaller network)
    without being it: unbanning `target` alone would lift nothing."""
    for ban in active:
        held = ban.target
        if held != target and held.version == target.version and target.subnet_of(held):  # type: ignore[arg-type]
            return held
    return None


def _refused(error: str, problems: tuple[str, ...] = ()) -> list[Command]:
    commands: list[Command] = [
        Log("config-error", logging.ERROR, {"problem": problem}) for problem in problems
    ]
    commands.append(Log("reload-refused", logging.ERROR, {"error": error, "hint": REFUSED_HINT}))
    commands.append(Refuse(error, problems))
    return commands
