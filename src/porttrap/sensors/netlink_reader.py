"""A netlink socket read from the daemon's event loop: the shape the NFLOG receiver
(`sensors.nflog`) and the hold's NFQUEUE reader (`sensors.nfqueue`) share. At most DRAIN_LIMIT
datagrams per readable callback (then the loop serves the others), the kernel's ENOBUFS (its
messages dropped, or its fail-open taken) counted by the subclass, and a pause of ERROR_PAUSE
after an unexpected error, so that a lasting one cannot spin the loop."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable

from porttrap.log import LOGGER
from porttrap.netlink import ERRNO, NETLINK_NETFILTER, NLMSG_ERROR, split

SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in Python's socket module before 3.12
DRAIN_LIMIT = 64  # datagrams per readable callback, then the loop serves the others
RECV_SIZE = 65536
ERROR_PAUSE = 1.0  # seconds without reading after an unexpected error, so it cannot spin
ACK_TIMEOUT = 2.0

Bound = tuple[socket.socket, list[bytes]]  # the socket, and datagrams read before the acks


def open_bound(rcvbuf: int, configure: Callable[[socket.socket], list[bytes]]) -> Bound:
    """A netfilter netlink socket in this thread's network namespace, with a receive buffer of
    `rcvbuf` bytes, configured by `configure` (blocking, with a timeout for the acks; it
    returns the datagrams that came before them), then made non-blocking. Closed again if
    anything raises."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        set_rcvbuf(sock, rcvbuf)
        sock.bind((0, 0))
        sock.settimeout(ACK_TIMEOUT)
        early = configure(sock)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, early


def request(sock: socket.socket, message: bytes, seq: int, early: list[bytes]) -> int:
    """Send one request; the errno in its ack (0: done). Other datagrams go to `early`."""
    sock.sendto(message, (0, 0))
    for _ in range(DRAIN_LIMIT):
        data = sock.recv(RECV_SIZE)
        for kind, answered, body in split(data)[0]:
            if kind == NLMSG_ERROR and answered == seq and len(body) >= ERRNO.size:
                return -int(ERRNO.unpack_from(body)[0])
        early.append(data)
    raise OSError(errno.ETIMEDOUT, f"no netlink ack among {DRAIN_LIMIT} datagrams")


def set_rcvbuf(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE (root may exceed net.core.rmem_max), else SO_RCVBUF (capped by it)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


class LoopReader:
    """Reads a bound, non-blocking netlink socket from an asyncio loop. Subclasses bind it
    (`_attach`), read each datagram (`_handle`), count the kernel's ENOBUFS (`_overrun`) and
    say what an unexpected error is about (`_error_line`, logged with its traceback)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    @property
    def reading(self) -> bool:
        """Bound, and not paused after an error."""
        return self._sock is not None and self._timer is None

    def _attach(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock, self._loop = sock, loop
        loop.add_reader(sock, self._on_readable)

    def close(self) -> None:
        """Unbind (closing the socket does it) and unregister. Safe to call more than once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock)
        self._sock.close()
        self._sock = None

    def _handle(self, data: bytes) -> None:
        raise NotImplementedError

    def _overrun(self) -> None:
        raise NotImplementedError

    def _error_line(self) -> str:
        raise NotImplementedError

    def _on_readable(self) -> None:
        try:
            self._drain()
        except Exception:
            LOGGER.exception(self._error_line())
            self._pause()

    def _drain(self) -> None:
        """Read up to DRAIN_LIMIT datagrams; the loop calls again if more wait."""
        assert self._sock is not None
        for _ in range(DRAIN_LIMIT):
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overrun()
                continue
            self._handle(data)

    def _pause(self) -> None:
        """Stop reading for ERROR_PAUSE seconds, so a lasting error cannot spin the loop."""
        if self._loop is None or self._sock is None or self._timer is not None:
            return
        self._loop.remove_reader(self._sock)
        self._timer = self._loop.call_later(ERROR_PAUSE, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._loop is not None and self._sock is not None:
            self._loop.add_reader(self._sock, self._on_readable)
