"""The socket trap sensor: a listening socket per trap port, all served by one asyncio loop.

TCP traps let the kernel finish the handshake, then accept and close at once (a full connect is
proof that the source address is not spoofed), after sending the banner when one is set
(PortSentry's PORT_BANNER): one non-blocking send, given up if it would block. UDP traps read
each datagram's real destination from IP_PKTINFO / IPV6_PKTINFO, so a wildcard bind still
reports which local address was hit, and its packet mark (SO_RCVMARK, Linux 5.19): porttrap's
rules mark a datagram whose source is a recent client of the host (MARK_CLIENT) or one the host
talks to (MARK_PEER), and the hit says so (`Hit.client`, `Hit.peer`), so that a datagram forged
in their name never bans them. Without SO_RCVMARK the traps work all the same, without marks.

Each socket has one `loop.add_reader` callback that drains a bounded number of connections or
datagrams, so a flood on one port cannot starve the others. Running out of descriptors or
buffers (EMFILE, ENFILE, ENOBUFS, ENOMEM) removes the reader for a while, backing off from
0.05 s up to 2 s, instead of spinning on a queue it cannot empty. All the sockets of a
`SocketTraps` share one WARNING a minute about it (`WarnLimit`): a scan of thousands of trap
ports while descriptors are out must not write a line per port.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import resource
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from porttrap.clock import Clock
from porttrap.config.schema import Trap
from porttrap.log import LOGGER, event, fields
from porttrap.model import BoundTrap, Hit, IPAddress, Proto, SkippedTrap, TrapReport, unmap
from porttrap.netlink import errno_text
from porttrap.sensors.holders import PortHolders
from porttrap.sensorspec import MARK_CLIENT, MARK_PEER

LISTEN_BACKLOG = 511
BANNER_MAX = 1024  # bytes: what one non-blocking send always fits in a new socket's buffer
DRAIN_LIMIT = 64  # connections or datagrams per callback, then the loop serves the others
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
WARN_EVERY = 60.0  # seconds between WARNING-level backoff events of all sockets; DEBUG between

IP_PKTINFO = 8  # linux/in.h; socket.IP_PKTINFO only exists from Python 3.12
IPV6_RECVPKTINFO = 49  # linux/in6.h: ask for IPV6_PKTINFO with every datagram
IPV6_PKTINFO = 50  # the cmsg type the kernel then attaches
SO_MARK = 36  # asm-generic/socket.h: the cmsg type of a packet's mark (a u32)
SO_RCVMARK = 75  # ... and the option that asks for it (Linux 5.19; socket module: Python 3.13)
_MARK = struct.Struct("=I")
# room for one in6_pktinfo (and so one in_pktinfo) and one mark
_ANCILLARY_SIZE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(_MARK.size)

RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Failures of one connection or datagram (the peer gave up, an ICMP error): skip it and go on.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.EPROTO,
        errno.EPERM,  # Linux accept() reports a firewall-dropped connection this way
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENONET,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.ETIMEDOUT,
    }
)

HitHandler = Callable[[Hit], None]


class Destination(NamedTuple):
    """Where a connection or a datagram was aimed, and what porttrap's rules said of its
    source (packet marks; a redirected connection comes from a recent client)."""

    address: IPAddress
    port: int
    client: bool = False
    peer: bool = False


class SocketTraps:
    """Every trap socket of a configuration, served by one event loop.

    `on_hit` is called synchronously from the loop for each connection or datagram; keep it
    cheap (queue the hit). An exception from it is logged with its traceback and ignored.
    `socket_class` serves each socket (the catch-all's reads where a redirected connection was
    aimed), and `role`, when set, is in the trap-set and trap-skipped events.
    """

    def __init__(
        self,
        traps: Sequence[Trap],
        on_hit: HitHandler,
        clock: Clock,
        banner: bytes = b"",
        *,
        socket_class: type[TrapSocket] | None = None,
        role: str | None = None,
    ) -> None:
        self._socket_class = socket_class or TrapSocket
        self._role = role
        self._traps = tuple(traps)
        self._on_hit = on_hit
        self._clock = clock
        self._banner = banner[:BANNER_MAX]
        self._listeners: list[TrapSocket] = []
        self._warnings = WarnLimit()
        self._started = False
        self._marks_missing_logged = False

    def start(self, loop: asyncio.AbstractEventLoop) -> TrapReport:
        """Bind every trap and register its reader on `loop`; report what was set and skipped."""
        if self._started:
            raise RuntimeError("SocketTraps.start called twice")
        self._started = True
        raise_nofile_limit()
        report = TrapReport()
        holders = PortHolders()
        for trap in self._traps:
            self._bind(loop, trap, _addresses(trap), report, holders)
        return report

    def update(
        self, loop: asyncio.AbstractEventLoop, traps: Sequence[Trap], banner: bytes
    ) -> TrapReport:
        """A reloaded configuration: sockets of traps that stay are kept (no moment without
        them), new traps are bound, and those no longer wanted closed. A port moving between
        one address and all of them is closed first, as Linux refuses both at once."""
        self._traps, self._banner = tuple(traps), banner[:BANNER_MAX]
        wanted = {(t.proto, a, t.port): t for t in self._traps for a in _addresses(t)}
        kept = [item for item in self._listeners if item.key in wanted]
        gone = [item for item in self._listeners if item.key not in wanted]
        still_trapped = {(proto, port) for (proto, _, port) in wanted}
        gone.sort(key=lambda item: (item.proto, item.port) not in still_trapped)
        for listener in gone:  # moving ones first, before their new sockets are bound
            listener.close()
            event("trap-removed", proto=listener.proto, port=listener.port,
                  address=str(listener.bound))  # fmt: skip
        self._listeners = kept
        report, holders = TrapReport(), PortHolders()
        for item in kept:
            item.banner = self._banner
            report.set.append(BoundTrap(item.proto, item.port, str(item.bound)))
        have = {item.key for item in kept}
        for trap in self._traps:
            missing = [a for a in _addresses(trap) if (trap.proto, a, trap.port) not in have]
            if missing:
                self._bind(loop, trap, missing, report, holders)
        return report

    def close(self) -> None:
        """Unregister and close every trap socket. Safe to call more than once."""
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()

    def _bind(
        self,
        loop: asyncio.AbstractEventLoop,
        trap: Trap,
        addresses: Sequence[IPAddress],
        report: TrapReport,
        holders: PortHolders,
    ) -> None:
        """Bind `trap` on `addresses`. A port in use on one IP family is left to the service
        on both: its clients of the other family would otherwise be banned as scanners."""
        opened: list[tuple[IPAddress, socket.socket]] = []
        in_use: IPAddress | None = None
        for address in addresses:
            try:
                opened.append((address, open_trap_socket(trap.proto, address, trap.port)))
            except OSError as exc:
                self._skip(_skipped(trap, str(address), exc, holders), report)
                in_use = address if exc.errno == errno.EADDRINUSE else in_use
        if in_use is not None and trap.address is None:
            for _, sock in opened:
                sock.close()
            reason = f"in use on {in_use}: a service's port is no trap on either IP family"
            for address in [a for a, _ in opened] + self._drop(trap, report):
                self._skip(SkippedTrap(trap.proto, trap.port, str(address), reason), report)
            return
        for address, sock in opened:
            self._listen(loop, trap, address, sock, report)

    def _drop(self, trap: Trap, report: TrapReport) -> list[IPAddress]:
        """Close the sockets `trap` kept through a reload (a service took its port on the
        other family since); the addresses they were on."""
        where = (trap.proto, trap.port)
        mine = [item for item in self._listeners if (item.proto, item.port) == where]
        for item in mine:
            item.close()
            self._listeners.remove(item)
            report.set.remove(BoundTrap(item.proto, item.port, str(item.bound)))
        return [item.bound for item in mine]

    def _skip(self, skipped: SkippedTrap, report: TrapReport) -> None:
        report.skipped.append(skipped)
        event(
            "trap-skipped",
            logging.WARNING,
            proto=skipped.proto,
            port=skipped.port,
            address=skipped.address,
            reason=skipped.reason,
            holder=skipped.holder,
            role=self._role,
        )

    def _listen(
        self,
        loop: asyncio.AbstractEventLoop,
        trap: Trap,
        address: IPAddress,
        sock: socket.socket,
        report: TrapReport,
    ) -> None:
        shown = str(address)
        if trap.proto is Proto.UDP and not enable_marks(sock):
            self._marks_missing()
        listener = self._socket_class(
            sock,
            proto=trap.proto,
            bound=address,
            port=trap.port,
            emit=self._emit,
            clock=self._clock,
            banner=self._banner,
            warnings=self._warnings,
        )
        listener.register(loop)
        self._listeners.append(listener)
        report.set.append(BoundTrap(trap.proto, trap.port, shown))
        event("trap-set", proto=trap.proto, port=trap.port, address=shown, role=self._role)

    def _marks_missing(self) -> None:
        """Once per run: the kernel has no SO_RCVMARK, UDP hits come without marks."""
        if self._marks_missing_logged:
            return
        self._marks_missing_logged = True
        event(
            "trap-marks-unavailable",
            logging.WARNING,
            error=f"SO_RCVMARK: {errno_text(errno.ENOPROTOOPT)}",
            effect="UDP trap hits do not say whether their source is a recent client or a "
            "peer of this host, so a datagram forged in its name counts like any other",
            fix="Linux 5.19 or later",
        )

    def _emit(self, hit: Hit) -> None:
        try:
            self._on_hit(hit)
        except Exception:
            LOGGER.exception(
                fields("hit-handler-failed", proto=hit.proto, port=hit.port, source=hit.source)
            )


def _addresses(trap: Trap) -> tuple[IPAddress, ...]:
    if trap.address is not None:
        return (trap.address,)
    return (ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv6Address("::"))


def open_trap_socket(proto: Proto, address: IPAddress, port: int) -> socket.socket:
    """A non-blocking socket bound to (address, port): listening for TCP, PKTINFO on for UDP."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if proto is Proto.TCP else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if proto is Proto.TCP:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        elif family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((str(address), port))
        if proto is Proto.TCP:
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def enable_marks(sock: socket.socket) -> bool:
    """Ask for each datagram's packet mark (SO_RCVMARK); False when the kernel has no such
    option (before Linux 5.19): the trap then works without marks."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
    except OSError as exc:
        if exc.errno == errno.ENOPROTOOPT:
            return False
        raise
    return True


def raise_nofile_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: hundreds of traps need hundreds of fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        event("nofile-limit", logging.WARNING, soft=soft, hard=hard, error=exc)
        return
    event("nofile-limit", logging.DEBUG, soft=hard, previous=soft)


# -- bind failures -----------------------------------------------------------------------------


def _skipped(trap: Trap, shown: str, exc: OSError, holders: PortHolders) -> SkippedTrap:
    holder = None
    if exc.errno == errno.EADDRINUSE:
        holder = holders.find(trap.proto, ipaddress.ip_address(shown), trap.port)
    return SkippedTrap(trap.proto, trap.port, shown, bind_failure_reason(exc, shown), holder)


def bind_failure_reason(exc: OSError, shown: str) -> str:
    """Why a trap socket could not be bound, in words a person can act on."""
    number = exc.errno
    if number == errno.EADDRINUSE:
        return "in use"
    if number == errno.EADDRNOTAVAIL:
        return "address not on this host"
    if number == errno.EAFNOSUPPORT and ":" in shown:
        return "IPv6 not available"
    if number == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    name = errno.errorcode.get(number, "?") if number is not None else "?"
    return f"{exc.strerror or exc} ({name})"


# -- the sockets at work -----------------------------------------------------------------------


class WarnLimit:
    """One WARNING per WARN_EVERY seconds among many sockets, DEBUG for the rest; the next
    WARNING says how many were held back."""

    def __init__(self) -> None:
        self._last: float | None = None
        self.held = 0

    def level(self, now: float) -> int:
        if self._last is not None and now - self._last < WARN_EVERY:
            self.held += 1
            return logging.DEBUG
        self._last = now
        return logging.WARNING

    def take_held(self) -> int:
        held, self.held = self.held, 0
        return held


class TrapSocket:
    """One trap socket, its reader callback and its backoff state. A subclass may say where
    a connection was aimed (`destination`)."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        proto: Proto,
        bound: IPAddress,
        port: int,
        emit: HitHandler,
        clock: Clock,
        banner: bytes = b"",
        warnings: WarnLimit | None = None,
    ) -> None:
        self.sock = sock
        self.banner = banner
        self.proto = proto
        self.bound = bound
        self.port = port
        self._emit = emit
        self._clock = clock
        self._take: Callable[[], Hit | None] = self._accept if proto is Proto.TCP else self._receive
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._backoff = BACKOFF_MIN
        self._warnings = warnings or WarnLimit()

    @property
    def key(self) -> tuple[Proto, IPAddress, int]:
        return (self.proto, self.bound, self.port)

    def register(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock, self._on_readable)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is not None and self.sock.fileno() != -1:
            self._loop.remove_reader(self.sock)
        self.sock.close()

    def _on_readable(self) -> None:
        try:
            self._drain()
        except OSError as exc:
            if exc.errno not in RESOURCE_ERRNOS:
                self._log_unexpected()
            self._back_off(exc)
        except Exception as exc:
            self._log_unexpected()
            self._back_off(exc)

    def _drain(self) -> None:
        """Take up to DRAIN_LIMIT connections or datagrams; the loop calls again if more wait."""
        for _ in range(DRAIN_LIMIT):
            try:
                hit = self._take()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    continue
                raise
            self._backoff = BACKOFF_MIN
            if hit is not None:
                self._emit(hit)

    def destination(self, conn: socket.socket, local: IPAddress) -> Destination:
        """Where an accepted connection was aimed: this trap's port at its local address."""
        return Destination(local, self.port)

    def _accept(self) -> Hit | None:
        """Accept one connection, note both ends and close it at once."""
        conn, peer = self.sock.accept()
        with conn:
            try:
                local = conn.getsockname()
            except OSError as exc:  # the peer is gone already; nothing to report
                event("trap-connection-lost", logging.DEBUG, port=self.port, errno=_name(exc))
                return None
            aimed = self.destination(conn, _parse_ip(local[0]))
            if self.banner:
                send_banner(conn, self.banner)
        return self._hit(peer, aimed, "connect")

    def _receive(self) -> Hit:
        """Read one datagram (its payload is dropped), where it was sent and its mark."""
        _, ancillary, _, peer = self.sock.recvmsg(0, _ANCILLARY_SIZE)
        local = pktinfo_destination(ancillary) or self.bound
        mark = packet_mark(ancillary)
        aimed = Destination(local, self.port, bool(mark & MARK_CLIENT), bool(mark & MARK_PEER))
        return self._hit(peer, aimed, "udp")

    def _hit(self, peer: tuple[Any, ...], aimed: Destination, kind: str) -> Hit:
        return Hit(
            at=self._clock.now(),
            source=_parse_ip(peer[0]),
            source_port=int(peer[1]),
            local=unmap(aimed.address),
            port=aimed.port,
            proto=self.proto,
            kind=kind,
            client=aimed.client,
            peer=aimed.peer,
        )

    def _back_off(self, exc: BaseException) -> None:
        """Stop reading for a while; read again after the delay, doubled for next time."""
        delay = self._backoff
        self._backoff = min(delay * 2, BACKOFF_MAX)
        level = self._warnings.level(self._clock.monotonic())
        held = self._warnings.take_held() if level == logging.WARNING else None
        event(
            "trap-backoff",
            level,
            proto=self.proto,
            port=self.port,
            address=self.bound,
            errno=_name(exc),
            delay=delay,
            held_back=held or None,
        )
        if self._loop is None or self._timer is not None:
            return
        self._loop.remove_reader(self.sock)
        self._timer = self._loop.call_later(delay, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._loop is not None and self.sock.fileno() != -1:
            self._loop.add_reader(self.sock, self._on_readable)

    def _log_unexpected(self) -> None:
        LOGGER.exception(fields("trap-error", proto=self.proto, port=self.port, address=self.bound))


def send_banner(conn: socket.socket, banner: bytes) -> None:
    """Send `banner` on a just accepted connection without ever waiting: a fresh socket's send
    buffer takes 1024 bytes at once; if it would not, the banner is given up (and so is any
    part that did not fit). What the peer already sent is read and dropped, so that closing
    ends the connection with a FIN after the banner rather than a RST that could discard it."""
    try:
        conn.send(banner, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
    except OSError as exc:  # would block, or the peer is gone: the hit counts all the same
        event("trap-banner-skipped", logging.DEBUG, errno=_name(exc))
        return
    with contextlib.suppress(OSError):  # nothing sent (would block) is the usual case
        conn.recv(BANNER_MAX, socket.MSG_DONTWAIT)


def _name(exc: BaseException) -> str:
    number = exc.errno if isinstance(exc, OSError) else None
    if number is None:
        return type(exc).__name__
    return errno.errorcode.get(number, str(number))


def _parse_ip(text: str) -> IPAddress:
    """An address from a socket call, without an IPv6 "%scope" and IPv4-mapped unmapped."""
    return unmap(ipaddress.ip_address(text.split("%", 1)[0]))


# -- ancillary data ----------------------------------------------------------------------------

_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("=16si")  # ipi6_addr, ipi6_ifindex


def pktinfo_destination(ancillary: Sequence[tuple[int, int, bytes]]) -> IPAddress | None:
    """The header destination address from recvmsg's IP_PKTINFO or IPV6_PKTINFO, if any."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            _, _, addr = _IN_PKTINFO.unpack_from(data)
            return ipaddress.IPv4Address(addr)
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= _IN6_PKTINFO.size:
            addr6, _ = _IN6_PKTINFO.unpack_from(data)
            return unmap(ipaddress.IPv6Address(addr6))
    return None


def packet_mark(ancillary: Sequence[tuple[int, int, bytes]]) -> int:
    """The packet mark from recvmsg's SO_MARK control message (SO_RCVMARK); 0 when none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_MARK and len(data) >= _MARK.size:
            return int(_MARK.unpack_from(data)[0])
    return 0
