"""The shell around the core: the one place that does I/O.

It runs the event loop; turns sensor reports, timers, signals and control requests into the
core's events; carries out the core's commands (`porttrap.daemon.effects`), feeding back the
events their outcomes make; and answers `status`, `top` and the metrics from the core's
snapshot. Nothing here decides anything about bans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from porttrap import __version__, heap, log
from porttrap.actions.dispatch import Dispatcher
from porttrap.clock import Clock
from porttrap.config.schema import Config
from porttrap.core import commands as c
from porttrap.core import events as e
from porttrap.core import requests, views
from porttrap.core.core import TICK, Core, connect_traps
from porttrap.core.snapshot import IoFigures, ReportFigures, Snapshot
from porttrap.daemon import reloading
from porttrap.daemon.control import ControlServer, Handler
from porttrap.daemon.effects import Effects
from porttrap.daemon.guards import Guards
from porttrap.daemon.hold import HoldQueue, holds
from porttrap.daemon.loop_errors import AcceptErrors
from porttrap.daemon.metrics_server import MetricsServer, snapshot_registry
from porttrap.daemon.notify import Notifier
from porttrap.daemon.writer import StoreWriter
from porttrap.errors import (
    FirewallError,
    PorttrapError,
    Refused,
    RemoteConfigError,
    UsageError,
)
from porttrap.firewall.base import FirewallBackend, SensorBackend
from porttrap.model import Hit, IPAddress, IPNetwork, TrapReport
from porttrap.sensors import listeners, sessions
from porttrap.sensors.hostaddrs import AddressWatcher, current_addresses
from porttrap.sensors.kernel import KernelReports
from porttrap.sensors.listeners import ListenerWatcher
from porttrap.sensors.sockets import SocketTraps
from porttrap.sensorspec import Ports
from porttrap.store.base import Store

if TYPE_CHECKING:
    from porttrap.daemon.fleet import FleetShell

POLL = 0.25  # seconds between reads of the kernel sensor's counters
CLEAN_STOP = "clean-stop"  # in state_dir: the last stop wrote every record (see _kernel_bans)
STATUS_EVERY = 120  # ticks (60 s) between systemd STATUS= lines
CLIENTS_EVERY = 10  # ticks (5 s) between reads of the live clients, while prefix bans are on
HEARTBEAT_EVERY = 2  # ticks (1 s) between the hold's heartbeats (each lasts 2 s in the kernel)


class Shell:
    """Runs the daemon until asked to stop. Built by `porttrap.daemon.wiring`."""

    def __init__(
        self,
        core: Core,
        clock: Clock,
        store: Store,
        firewall: FirewallBackend,
        sensor: SensorBackend | None,
        *,
        config_path: Path | None = None,
        verbose: bool = False,
        notifier: Notifier | None = None,
    ) -> None:
        config = core.config
        self.core = core
        self.clock = clock
        self.store = store
        self.firewall = firewall
        self.config_path = config_path
        self.verbose = verbose
        self.notifier = notifier if notifier is not None else Notifier(None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restored = False
        self.writer = StoreWriter(
            lambda error: self._from_writer(e.StoreFailed(error)),
            lambda retries: self._from_writer(e.StoreRecovered(retries)),
        )
        actions = Dispatcher(config.actions, config.modes, config.state_dir)
        self.effects = Effects(
            clock,
            firewall=firewall,
            sensor=sensor,
            store=store,
            writer=self.writer,
            actions=actions,
        )
        self._effects = self.effects.table_of()
        self._effects |= {
            c.FlushSoon: self._flush_soon,
            c.Schedule: self._schedule,
            c.UpdateTraps: self._update_traps,
            c.UpdateSessions: self._update_sessions,
            c.UpdateCatchAll: self._update_catch_all,
        }
        # The hold's queue (docs/hold.md): bound at start, or by a reload that turns it on.
        self.hold = HoldQueue(clock, sensor, self._feed_alone) if sensor is not None else None
        if self.hold is not None:
            hold = self.hold
            self._effects |= {
                c.Verdict: hold.verdict,
                c.Release: hold.release,
                c.StopHolding: lambda _command: hold.close(),
                c.Setup: self._setup_then_beat,  # a new table holds no heartbeat yet
            }
        self.report = TrapReport()
        self._traps = SocketTraps(connect_traps(config), self.on_hit, clock, config.banner)
        kernel = core.kernel is not None  # the kernel sensor (stealth, advanced)
        self._kernel = KernelReports(config.kernel, self.on_hit, clock) if kernel else None
        self._listeners = ListenerWatcher(self.on_served, clock=clock) if kernel else None
        self._addresses = AddressWatcher(self._on_addresses)
        self._guards = Guards(
            config,
            clock,
            on_gateways=lambda found: self._feed_alone(e.GatewaysChanged(found)),
            on_sessions=lambda found: self._feed_alone(e.SessionsChanged(found)),
            on_hit=self.on_hit,
            kernel=kernel,
        )
        self.fleet = self._make_fleet(config)
        self.handlers = self._handlers()  # the control socket's requests, by "cmd"
        self._control = ControlServer(config.control_socket, self.handlers)
        self.metrics = MetricsServer(snapshot_registry(self.snapshot))
        self._stop = asyncio.Event()
        self._reloading = asyncio.Lock()
        self._timers: set[asyncio.Handle] = set()
        self._poller: asyncio.TimerHandle | None = None
        self._clients_failed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def config(self) -> Config:
        return self.core.config

    def _setup_then_beat(self, command: c.Setup) -> e.Event | None:
        event = self.effects.setup(command)
        self._heartbeat()
        return event

    def open_hold(self, config: Config) -> None:
        """Bind the hold's queue when `config` holds SYNs; PorttrapError when it cannot."""
        if self.hold is not None and self.hold.reader is None and holds(config):
            self.hold.open(config, asyncio.get_running_loop())

    def _make_fleet(self, config: Config) -> FleetShell | None:
        """The outbox and the link when this host is in a fleet (a password file others can
        read refuses the start here, before the kernel is touched)."""
        if config.fleet is None:
            self._effects[c.Publish] = lambda _command: None
            return None
        from porttrap.daemon.fleet import FleetShell  # psycopg: only for a fleet

        fleet = FleetShell(config, self.clock, self._feed_alone, self.writer)
        self._effects[c.Publish] = fleet.publish
        return fleet

    @property
    def actions(self) -> Dispatcher:
        return self.effects.actions

    # -- feeding the core ----------------------------------------------------------------

    def feed(self, event: e.Event) -> list[c.Command]:
        """Handle `event` and the events its commands lead to. Returns the commands left for
        the caller: answers, refusals and the reload's asynchronous steps."""
        return self._run(self.core.handle(event, self.clock.now()))

    def _run(self, commands: list[c.Command]) -> list[c.Command]:
        left: list[c.Command] = []
        batches = deque([commands])
        while batches:
            follow: list[e.Event] = []
            for command in batches.popleft():
                effect = self._effects.get(type(command))
                if effect is None:
                    left.append(command)
                elif (event := effect(command)) is not None:
                    follow.append(event)
            now = self.clock.now()
            batches.extend(self.core.handle(event, now) for event in follow)
        return left

    def _read_clients(self) -> None:
        """The peers of the host's established connections, for the carve-outs of prefix
        bans. A failed read keeps the last set, and says so once."""
        try:
            peers = sessions.established()
        except OSError as err:
            if not self._clients_failed:
                log.event("clients-unread", logging.WARNING, error=str(err))
            self._clients_failed = True
            return
        self._clients_failed = False
        self._feed_alone(e.ClientsChanged(peers))

    def _feed_alone(self, event: e.Event) -> None:
        """Feed an event no caller waits on (a timer's, a sensor's): a command left for a
        caller would be lost, which is a bug worth a line in the log."""
        for command in self.feed(event):
            log.event("command-lost", logging.ERROR, command=type(command).__name__,
                      event=type(event).__name__)  # fmt: skip

    def _from_writer(self, event: e.Event) -> None:
        """From the store writer's thread: the event is fed on the loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the daemon has stopped
                loop.call_soon_threadsafe(self._feed_alone, event)

    def on_hit(self, hit: Hit) -> None:
        """From the sensors, for each trap touched (thousands a second under a scan)."""
        arrived = self.clock.monotonic()
        commands = self.core.handle(e.HitSeen(hit, arrived), self.clock.now())
        self.effects.latency.decision.observe(self.clock.monotonic() - arrived)
        for command in self._run(commands):
            log.event("command-lost", logging.ERROR, command=type(command).__name__, event="hit")

    def _on_addresses(self, own: frozenset[IPAddress]) -> None:
        self._feed_alone(e.AddressesChanged(own))

    def on_served(self, ports: Ports) -> None:
        """From the listeners sensor: the ports this host serves changed."""
        self._feed_alone(e.ServedPortsChanged(ports, self.clock.monotonic()))

    def _flush_soon(self, _command: c.FlushSoon) -> None:
        """The changes of this loop turn go out together, once the turn is over."""
        self._later(0, e.TurnEnded())

    def _schedule(self, command: c.Schedule) -> None:
        self._later(command.delay, command.event)

    def _later(self, delay: float, event: e.Event) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._feed_alone(event)

        handle: asyncio.Handle = loop.call_later(delay, fire) if delay else loop.call_soon(fire)
        self._timers.add(handle)

    def _update_traps(self, command: c.UpdateTraps) -> None:
        loop = asyncio.get_running_loop()
        self.report = self._traps.update(loop, command.traps, command.banner)

    def _update_sessions(self, command: c.UpdateSessions) -> None:
        self._guards.update_sessions(command.ssh_ports)

    def _update_catch_all(self, command: c.UpdateCatchAll) -> None:
        loop = asyncio.get_running_loop()
        self._guards.update_catch_all(loop, command.port, command.banner)

    # -- life cycle ----------------------------------------------------------------------

    async def run(self, flush_on_exit: bool = False) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrors(self.clock))
        await self._control.start()  # first: refuses when another daemon runs
        try:
            # Before the served ports are read: the metrics port is then never a trap.
            await self.metrics.start(self.config.metrics.listen)
            # Before the table: a redirected SYN has its listener, and no hit is judged
            # without the gateways and the admin's sessions.
            gateways, sessions = self._guards.start(loop)
            # Every check that can refuse the start comes before the table is touched. The
            # traps and the NFLOG group are bound now but read only once the loop turns,
            # after the restore (nothing in between awaits).
            self.report = self._traps.start(loop)
            if self.report.none_set and self._kernel is None:
                raise PorttrapError("no trap could be set (every trap port was skipped, see above)")
            self._bind_reports(loop)
            self.open_hold(self.config)  # no SYN comes before the table's rule is in
            self._restore(self._served_now(), gateways, sessions)
            if self.config.ban.prefix.on:  # before any hit is judged: the first prefix ban
                self._read_clients()  # must not wait 5 s to know the live clients
            self.writer.start()
            self._start_kernel(loop)
            self._watch_addresses(loop)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
            if self.fleet is not None:
                await self.fleet.start()
            self._log_start()
            self.notifier.ready(self._summary())
            await self._serve()
        finally:
            self.notifier.stopping()
            await self._shutdown(flush_on_exit)

    def stop(self) -> None:
        self._stop.set()

    def _mark_clean(self) -> None:
        """Every record written: the next start need not read the kernel's bans. A marker
        that cannot be written (a full disk) makes the next start read them: the safe way."""
        if not self._restored or self.writer.lost or self.writer.error is not None:
            return
        if self.core.clock_skew:  # the database holds times of a wall clock that jumped: the
            return  # next start reads the kernel's bans and their true time left, as after a crash
        try:
            (self.config.state_dir / CLEAN_STOP).touch(mode=0o600)
        except OSError as err:
            log.event("clean-stop-unmarked", logging.DEBUG, error=str(err))

    def _served_now(self) -> listeners.Ports | None:
        """The served ports, read before the table is built: none may be a trap, ever."""
        if self._kernel is None:
            return None
        try:
            return listeners.current()
        except OSError as err:
            raise PorttrapError(
                f"cannot read which ports this host serves (netlink sock_diag: {err}); the "
                "kernel sensor needs it so as never to trap a service port"
            ) from err

    def _restore(
        self,
        served: listeners.Ports | None,
        gateways: frozenset[IPAddress],
        sessions: frozenset[IPAddress],
    ) -> None:
        """Bans from the store back into the core and, in one batch, into the kernel."""
        self.effects.restore.started = self.clock.monotonic()
        with heap.bulk():  # 100,000 bans: see porttrap.heap
            now = self.clock.now()
            stored = self.store.bans_to_restore(now, self.core.restore_since(now))
            self.effects.restore.skipped = self.store.bad_rows
            held = self._kernel_bans()
            started = e.Started(current_addresses(), stored, served, gateways, sessions, held)
            self.feed(started)
            self._restored = True  # the kernel's bans read (or known to be in the store)
            del stored

    def _kernel_bans(self) -> tuple[tuple[IPNetwork, float | None], ...]:
        """The bans porttrap's table holds before the start rebuilds it (a restart): those
        the store lacks are kept. Read unless the last stop was clean (every record written:
        the store lacks nothing, and reading 100,000 bans would add seconds to the start);
        after a crash, `kill -9` or a write given up, they are. A read that fails keeps none,
        and says so."""
        marker = self.config.state_dir / CLEAN_STOP
        clean = marker.exists()
        try:
            marker.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:  # a read-only state_dir: the database will say more
            log.event("clean-stop-unremoved", logging.WARNING, error=str(err))
            clean = False
        if clean:
            return ()
        try:
            return tuple((entry.target, entry.remaining) for entry in self.firewall.entries())
        except FirewallError as err:
            log.event("kernel-bans-unread", logging.WARNING, error=str(err))
            return ()

    def _bind_reports(self, loop: asyncio.AbstractEventLoop) -> None:
        """The kernel sensor's NFLOG group, before the table: a group another program holds
        refuses the start with the kernel untouched."""
        if self._kernel is None:
            return
        try:
            self._kernel.start(loop)
        except OSError as err:
            group = self.config.kernel.nflog_group
            raise PorttrapError(
                f"the kernel sensor cannot receive reports on NFLOG group {group}: {err} "
                "(another program, such as ulogd or a second porttrap, may hold the group: "
                "set another [kernel] nflog_group)"
            ) from err

    def _start_kernel(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._kernel is None or self._listeners is None:
            return
        self.on_served(self._listeners.start(loop))
        self._poll_counters()

    def _poll_counters(self) -> None:
        """Every POLL seconds, for as long as the daemon runs; a bug here is logged, and the
        next reading comes all the same."""
        try:
            self.read_counters()
        except Exception:
            log.LOGGER.exception(log.fields("kernel-sensor-failed"))
        finally:
            self._poller = asyncio.get_running_loop().call_later(POLL, self._poll_counters)

    def read_counters(self) -> None:
        """The kernel sensor's counters to the core (served ports that stopped lingering,
        block sets that fill); a failed read is logged, and the core told (None)."""
        assert self.effects.sensor is not None, "counters without a kernel sensor"
        counters: dict[str, int] | None = None
        try:
            counters = self.effects.sensor.sensor_counters()
        except FirewallError as err:
            log.event("kernel-sensor-error", logging.DEBUG, action="counters", error=str(err))
        self._feed_alone(e.CountersRead(counters, self.clock.monotonic()))

    def _heartbeat(self) -> None:
        if self.hold is not None:
            self.hold.heartbeat()

    def _watch_addresses(self, loop: asyncio.AbstractEventLoop) -> None:
        """Follow the host's addresses; the first reading after subscribing counts too, as
        an address may have come since the restore."""
        try:
            self._on_addresses(self._addresses.start(loop))
        except OSError as err:  # no netlink (a seccomp sandbox): keep the start-up reading
            log.event(
                "host-addresses-static",
                logging.WARNING,
                error=str(err),
                hint="the host's own addresses are not followed until a restart",
            )

    def _log_start(self) -> None:
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

    async def _serve(self) -> None:
        ticks = 0
        watchdog = self.notifier.watchdog_interval
        per_ping = max(1, int((watchdog or 0) / TICK))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), TICK)
            self._feed_alone(e.Tick(self.writer.pending, self.clock.monotonic()))
            ticks += 1
            if ticks % HEARTBEAT_EVERY == 0:
                self._heartbeat()
            if ticks % CLIENTS_EVERY == 0 and self.config.ban.prefix.on:
                self._read_clients()
            if watchdog is not None and ticks % per_ping == 0:
                # From the loop itself: a loop stuck in a callback pings no more, and
                # systemd restarts porttrap (WatchdogSec=).
                self.notifier.watchdog()
            if ticks % STATUS_EVERY == 0:
                self.notifier.status(self._summary())

    async def _shutdown(self, flush_on_exit: bool) -> None:
        self._traps.close()
        if self._kernel is not None:
            self._kernel.close()
        if self._listeners is not None:
            self._listeners.close()
        self._addresses.close()
        self._guards.close()
        for timer in [*self._timers, self._poller]:
            if timer is not None:
                timer.cancel()
        self.feed(e.Stopping())  # answers every held SYN: unbinding the queue drops them
        if self.hold is not None:
            self.hold.close()
        if self.fleet is not None:
            await self.fleet.close()  # the outbox holds what the link had not published
        dropped, killed = await self.actions.close()  # running actions get a grace time
        self.writer.close()  # every record written before the store is closed
        self._mark_clean()
        await self._control.close()
        await self.metrics.close()
        if flush_on_exit:
            self.firewall.teardown()
            log.event("flushed", table=self.config.firewall.table)
        enabled = self.actions.enabled
        log.event(
            "stop",
            pid=os.getpid(),
            actions_dropped=dropped if enabled else None,
            actions_killed=killed if enabled else None,
        )

    # -- views ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The core's snapshot with the shell's own figures."""
        reports = None
        if self._kernel is not None:
            receiver = self._kernel.receiver
            reports = ReportFigures(
                received=receiver.received,
                overruns=receiver.overruns,
                malformed=receiver.malformed,
                unreadable=self._kernel.unreadable,
                foreign=self._kernel.foreign,
            )
        io = IoFigures(
            backend=self.firewall.name,
            traps=self.report,
            store_backlog=self.writer.pending,
            store_failures=self.writer.failures,
            restore_skipped=self.effects.restore.skipped,
            actions_enabled=self.actions.enabled,
            actions=self.actions.status(),
            reports=reports,
            decision=self.effects.latency.decision,
            to_kernel=self.effects.latency.to_kernel,
            fleet=None if self.fleet is None else self.fleet.snapshot(),
            queue=None if self.hold is None else self.hold.figures(),
        )
        return self.core.snapshot(self.clock.now(), io)

    def _summary(self) -> str:
        """One line for `systemctl status`."""
        snap = self.snapshot()
        return (
            f"{len(self.report.set)} trap sockets, {len(snap.active)} bans "
            f"({snap.permanent} permanent), {snap.stats.total_hits} hits"
        )

    # -- control requests ----------------------------------------------------------------

    def _handlers(self) -> dict[str, Handler]:
        return {
            "status": lambda _request: views.status(self.snapshot(), os.getpid()),
            "top": lambda request: views.top(self.snapshot(), requests.top_limit(request)),
            "reload": lambda _request: self.reload(),
            "ban": lambda request: self._admin(requests.ban(request)),
            "unban": lambda request: self._admin(requests.unban(request)),
            "fleet": lambda _request: self._fleet_status(),
        }

    def _fleet_status(self) -> dict[str, Any]:
        if self.fleet is None:
            raise UsageError("this host is in no fleet (its configuration has no [fleet] section)")
        counts = self.core.fleet.counts
        return {**self.fleet.status(), "adopted": counts.adopted, "refused": counts.refused,
                "ignored": counts.ignored, "lifted": counts.lifted}  # fmt: skip

    async def _admin(self, event: e.AdminBan | e.AdminUnban) -> dict[str, Any]:
        with heap.bulk():
            left = self.feed(event)
        return await self.answer(left)

    async def answer(self, left: list[c.Command]) -> dict[str, Any]:
        """The answer among the commands left, once the store has what it says when asked
        (`recorded`), or as soon as a write before it fails (`recorded` false, with the
        `store_error`: the kernel has it, the disk not yet); a refusal raises, for the
        control socket to send."""
        for command in left:
            if isinstance(command, c.Refuse):
                if command.problems:
                    raise RemoteConfigError(list(command.problems))
                raise (UsageError if command.usage else Refused)(command.message)
            if isinstance(command, c.Answer):
                if not command.after_store:
                    return dict(command.payload)
                error = await asyncio.wrap_future(self.writer.settle())
                return {**command.payload, "recorded": error is None, "store_error": error}
        raise PorttrapError("the daemon had no answer to this request (a bug: please report)")

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
        with contextlib.suppress(PorttrapError):  # logged by the core
            await self.reload()

    async def reload(self) -> dict[str, Any]:
        """Read the configuration again and apply it (`porttrap.daemon.reloading`), one
        reload at a time; systemd hears of it (RELOADING, then READY)."""
        async with self._reloading:
            self.notifier.reloading()
            # a reload may turn prefix bans on: their carve-outs must know the live clients
            # before the first hit under them, not at the next 5 s poll (a read is cheap)
            self._read_clients()
            try:
                return await reloading.reload(self)
            finally:
                self.notifier.ready(self._summary())
