"""The sensors that tell the daemon whom to protect, and the catch-all listener that proves a
client's address: the host's gateways (routes), the peers of the admin's SSH sessions, and
the listener where the kernel redirects a recent client's SYNs to trap ports.

They start before porttrap's table is built, so that the first `Started` carries their first
readings (no hit is ever judged without them) and the redirect has a listener from its first
SYN on. A sensor that cannot start is logged and the daemon goes on: protection that cannot be
followed is kept as read at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from porttrap import log
from porttrap.clock import Clock
from porttrap.config.schema import Config, Trap
from porttrap.core.core import catch_all_port
from porttrap.model import Hit, IPAddress, Proto, TrapReport
from porttrap.sensors.catchall import catch_all
from porttrap.sensors.routes import RouteWatcher
from porttrap.sensors.sessions import SessionWatcher
from porttrap.sensors.sockets import SocketTraps

Addresses = Callable[[frozenset[IPAddress]], None]


class Guards:
    """Gateways, sessions and the catch-all; `start` returns the first readings."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        *,
        on_gateways: Addresses,
        on_sessions: Addresses,
        on_hit: Callable[[Hit], None],
        kernel: bool,
    ) -> None:
        self._routes = RouteWatcher(on_gateways, clock=clock)
        self._sessions = SessionWatcher(on_sessions, config.protect.ssh_ports, clock=clock)
        port = catch_all_port(config) if kernel else 0
        self._catch_all_port = port
        self._catch_all: SocketTraps = catch_all(port, on_hit, clock, config.banner)
        self.catch_report = TrapReport()

    def start(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[frozenset[IPAddress], frozenset[IPAddress]]:
        """Start all three; (gateways, session peers) as first read."""
        if self._catch_all_port:
            self.catch_report = self._catch_all.start(loop)
            _warn_if_skipped(self.catch_report)
        gateways = _started("gateways", lambda: self._routes.start(loop))
        sessions = _started("ssh-sessions", lambda: self._sessions.start(loop))
        return gateways, sessions

    def update_sessions(self, ssh_ports: tuple[int, ...]) -> None:
        self._sessions.reconfigure(ssh_ports)

    def update_catch_all(self, loop: asyncio.AbstractEventLoop, port: int, banner: bytes) -> None:
        """A reload moved the catch-all listener (or turned it off: port 0)."""
        if port == self._catch_all_port and port:
            self.catch_report = self._catch_all.update(loop, [Trap(Proto.TCP, port)], banner)
            return
        self._catch_all.close()
        self._catch_all_port = port
        self.catch_report = TrapReport()
        if port:
            self.catch_report = self._catch_all.update(loop, [Trap(Proto.TCP, port)], banner)
            _warn_if_skipped(self.catch_report)

    def close(self) -> None:
        self._catch_all.close()
        self._routes.close()
        self._sessions.close()


def _started(what: str, start: Callable[[], frozenset[IPAddress]]) -> frozenset[IPAddress]:
    """A sensor that cannot start (no netlink: a seccomp sandbox) is said, not fatal."""
    try:
        return start()
    except OSError as err:
        log.event(
            "protection-static",
            logging.WARNING,
            what=what,
            error=str(err),
            hint="not followed until a restart",
        )
        return frozenset()


def _warn_if_skipped(report: TrapReport) -> None:
    for trap in report.skipped:
        log.event(
            "catch-all-skipped",
            logging.WARNING,
            port=trap.port,
            address=trap.address,
            reason=trap.reason,
            holder=trap.holder,
            hint="a recent client's SYN to a trap port gets a RST instead of a handshake: "
            "set another [kernel] client_trap_port",
        )
