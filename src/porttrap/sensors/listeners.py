"""Which TCP and UDP ports this host serves right now, read from the kernel's socket table.

Groundwork for trapping every port the host does not serve: services start and stop at any
time, so `ListenerWatcher` re-reads the table every `interval` seconds and says what changed.

The table comes from netlink SOCK_DIAG (as for `ss -ltun`), one dump per family and protocol.
The kernel sends only TCP sockets in LISTEN and UDP sockets in CLOSE, so connections never
reach Python. A UDP socket serves its port when it is bound and has no peer (destination port
0); a connected client has one. An unconnected UDP client (sendto without connect) looks just
like a server and counts as served: a trap fewer, never a trap on a port in use.

`parse_reply` is the pure half, tested with recorded dumps (tests/data/sockdiag/). Numbers from
include/uapi/linux/{sock_diag,inet_diag}.h and include/net/tcp_states.h.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from itertools import count

from porttrap import netlink
from porttrap.clock import Clock, SystemClock
from porttrap.log import LOGGER, event, fields
from porttrap.model import IPAddress, Proto
from porttrap.sensors.watching import FailureLog

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCP_CLOSE, TCP_LISTEN = 7, 10
ALL_STATES = 0xFFFFFFFF
SERVING_STATE = {Proto.TCP: TCP_LISTEN, Proto.UDP: TCP_CLOSE}  # and no peer
IPPROTO = {Proto.TCP: socket.IPPROTO_TCP, Proto.UDP: socket.IPPROTO_UDP}

RECV_SIZE = 65536  # the kernel fills dump datagrams up to 32 KiB
MAX_DATAGRAMS = 4096  # per dump: ~200 sockets each, so ~800,000 sockets before we give up
COST_FACTOR = 20  # poll at most every 20x the last dump's cost: the loop stays >95% free

_REQUEST = struct.Struct("=BBBxI48x")  # inet_diag_req_v2: family, protocol, ext, states, id
_MESSAGE = struct.Struct("!BB2xHH16s16s")  # inet_diag_msg: family, state, sport, dport, src, dst
_IFINDEX = struct.Struct("=I")  # idiag_if, after the addresses
_MESSAGE_SIZE = 72  # the whole inet_diag_msg; attributes follow it
_ADDRESS: dict[int, Callable[[bytes], IPAddress]] = {
    socket.AF_INET: lambda raw: IPv4Address(raw[:4]),
    socket.AF_INET6: IPv6Address,
}
_QUERIES = [(family, proto) for proto in Proto for family in (socket.AF_INET, socket.AF_INET6)]

Ports = dict[Proto, frozenset[int]]
ChangeHandler = Callable[[Ports], None]


@dataclass(frozen=True, slots=True)
class Listener:
    """A socket that serves `port`: TCP listening or UDP bound without a peer."""

    proto: Proto
    port: int
    address: IPAddress  # the bound address; 0.0.0.0 or :: for any
    ifindex: int = 0  # the interface it is bound to (SO_BINDTODEVICE); 0 for any


@dataclass(frozen=True, slots=True)
class Reply:
    """What dump datagrams held: the serving sockets, what was broken, whether it ended."""

    listeners: list[Listener] = field(default_factory=list)
    malformed: int = 0  # messages, or datagram tails, too broken to read
    done: bool = False  # the dump ended (NLMSG_DONE or an error)
    error: int = 0  # the errno the kernel ended it with; 0 for none


# -- parsing (pure) ------------------------------------------------------------------------------


def parse_dump(data: bytes, proto: Proto) -> list[Listener]:
    """The serving sockets in dump datagrams for `proto` (inet_diag_msg does not say it: it is
    the request's); anything malformed is skipped."""
    return parse_reply(data, proto).listeners


def parse_reply(data: bytes, proto: Proto, seq: int | None = None) -> Reply:
    """Like `parse_dump`, and also counts what was skipped and sees the end of the dump.
    With `seq`, messages answering another request (an old dump) are left out. Never raises."""
    messages, malformed = netlink.split(data)
    listeners: list[Listener] = []
    addresses: dict[tuple[int, bytes], IPAddress] = {}  # most sockets share a few addresses
    done, error = False, 0
    for kind, answered, body in messages:
        if seq is not None and answered != seq:
            continue
        if kind == SOCK_DIAG_BY_FAMILY:
            if len(body) < _MESSAGE_SIZE or body[0] not in _ADDRESS:
                malformed += 1
            elif (listener := _listener(body, proto, addresses)) is not None:
                listeners.append(listener)
        elif kind in (netlink.NLMSG_DONE, netlink.NLMSG_ERROR):
            done, code = True, netlink.error_code(body)
            malformed += code is None
            error = code or 0
    return Reply(listeners, malformed, done, error)


def _listener(
    body: bytes, proto: Proto, addresses: dict[tuple[int, bytes], IPAddress]
) -> Listener | None:
    """The listener in a whole IPv4/IPv6 inet_diag_msg; None when the socket serves no port:
    not in the serving state, or with a peer (a connected UDP client)."""
    family, state, sport, dport, src, _ = _MESSAGE.unpack_from(body)
    if state != SERVING_STATE[proto] or dport != 0:
        return None
    key = (family, src)
    address = addresses.get(key)
    if address is None:
        address = addresses[key] = _ADDRESS[family](src)
    return Listener(proto, sport, address, _IFINDEX.unpack_from(body, _MESSAGE.size)[0])


def served_ports(listeners: Iterable[Listener]) -> Ports:
    """The ports served per protocol, whatever address or interface each is bound to.

    Traps match ports, not addresses: a service on 127.0.0.1:5432 or on one of several
    addresses keeps its port out of the traps on every address. Otherwise a port forward
    (DNAT) to a loopback service, a dual-stack or IP_FREEBIND socket, or an address that
    moves between hosts (VRRP) would turn the service's own clients into "scanners"."""
    found: dict[Proto, set[int]] = {proto: set() for proto in Proto}
    for listener in listeners:
        found[listener.proto].add(listener.port)
    return {proto: frozenset(ports) for proto, ports in found.items()}


def request(seq: int, family: int, proto: Proto, states: int | None = None) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request; by default for the states that serve a port."""
    wanted = 1 << SERVING_STATE[proto] if states is None else states
    body = _REQUEST.pack(family, IPPROTO[proto], 0, wanted)
    flags = netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP
    return netlink.message(SOCK_DIAG_BY_FAMILY, flags, seq, body)


# -- talking to the kernel -----------------------------------------------------------------------


def open_diag_socket() -> socket.socket:
    """A non-blocking NETLINK_SOCK_DIAG socket. It sees the sockets of the network namespace
    of the thread that opens it, for as long as it lives."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        sock.setblocking(False)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def dump(sock: socket.socket, seq: int = 1) -> Reply:
    """Every serving socket, IPv4 and IPv6, TCP and UDP (requests `seq` to `seq + 3`).

    The kernel builds each datagram inside the recv that asks for it, so a dump never waits on
    a non-blocking socket. It costs CPU, mostly parsing: a median of 0.4 ms for 50 serving
    sockets, 4.7 ms for 1000 (BENCHMARKS.md); connections cost nothing, the kernel skips them.
    Raises OSError when the kernel refuses a dump or it does not finish."""
    discard_pending(sock)
    listeners: list[Listener] = []
    malformed = 0
    for n, (family, proto) in enumerate(_QUERIES):
        reply = _query(sock, (seq + n) & 0xFFFFFFFF, family, proto)
        listeners += reply.listeners
        malformed += reply.malformed
    return Reply(listeners, malformed, done=True)


def current() -> Ports:
    """The ports served now in this thread's network namespace. OSError when it cannot tell."""
    with open_diag_socket() as sock:
        return served_ports(dump(sock).listeners)


def _query(sock: socket.socket, seq: int, family: int, proto: Proto) -> Reply:
    what = f"sock_diag dump of {proto} IPv{4 if family == socket.AF_INET else 6} sockets"
    sock.send(request(seq, family, proto))
    listeners: list[Listener] = []
    malformed = 0
    for _ in range(MAX_DATAGRAMS):
        try:
            reply = parse_reply(sock.recv(RECV_SIZE), proto, seq)
        except BlockingIOError:
            raise OSError(errno.EAGAIN, f"{what} stopped before its end") from None
        listeners += reply.listeners
        malformed += reply.malformed
        if reply.error:
            raise OSError(reply.error, f"{what} failed: {netlink.errno_text(reply.error)}")
        if reply.done:
            return Reply(listeners, malformed, done=True)
    raise OSError(errno.EMSGSIZE, f"{what} sent over {MAX_DATAGRAMS} datagrams")


def discard_pending(sock: socket.socket) -> None:
    """Read what a failed dump left; the kernel refuses a new dump (EBUSY) until it ends."""
    for _ in range(MAX_DATAGRAMS):
        try:
            sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise


# -- the watcher ---------------------------------------------------------------------------------


class ListenerWatcher:
    """Calls `on_change(ports)` from the event loop when the set of served ports changes.

    `start` reads the set at once and returns it (`on_change` is for later changes), then
    re-reads it every `interval` seconds, or less often when a dump is slow (COST_FACTOR).
    A failed read is logged and the last known set kept. The netlink socket lives in the
    network namespace of the thread that calls `start`.
    """

    def __init__(
        self, on_change: ChangeHandler, interval: float = 0.5, *, clock: Clock | None = None
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval {interval} must be more than 0 seconds")
        self.interval = interval
        self._on_change = on_change
        self._clock = clock if clock is not None else SystemClock()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = count(1, len(_QUERIES))
        self._ports: Ports = served_ports([])
        self._failures = FailureLog("listeners", self._clock)
        self.cost = 0.0  # seconds the last read took

    @property
    def failures(self) -> int:
        """Reads that failed, in a row."""
        return self._failures.count

    @property
    def ports(self) -> Ports:
        """The set as last read."""
        return self._ports

    def start(self, loop: asyncio.AbstractEventLoop) -> Ports:
        """Read the served ports and start polling. Raises OSError when the first read fails:
        an unknown set must not pass for "nothing served"."""
        if self._sock is not None:
            raise RuntimeError("ListenerWatcher.start called twice")
        sock = open_diag_socket()
        try:
            self._ports = self._read(sock)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        event("listeners", tcp=len(self._ports[Proto.TCP]), udp=len(self._ports[Proto.UDP]))
        self._schedule()
        return self._ports

    def close(self) -> None:
        """Stop polling. Safe to call more than once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read(self, sock: socket.socket) -> Ports:
        started = self._clock.monotonic()
        reply = dump(sock, next(self._seq) & 0xFFFFFFFF)
        self.cost = self._clock.monotonic() - started
        if reply.malformed:
            event("listeners-malformed", logging.DEBUG, count=reply.malformed)
        return served_ports(reply.listeners)

    def _schedule(self) -> None:
        if self._loop is not None and self._sock is not None:
            delay = max(self.interval, self.cost * COST_FACTOR)
            self._timer = self._loop.call_later(delay, self._poll)

    def _poll(self) -> None:
        self._timer = None
        try:
            if self._sock is not None:
                self._update(self._read(self._sock))
        except Exception as exc:
            self._failures.failed(exc)
        finally:
            self._schedule()

    def _update(self, ports: Ports) -> None:
        self._failures.succeeded()
        if ports == self._ports:
            return
        old, self._ports = self._ports, ports
        opened, closed = _diff(ports, old), _diff(old, ports)
        event("listeners-changed", logging.DEBUG, opened=opened, closed=closed)
        try:
            self._on_change(ports)
        except Exception:
            LOGGER.exception(fields("listeners-handler-failed"))


def _diff(new: Ports, old: Ports) -> str | None:
    """'tcp/8080 udp/5353': ports in `new` and not in `old`; None when there are none."""
    ports = [f"{proto}/{port}" for proto in Proto for port in sorted(new[proto] - old[proto])]
    return " ".join(ports) or None
