"""How the shell carries out the core's commands against the firewall, the store, the actions
and the log: one small function per kind of command, each of them synchronous and quick.

A command whose outcome the core must hear of returns the event to feed next (`FirewallFailed`
when the kernel refused, `BlocksRotated` when it rotated ...); the others return None. Store
writes go to the writer thread, so the loop never waits for the disk; the kernel comes first,
then the store, then the log (the core orders the commands so).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from porttrap import log
from porttrap.actions.dispatch import Dispatcher
from porttrap.clock import Clock
from porttrap.core import commands as c
from porttrap.core import events as e
from porttrap.core.stats import Histogram
from porttrap.daemon.writer import StoreWriter
from porttrap.errors import FirewallError
from porttrap.firewall.base import FirewallBackend, SensorBackend
from porttrap.model import Ban, Change, Unban, show
from porttrap.store.base import Store

BULK = 1000  # more changes than this in one batch are logged as a summary

Effect = Callable[..., e.Event | None]  # takes its own kind of command


def log_change(change: Change, level: int = logging.INFO) -> None:
    if isinstance(change, Unban):
        log.event("unban", level, address=show(change.target), reason=change.reason)
        return
    name = "permanent-ban" if change.permanent else "ban"
    log.event(
        name,
        level,
        address=show(change.target),
        until=log.iso(change.expires_at),
        ban_count=change.ban_count,
        reason=change.reason,
        evidence=change.evidence,
    )


@dataclass
class Latency:
    """What the shell times: a hit's arrival to its decision, and to its ban in the kernel."""

    decision: Histogram = field(default_factory=Histogram)
    to_kernel: Histogram = field(default_factory=Histogram)


@dataclass
class Restore:
    """When the start's restore began, and the database rows it skipped, for its log line."""

    started: float = 0.0
    skipped: int = 0


class Effects:
    """The firewall, the store, the actions and the log, as the core's commands use them."""

    def __init__(
        self,
        clock: Clock,
        *,
        firewall: FirewallBackend,
        sensor: SensorBackend | None,
        store: Store,
        writer: StoreWriter,
        actions: Dispatcher,
    ) -> None:
        self.clock = clock
        self.firewall = firewall
        self.sensor = sensor
        self.store = store
        self.writer = writer
        self.actions = actions
        self.latency = Latency()
        self.restore = Restore()

    def table_of(self) -> dict[type, Effect]:
        """Command type -> how to carry it out (those the shell does itself are not here)."""
        effects: dict[type, Effect] = {
            c.Setup: self.setup,
            c.Apply: self.apply,
            c.Expire: self.expire,
            c.CheckFirewall: self.check,
            c.Maintain: self.maintain,
            c.ServePorts: self.serve,
            c.RotateBlocks: self.rotate,
            c.SetGateways: self.set_gateways,
            c.RecordHits: self.record_hits,
            c.RecordChanges: self.record_changes,
            c.PruneHits: self.prune,
            c.ActionsStart: lambda cmd: self.actions.start(cmd.active),
            c.ActionsHit: lambda cmd: self.actions.hit(cmd.hit, cmd.outcome, cmd.ban),
            c.ActionsBefore: lambda cmd: self.actions.before_kernel(cmd.changes),
            c.ActionsAfter: lambda cmd: self.actions.after_kernel(cmd.changes),
            c.ActionsExpired: lambda cmd: self.actions.expired(cmd.bans),
            c.Log: lambda cmd: log.event(cmd.name, cmd.level, **cmd.fields),
            c.LogChanges: lambda cmd: log_changes(cmd.changes),
        }
        return effects

    # -- the firewall --------------------------------------------------------------------

    def setup(self, cmd: c.Setup) -> e.Event | None:
        """A refusal at start stops the daemon; a reload's refuses the reload (the old table
        stays); any other is tried again later."""
        started = self.clock.monotonic()
        try:
            self.firewall.setup(cmd.bans, cmd.now, cmd.sensor)
        except FirewallError as err:
            if cmd.reason is c.SetupReason.START:
                raise
            if cmd.reason is c.SetupReason.RELOAD:
                return e.ReloadFailed(str(err))
            return e.FirewallFailed(str(err))
        done = self.clock.monotonic()
        if cmd.reason is c.SetupReason.START:
            self._restored(cmd.bans, started, done)
        elif cmd.reason is c.SetupReason.RECONCILE:
            log.event("reconciled", bans=len(cmd.bans))
        else:
            return e.ReloadCommitted()
        return None

    def _restored(self, bans: Sequence[Ban], started: float, done: float) -> None:
        first = self.restore.started or started
        log.event(
            "restored",
            bans=len(bans),
            permanent=sum(1 for b in bans if b.permanent),
            seconds=round(done - first, 3),
            store_s=round(started - first, 3),  # read and decided
            kernel_s=round(done - started, 3),
            skipped=self.restore.skipped or None,
        )
        if self.restore.skipped:
            log.event(
                "restore-skipped",
                logging.WARNING,
                rows=self.restore.skipped,
                why="rows of the database that cannot be read (each named by store-bad-row): "
                "their bans are not restored; every other ban is",
            )

    def apply(self, cmd: c.Apply) -> e.Event | None:
        started = self.clock.monotonic()
        failed: e.Event | None = None
        try:
            self.firewall.apply(cmd.changes, cmd.now)
        except FirewallError as err:
            failed = e.FirewallFailed(str(err))
        done = self.clock.monotonic()
        for arrived in cmd.arrivals:
            self.latency.to_kernel.observe(done - arrived)
        level = logging.INFO if len(cmd.changes) > BULK else logging.DEBUG
        kernel_ms = round((done - started) * 1000, 1)
        log.event("applied", level, changes=len(cmd.changes), kernel_ms=kernel_ms)
        return failed

    def expire(self, cmd: c.Expire) -> e.Event | None:
        """A refusal is retried as a rebuild, as for `Apply`: a backend without kernel
        timeouts would otherwise hold the ban for good."""
        try:
            self.firewall.expire(cmd.bans, cmd.now)
        except FirewallError as err:
            return e.FirewallFailed(str(err))
        return None

    def check(self, cmd: c.CheckFirewall) -> e.Event | None:
        """Is the ruleset still there, and whole? Bans must not vanish silently (a firewall
        reload that ran `nft flush ruleset`, an admin's `nft flush table` or `nft delete
        chain`, a flushed set). The core decides what to do about it."""
        try:
            found = self.firewall.inspect(cmd.entries, cmd.count)
        except FirewallError as err:
            log.event("firewall-error", logging.ERROR, error=str(err))
            return None
        if found.missing:
            return e.FirewallMissing()
        held = None if found.entries is None else frozenset(x.target for x in found.entries)
        if found.damaged is None and held is None and found.count is None:
            return None
        return e.FirewallChecked(found.damaged, held, found.count)

    def maintain(self, cmd: c.Maintain) -> None:
        self._try("maintain", lambda: self.firewall.maintain(cmd.now))

    def _try(self, action: str, call: Callable[[], None]) -> None:
        try:
            call()
        except FirewallError as err:
            log.event("firewall-error", logging.ERROR, action=action, error=str(err))

    def serve(self, cmd: c.ServePorts) -> e.Event | None:
        """A refusal is logged, and the core sends the ports again at its next reading (or
        with the rebuild, when the table is gone)."""
        assert self.sensor is not None, "ServePorts without a kernel sensor"
        try:
            self.sensor.serve(cmd.ports)
        except FirewallError as err:
            log.event("kernel-sensor-error", logging.WARNING, action="served-ports", error=str(err))
            return e.ServeFailed()
        return None

    def set_gateways(self, cmd: c.SetGateways) -> None:
        """A refusal is logged: the next rebuild of the table brings them along."""
        if self.sensor is None:  # a backend without a watch: the policy protects them alone
            return
        try:
            self.sensor.set_gateways(cmd.gateways)
        except FirewallError as err:
            log.event("kernel-sensor-error", logging.WARNING, action="gateways", error=str(err))

    def rotate(self, cmd: c.RotateBlocks) -> e.Event | None:
        """A refused rotation changes nothing; the core asks again at the next reading."""
        assert self.sensor is not None, "RotateBlocks without a kernel sensor"
        try:
            self.sensor.rotate(cmd.empty)
        except FirewallError as err:
            log.event("kernel-sensor-error", logging.DEBUG, action="rotate", error=str(err))
            return None
        return e.BlocksRotated(cmd.empty, self.clock.monotonic())

    # -- the store -----------------------------------------------------------------------

    def record_hits(self, cmd: c.RecordHits) -> None:
        store, hits = self.store, cmd.hits
        self.writer.submit(lambda: store.add_hits(hits))

    def record_changes(self, cmd: c.RecordChanges) -> None:
        bans = [change for change in cmd.changes if isinstance(change, Ban)]
        unbans = [change for change in cmd.changes if isinstance(change, Unban)]
        store = self.store
        # One transaction: a job the writer retries must have fully happened or not at all
        # (bans recorded twice would each count toward escalation after a restart).
        self.writer.submit(lambda: store.record(bans, unbans))

    def prune(self, cmd: c.PruneHits) -> None:
        store, before, keep = self.store, cmd.before, cmd.keep

        def job() -> None:
            if pruned := store.prune_hits(before, keep):
                log.event("hits-pruned", count=pruned)

        self.writer.submit(job)


def log_changes(batch: Sequence[Change]) -> None:
    """One line per change; a bulk batch (an admin's ban list) is summed up in one line per
    kind at info level, with the per-address lines at debug level."""
    bulk = len(batch) > BULK
    if not bulk or log.LOGGER.isEnabledFor(logging.DEBUG):
        for change in batch:
            log_change(change, logging.DEBUG if bulk else logging.INFO)
    if bulk:
        kinds = Counter(
            "unban" if isinstance(c, Unban) else "permanent-ban" if c.permanent else "ban"
            for c in batch
        )
        for kind, count in sorted(kinds.items()):
            log.event(f"bulk-{kind}", count=count)
