"""systemd's notify protocol (sd_notify(3)), written out: it is one datagram per message.

A service with `Type=notify` finds the service manager's socket in `NOTIFY_SOCKET` (a path, or
`@name` for an abstract socket) and sends it newline-separated `KEY=value` assignments:
`READY=1` once it serves, `RELOADING=1` with `MONOTONIC_USEC=` while it re-reads its
configuration, `STOPPING=1`, `STATUS=` free text for `systemctl status`, and `WATCHDOG=1` more
often than every `WATCHDOG_USEC` microseconds when the unit sets `WatchdogSec=`.

Without `NOTIFY_SOCKET` (no systemd, a shell, a test) every method does nothing: porttrap runs
the same without systemd. A message that cannot be sent (systemd gone or restarting, its queue
full) is logged once per failing streak and otherwise ignored: telling systemd how porttrap is
must never stop or slow porttrap itself. The socket is non-blocking.

`from_environment` takes the three variables out of the environment, so that the commands
porttrap runs as actions never inherit them and never talk to systemd in porttrap's name.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping

from porttrap import log

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
VARIABLES = (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID)


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Tells systemd porttrap's state. Build it with `from_environment`; `Notifier(None)` is
    the disabled one, whose every method does nothing."""

    def __init__(
        self,
        address: str | None,
        watchdog_interval: float | None = None,
        clock: Callable[[], int] = monotonic_usec,
    ) -> None:
        """`address`: the socket's path, or an abstract name starting with NUL; None: no
        systemd. `watchdog_interval`: seconds between WATCHDOG=1 pings, None: not asked.
        `clock`: CLOCK_MONOTONIC in microseconds (tests fake it)."""
        self._address = address
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._clock = clock
        self._socket: socket.socket | None = None
        self._failing = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd's variables ask for, which are then removed from `environ`
        (hooks must not inherit them). A value that makes no sense is logged and ignored."""
        raw = {name: environ.pop(name, None) for name in VARIABLES}
        address = _address(raw[NOTIFY_SOCKET])
        interval = None
        if address is not None:
            interval = _watchdog_interval(raw[WATCHDOG_USEC], raw[WATCHDOG_PID], os.getpid())
        return cls(address, interval)

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to tell (NOTIFY_SOCKET was set and usable)."""
        return self._address is not None

    def ready(self, status: str = "") -> None:
        """Start-up is over: traps set, bans restored, the control socket answers."""
        self._send("READY=1", *_status(status), f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        """Re-reading the configuration; `ready()` again when done (systemd ≥ 253 needs the
        timestamp to tell this reload from an older one)."""
        self._send("RELOADING=1", f"MONOTONIC_USEC={self._clock()}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        """One line for `systemctl status` ("Status: ...")."""
        self._send(*_status(text))

    def watchdog(self) -> None:
        """Still alive; due every `watchdog_interval` seconds."""
        self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, *assignments: str) -> None:
        if self._address is None or not assignments:
            return
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(message, self._address)
        except OSError as err:
            self._failed(err, assignments[0])
            return
        self._failing = False

    def _failed(self, err: OSError, first: str) -> None:
        if self._failing:  # once per streak: a watchdog ping every few seconds would flood
            return
        self._failing = True
        log.event(
            "notify-failed",
            logging.WARNING,
            socket=_shown(self._address),
            message=first,
            error=err.strerror or str(err),
            hint="systemd may be restarting; porttrap keeps running, and logs this again only "
            "after a message got through",
        )


def _status(text: str) -> tuple[str, ...]:
    """STATUS= on one line (a newline would start another assignment), or nothing."""
    line = " ".join(text.split())
    return (f"STATUS={line}",) if line else ()


def _address(value: str | None) -> str | None:
    """NOTIFY_SOCKET as a socket address: an absolute path, or '@name' (abstract)."""
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.event(
        "notify-unsupported",
        logging.WARNING,
        socket=value,
        hint="NOTIFY_SOCKET is neither an absolute path nor an abstract '@name'; porttrap "
        "will not tell systemd when it is ready (use Type=simple, or a systemd that gives a "
        "path)",
    )
    return None


def _watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Half of WATCHDOG_USEC in seconds (as sd_watchdog_enabled(3) advises), when the
    watchdog is meant for this process (WATCHDOG_PID unset or ours)."""
    if usec is None:
        return None
    if pid is not None and pid.strip() != str(own_pid):
        log.event("watchdog-not-ours", logging.DEBUG, watchdog_pid=pid, pid=own_pid)
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.event(
            "watchdog-invalid",
            logging.WARNING,
            watchdog_usec=usec,
            hint="WATCHDOG_USEC must be a positive number of microseconds; porttrap sends "
            "no watchdog pings, so a unit with WatchdogSec= will restart it",
        )
        return None
    return value / 2_000_000


def _shown(address: str | None) -> str | None:
    """An address as NOTIFY_SOCKET wrote it ('@name' for an abstract socket)."""
    if address is not None and address.startswith("\0"):
        return "@" + address[1:]
    return address
