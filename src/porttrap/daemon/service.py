"""The daemon: one asyncio loop that owns the sensors, the policy, the firewall and the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from porttrap import __version__, heap, log
from porttrap import config as config_mod
from porttrap.actions.dispatch import Dispatcher
from porttrap.clock import Clock
from porttrap.config.schema import Config, Trap, TrapMode
from porttrap.daemon import reload
from porttrap.daemon.applier import Applier, Listeners, log_change
from porttrap.daemon.control import ControlServer, Handler
from porttrap.daemon.metrics_server import MetricsServer, daemon_registry
from porttrap.daemon.notify import Notifier
from porttrap.daemon.stats import OTHER_PORT, Stats
from porttrap.daemon.writer import StoreWriter
from porttrap.errors import ConfigError, FirewallError, PorttrapError, UsageError
from porttrap.firewall.base import FirewallBackend
from porttrap.firewall.sensor import NftSensor, spec_from_config
from porttrap.firewall.sensor_rules import SensorRules
from porttrap.model import (
    Ban,
    Hit,
    IPAddress,
    IPNetwork,
    Outcome,
    Unban,
    as_network,
    parse_target,
    show,
)
from porttrap.policy import Policy, Protection
from porttrap.sensors.hostaddrs import AddressWatcher, current_addresses
from porttrap.sensors.kernel import KernelTraps
from porttrap.sensors.sockets import SocketTraps, TrapReport
from porttrap.store.base import Store

HIT_FLUSH_INTERVAL = 0.5
MAINTENANCE_INTERVAL = 60.0
FIREWALL_CHECK_INTERVAL = 5.0
MAX_BUFFERED_HITS = 100_000
MAX_WRITE_BACKLOG = 20  # store jobs waiting (about 10 s of hit batches) before hits give way
MAX_ANSWERED = 1000  # bans listed in the answer to a bulk ban; the count covers all


@dataclass
class Counters:
    hits_not_stored: int = 0  # hits and bans themselves are counted in `Stats`


class Daemon:
    """Wiring and event handling. `run()` returns when asked to stop."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        store: Store,
        firewall: FirewallBackend,
        sensor: NftSensor | None = None,
        *,
        config_path: Path | None = None,
        verbose: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        """`config_path`: what `-c` named (None: the default place), read again on reload."""
        self.config = config
        self.config_path = config_path
        self.verbose = verbose
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.clock = clock
        self.store = store
        self.firewall = firewall
        self.policy = Policy(config.ban, config.traps, _protection(config))
        self.writer = StoreWriter()
        self.actions = Dispatcher(config.actions, config.modes, config.state_dir)
        self.stats = Stats()
        self.applier = Applier(
            firewall,
            store,
            clock,
            self.policy.active,
            write=self.writer.submit,
            enforced=self.policy.enforced,
            listener=Listeners(self.actions, self.stats),
        )
        self.counters = Counters()
        self.started_at = clock.now()
        self.report = TrapReport(set=[], skipped=[])
        self._hits: list[tuple[Hit, Outcome]] = []
        self._stop = asyncio.Event()
        self._sensor = SocketTraps(_connect_traps(config), self.on_hit, clock, config.banner)
        self._nft_sensor = sensor
        self._kernel = (
            KernelTraps(sensor, config.kernel, self.on_hit, clock) if sensor is not None else None
        )
        self._watcher = AddressWatcher(self.on_addresses)
        self._control = ControlServer(config.control_socket, self._handlers())
        self._reloading = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics = MetricsServer(daemon_registry(self))  # reads the daemon at scrapes

    @property
    def kernel(self) -> KernelTraps | None:
        """The kernel sensor (stealth and advanced modes), for status and metrics."""
        return self._kernel

    # -- life cycle ----------------------------------------------------------------------

    async def run(self, flush_on_exit: bool = False) -> None:
        loop = asyncio.get_running_loop()
        await self._control.start()  # first: refuses when another daemon runs
        try:
            # Before the kernel sensor reads the served ports: its port is then never a trap.
            await self.metrics.start(self.config.metrics.listen)
            if self._kernel is not None:
                self._prepare_kernel()
            with heap.bulk():
                self._restore(current_addresses())
                self.actions.start(self.policy.active(self.clock.now()))
            self.writer.start()
            self.report = self._sensor.start(loop)
            if self.report.none_set and self._kernel is None:
                raise PorttrapError("no trap could be set (every trap port was skipped, see above)")
            if self._kernel is not None:
                self._start_kernel(loop)
            self._watch_addresses(loop)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
            log.event(
                "start",
                version=__version__,
                pid=os.getpid(),
                backend=self.firewall.name,
                traps=len(self.report.set),
                skipped=len(self.report.skipped),
                tcp=self.config.modes.tcp,
                udp=self.config.modes.udp,
                config=self.config.source or "built-in defaults",
            )
            self.notifier.ready(self._summary())
            await self._serve()
        finally:
            self.notifier.stopping()
            await self._shutdown(flush_on_exit)

    def stop(self) -> None:
        self._stop.set()

    def _summary(self) -> str:
        """One line for `systemctl status`."""
        now = self.clock.now()
        active = self.policy.active(now)
        return (
            f"{len(self.report.set)} trap sockets, {len(active)} bans "
            f"({sum(1 for b in active if b.permanent)} permanent), {self.stats.total_hits} hits"
        )

    def _prepare_kernel(self) -> None:
        """The served ports, read before the table is built: none may be a trap, ever."""
        assert self._kernel is not None
        try:
            self._kernel.prepare()
        except OSError as err:
            raise PorttrapError(
                f"cannot read which ports this host serves (netlink sock_diag: {err}); the "
                "kernel sensor needs it so as never to trap a service port"
            ) from err

    def _start_kernel(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._kernel is not None
        try:
            self._kernel.start(loop)
        except OSError as err:
            group = self.config.kernel.nflog_group
            raise PorttrapError(
                f"the kernel sensor cannot receive reports on NFLOG group {group}: {err} "
                "(another program, such as ulogd or a second porttrap, may hold the group: "
                "set another [kernel] nflog_group)"
            ) from err

    def _watch_addresses(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the host's addresses; the first reading after subscribing counts too, as
        an address may have come since the restore."""
        try:
            self.on_addresses(self._watcher.start(loop))
        except OSError as err:  # no netlink (a seccomp sandbox): keep the start-up reading
            log.event(
                "host-addresses-static",
                logging.WARNING,
                error=str(err),
                hint="the host's own addresses are not followed until a restart",
            )

    def _restore(self, own: frozenset[IPAddress]) -> None:
        """Bans from the store back into the policy and, in one batch, into the kernel."""
        now, started = self.clock.now(), self.clock.monotonic()
        self.policy.protection.set_own(own)
        stored = self.store.bans_to_restore(now, now - self.config.ban.forget_after)
        unbans = self.policy.restore(stored, now)
        del stored  # 100,000 bans: let the copies go before the kernel batch is built
        if unbans:
            self.store.lift(unbans)
            for unban in unbans:
                log_change(unban)
            self.actions.after_kernel(unbans)  # no kernel step: setup below leaves them out
        active = self.applier.kernel_bans(now)
        decided = self.clock.monotonic()
        self.firewall.setup(active, now)
        done = self.clock.monotonic()
        log.event(
            "restored",
            bans=len(active),
            permanent=sum(1 for b in active if b.permanent),
            seconds=round(done - started, 3),
            store_s=round(decided - started, 3),  # read and decided
            kernel_s=round(done - decided, 3),
        )

    async def _serve(self) -> None:
        ticks = 0
        per_check = int(FIREWALL_CHECK_INTERVAL / HIT_FLUSH_INTERVAL)
        per_maintenance = int(MAINTENANCE_INTERVAL / HIT_FLUSH_INTERVAL)
        watchdog = self.notifier.watchdog_interval
        per_ping = max(1, int((watchdog or 0) / HIT_FLUSH_INTERVAL))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), HIT_FLUSH_INTERVAL)
            self._store_hits()
            ticks += 1
            if watchdog is not None and ticks % per_ping == 0:
                # From the loop itself: a loop stuck in a callback pings no more, and
                # systemd restarts porttrap (WatchdogSec=).
                self.notifier.watchdog()
            if ticks % per_check == 0:
                self._check_firewall()
            if ticks % per_maintenance == 0:
                self._maintain()
                self.notifier.status(self._summary())

    def _check_firewall(self) -> None:
        """Put the ruleset back when something removed it (a firewall reload that ran
        `nft flush ruleset`, an admin's `nft delete table`): bans must not vanish silently."""
        try:
            present = self.firewall.present()
        except FirewallError as err:
            log.event("firewall-error", logging.ERROR, error=str(err))
            return
        if not present:
            log.event("firewall-missing", logging.WARNING, table=self.config.firewall.table)
            self.applier.reconcile()

    async def _shutdown(self, flush_on_exit: bool) -> None:
        self._sensor.close()
        if self._kernel is not None:
            self._kernel.close()
        self._watcher.close()
        self.applier.flush()
        dropped, killed = await self.actions.close()  # running actions get a grace time
        self._store_hits()
        self.writer.close()  # every record written before the store is closed
        await self._control.close()
        await self.metrics.close()
        if flush_on_exit:
            self.firewall.teardown()
            log.event("flushed", table=self.config.firewall.table)
        actions = self.actions.enabled
        log.event(
            "stop",
            pid=os.getpid(),
            actions_dropped=dropped if actions else None,
            actions_killed=killed if actions else None,
        )

    def _maintain(self) -> None:
        now = self.clock.now()
        expired = self.policy.expire(now)
        for ban in expired:
            log.event("ban-expired", address=show(ban.target), ban_count=ban.ban_count)
        self.stats.expired(expired)
        self.actions.expired(expired)  # up to MAINTENANCE_INTERVAL after the kernel's expiry
        before = now - self.config.store.hit_retention

        def prune() -> None:
            if pruned := self.store.prune_hits(before):
                log.event("hits-pruned", count=pruned)

        self.writer.submit(prune)

    # -- events --------------------------------------------------------------------------

    def on_hit(self, hit: Hit) -> None:
        arrived = self.clock.monotonic()
        verdict = self.policy.on_hit(hit, self.clock.now())
        if verdict.ban is not None:
            self.applier.submit([verdict.ban])
            # The applier's batch was queued first: this runs once the ban is in the kernel.
            asyncio.get_running_loop().call_soon(self._in_kernel, arrived)
        self.stats.decision.observe(self.clock.monotonic() - arrived)
        self.stats.hit(hit, verdict.outcome)
        if self.actions.wants_hits:  # bounded by [actions] queue, whatever the flood
            self.actions.hit(hit, verdict.outcome, verdict.ban)
        if len(self._hits) < MAX_BUFFERED_HITS:
            self._hits.append((hit, verdict.outcome))
        else:
            self.counters.hits_not_stored += 1
        # A forged flood can make thousands of unverified hits a second: they are stored (see
        # `porttrap history`) and counted in status, and logged only when they ban (or would
        # have, with respond = "log").
        quiet = not hit.verified and verdict.outcome not in (Outcome.BANNED, Outcome.LOGGED)
        log.event(
            "hit",
            logging.DEBUG if quiet else logging.INFO,
            src=hit.source,
            sport=hit.source_port,
            dst=hit.local,
            port=hit.port,
            proto=hit.proto,
            kind=hit.kind,
            outcome=verdict.outcome,
        )

    def _in_kernel(self, arrived: float) -> None:
        self.stats.to_kernel.observe(self.clock.monotonic() - arrived)

    def on_addresses(self, own: frozenset[IPAddress]) -> None:
        self.applier.submit(self.policy.set_own_addresses(own, self.clock.now()))

    def _store_hits(self) -> None:
        if not self._hits:
            return
        batch, self._hits = self._hits, []
        if self.writer.pending > MAX_WRITE_BACKLOG:  # the disk is far behind: hits give way,
            self.counters.hits_not_stored += len(batch)  # bans are always written
            log.event(
                "hits-not-stored", logging.WARNING, count=len(batch), backlog=self.writer.pending
            )
            return
        self.writer.submit(lambda: self.store.add_hits(batch))

    # -- reload --------------------------------------------------------------------------

    def _on_hangup(self) -> None:
        """SIGHUP: reopen the log files (logrotate sends it after moving them) and reload the
        configuration; an invalid one is logged and the running one stays."""
        if files := log.reopen():
            log.event("log-reopened", files=files)
        task = asyncio.get_running_loop().create_task(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        with contextlib.suppress(PorttrapError):  # logged by reload()
            await self.reload()

    async def _reload_request(self, _request: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Read the configuration again and apply it: traps, kernel rules (one transaction),
        policy, allow list, actions, logs. Bans, escalation and counters carry over. Raises
        ConfigError or PorttrapError, with the running configuration left as it was."""
        async with self._reloading:
            self.notifier.reloading()
            started = self.clock.monotonic()
            try:
                new = self._read_new_config()
                changed = reload.changed(self.config, new)
                if changed:
                    await self._apply_config(new, changed)
                self.config = new
            except PorttrapError as err:
                _log_refused(err)
                raise
            finally:
                self.notifier.ready(self._summary())
            seconds = round(self.clock.monotonic() - started, 3)
            log.event("reloaded", changed=",".join(changed) or "nothing", seconds=seconds)
            return {
                "changed": changed,
                "seconds": seconds,
                "traps": {
                    "set": [asdict(t) for t in self.report.set],
                    "skipped": [asdict(t) for t in self.report.skipped],
                },
            }

    def _read_new_config(self) -> Config:
        new = config_mod.load(self.config_path)
        if restart := reload.needs_restart(self.config, new):
            raise PorttrapError(
                "not reloaded, these changes need a restart (systemctl restart porttrap): "
                + "; ".join(restart)
            )
        return new

    async def _apply_config(self, new: Config, changed: list[str]) -> None:
        """Whatever can fail to open (log files, syslog) first, then the kernel in one
        transaction, then the rest, which cannot fail."""
        old = self.config
        if "metrics" in changed:
            await self.metrics.restart(new.metrics.listen)  # back on the old one, or raises
        try:
            if "log" in changed:
                log.configure(new, self.verbose)  # opens every output first, or raises
            self._reload_kernel(old, new)
        except PorttrapError:
            if "log" in changed:
                log.configure(old, self.verbose)
            if "metrics" in changed:
                with contextlib.suppress(PorttrapError):
                    await self.metrics.restart(old.metrics.listen)
            raise
        now = self.clock.now()
        unbans = self.policy.reconfigure(new.ban, new.traps, _protection(new), now)
        self.applier.submit(unbans)
        if "actions" in changed or "modes" in changed:
            await self._reload_actions(new)
        if {"traps", "modes", "banner"} & set(changed):
            loop = asyncio.get_running_loop()
            self.report = self._sensor.update(loop, _connect_traps(new), new.banner)

    def _reload_kernel(self, old: Config, new: Config) -> None:
        """Rebuild porttrap's table when its rules change: one transaction, with every active
        ban that belongs in the kernel under `new`; on failure, the old table and rules stay."""
        if not reload.kernel_changed(old, new):
            return
        sensor = self._nft_sensor
        rules = sensor.rules if sensor is not None else None
        if sensor is not None:
            sensor.rules = SensorRules(new.firewall.table, spec_from_config(new))
        self.applier.flush()  # anything queued goes into the old table first
        now = self.clock.now()
        enforced = _enforced_by(new)
        try:
            bans = [ban for ban in self.policy.active(now) if enforced(ban)]
            self.firewall.setup(bans, now)
        except FirewallError:
            if sensor is not None and rules is not None:
                sensor.rules = rules
            raise
        if self._kernel is not None:
            self._kernel.reconfigure(new.kernel)

    async def _reload_actions(self, new: Config) -> None:
        """A new dispatcher; the old one first finishes its running actions (up to its grace
        time) and writes hosts.deny, so that both never write it at once."""
        await self.actions.close()
        self.actions = Dispatcher(new.actions, new.modes, new.state_dir)
        self.actions.start(self.policy.active(self.clock.now()))
        self.applier.listener = Listeners(self.actions, self.stats)

    # -- control requests ----------------------------------------------------------------

    def _handlers(self) -> dict[str, Handler]:
        return {
            "status": self._status,
            "top": self._top,
            "reload": self._reload_request,
            "ban": self._ban,
            "unban": self._unban,
        }

    def _status(self, _request: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.now()
        active = self.policy.active(now)
        return {
            "running": True,
            "pid": os.getpid(),
            "version": __version__,
            "started_at": log.iso(self.started_at),
            "config": str(self.config.source) if self.config.source else None,
            "backend": self.firewall.name,
            "traps": {
                "set": [asdict(t) for t in self.report.set],
                "skipped": [asdict(t) for t in self.report.skipped],
            },
            "kernel": self._kernel.status() if self._kernel is not None else None,
            "actions": self.actions.status() if self.actions.enabled else None,
            "bans": {"active": len(active), "permanent": sum(1 for b in active if b.permanent)},
            "hits": {
                "total": self.stats.total_hits,
                **self.stats.by_outcome(),
                "not_stored": self.counters.hits_not_stored,
            },
        }

    def _top(self, request: dict[str, Any]) -> dict[str, Any]:
        """What `porttrap top` shows: totals, the most hit ports, the busiest sources, the
        newest bans. `limit` rows each (10 by default, at most 100)."""
        limit = request.get("limit", 10)
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            raise UsageError(f"bad limit {limit!r}: give 1 to 100")
        now = self.clock.now()
        active = self.policy.active(now)
        banned = {ban.target: ban for ban in active}
        newest = sorted(active, key=lambda b: b.banned_at, reverse=True)[:limit]
        return {
            "now": log.iso(now),
            "started_at": log.iso(self.started_at),
            "hits": {"total": self.stats.total_hits, **self.stats.by_outcome()},
            "bans": {
                "active": len(active),
                "permanent": sum(1 for b in active if b.permanent),
                "made": dict(self.stats.bans),
            },
            "ports": [
                {"proto": proto, "port": None if port == OTHER_PORT else port, "hits": hits}
                for proto, port, hits in self.stats.top_ports(limit)
            ],
            "sources": [
                {
                    "address": str(address),
                    "hits": source.hits,
                    "last_seen": log.iso(source.last_seen),
                    "last_port": source.last_port,
                    "last_proto": source.last_proto,
                    "banned": _ban_state(banned, address),
                }
                for address, source in self.stats.top_sources(limit)
            ],
            "recent_bans": [ban_json(ban) for ban in newest],
        }

    async def _ban(self, request: dict[str, Any]) -> dict[str, Any]:
        with heap.bulk():
            answer = self._ban_all(request)
        await self._recorded()
        return answer

    async def _recorded(self) -> None:
        """Wait, without blocking the loop, until the store holds what was just applied: an
        admin's `porttrap bans` right after `porttrap ban` must show it."""
        await asyncio.wrap_future(self.writer.barrier())

    def _ban_all(self, request: dict[str, Any]) -> dict[str, Any]:
        targets = parse_targets(request.get("targets", []))
        duration, permanent = request.get("for"), bool(request.get("permanent"))
        if duration is not None and (not isinstance(duration, int | float) or duration <= 0):
            raise UsageError(f"bad ban duration {duration!r}")
        now = self.clock.now()
        bans = self.policy.ban(targets, now, duration=duration, permanent=permanent)
        self.applier.apply_now(bans)
        return {"count": len(bans), "bans": [ban_json(b) for b in bans[:MAX_ANSWERED]]}

    async def _unban(self, request: dict[str, Any]) -> dict[str, Any]:
        with heap.bulk():
            answer = self._unban_all(request)
        await self._recorded()
        return answer

    def _unban_all(self, request: dict[str, Any]) -> dict[str, Any]:
        targets = parse_targets(request.get("targets", []))
        now = self.clock.now()
        was_banned = [show(t) for t in targets if self._is_banned(t, now)]
        unbans = [self.policy.unban(t, now) for t in targets]
        self.applier.apply_now(unbans)
        return {"unbanned": [show(u.target) for u in unbans], "were_banned": was_banned}

    def _is_banned(self, target: IPNetwork, now: float) -> bool:
        return any(b.target == target for b in self.policy.active(now))


def _protection(config: Config) -> Protection:
    return Protection(config.allow.networks, patterns=config.allow.patterns)


def parse_targets(raw: object) -> list[IPNetwork]:
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
    return list(dict.fromkeys(targets))


def ban_json(ban: Ban) -> dict[str, Any]:
    return {
        "address": show(ban.target),
        "banned_at": log.iso(ban.banned_at),
        "expires_at": log.iso(ban.expires_at),
        "permanent": ban.permanent,
        "ban_count": ban.ban_count,
        "reason": ban.reason,
    }


def unban_json(unban: Unban) -> dict[str, Any]:
    return {"address": show(unban.target), "at": log.iso(unban.at), "reason": unban.reason}


def _ban_state(banned: dict[IPNetwork, Ban], address: IPAddress) -> dict[str, Any] | None:
    """The ban on exactly this address, if any (bans on whole networks are not looked up)."""
    ban = banned.get(as_network(address))
    return None if ban is None else ban_json(ban)


def _connect_traps(config: Config) -> list[Trap]:
    return [t for t in config.traps if config.modes.of(t.proto) is TrapMode.CONNECT]


def _enforced_by(config: Config) -> Callable[[Ban], bool]:
    """`Policy.enforced` as it will be under `config` (the policy changes after the kernel)."""
    policy = Policy(config.ban, config.traps, _protection(config))
    return policy.enforced


def _log_refused(err: PorttrapError) -> None:
    if isinstance(err, ConfigError):
        for problem in err.problems:
            log.event("config-error", logging.ERROR, problem=str(problem))
    log.event(
        "reload-refused",
        logging.ERROR,
        error=str(err) if not isinstance(err, ConfigError) else "invalid configuration",
        hint="the running configuration stays; fix the file and reload again",
    )
