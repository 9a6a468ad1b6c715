"""The scanner's packets: sockets opened from inside the scanner's namespace.

A socket belongs to the network namespace of the thread that created it, for its whole life.
So the calling thread steps into the namespace (setns) only to create the socket and steps
straight back; the connect, send and receive happen from home, on a socket that lives in the
scanner's namespace. Nothing else runs while the thread is away: no program is started from
inside (a child would inherit the namespace), and no firewall is touched at all.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from porttrap.clock import Clock
from porttrap.errors import PorttrapError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_THREAD_NETNS = Path("/proc/thread-self/ns/net")
_READ = 1024


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """This thread in network namespace `netns` for the block, and back home afterwards."""
    with _THREAD_NETNS.open("rb") as home, (NETNS_DIR / netns).open("rb") as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def open_socket(netns: str, source: str, kind: int) -> socket.socket:
    """A socket of `kind` in `netns`, bound to local address `source`."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with inside(netns):
        sock = socket.socket(family, kind)
    try:
        sock.bind((source, 0))
    except OSError as err:
        sock.close()
        raise PorttrapError(f"cannot bind to {source} in namespace {netns}: {err}") from err
    return sock


@dataclass(frozen=True, slots=True)
class Connection:
    """How a TCP connection attempt went: `connected` within `seconds`, what it read, or the
    error (a timeout: nothing answered, the packets were dropped)."""

    connected: bool
    seconds: float
    at: float  # the clock's monotonic reading when the attempt ended
    reply: bytes = b""
    error: str = ""


def connect(
    clock: Clock, netns: str, source: str, dest: str, port: int, *, timeout: float
) -> Connection:
    """Connect from `source` in `netns` to dest:port; read what the other side sends first
    (the service's greeting; a connect-mode trap sends nothing and closes)."""
    with open_socket(netns, source, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        started = clock.monotonic()
        try:
            sock.connect((dest, port))
        except OSError as err:
            ended = clock.monotonic()
            error = "no answer" if isinstance(err, TimeoutError) else err.strerror or str(err)
            return Connection(False, ended - started, ended, error=error)
        ended = clock.monotonic()
        try:
            reply = sock.recv(_READ)
        except OSError:
            reply = b""
        return Connection(True, ended - started, ended, reply)


def send_udp(netns: str, source: str, dest: str, port: int, payload: bytes) -> None:
    """One datagram from `source` in `netns` to dest:port."""
    with open_socket(netns, source, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, (dest, port))
