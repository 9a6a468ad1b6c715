"""The admin's live SSH sessions: the peers of established TCP connections to an SSH port.

A trap hit never bans the peer of a live SSH session to the host (`SessionsChanged`), so an
admin who scans their own server, or shares an address with a scanner, keeps their shell.
`SessionWatcher` reads the sessions every second from netlink SOCK_DIAG, as `ss -tn state
established '( sport = :22 )'` does: one dump of the ESTABLISHED TCP sockets with an
INET_DIAG_REQ_BYTECODE filter on the local port, so that the kernel skips every other
connection of a busy server and only the sessions reach Python. The parse checks state and
port again: the filter saves work, it does not decide.

The request is the older TCPDIAG_GETSOCK rather than SOCK_DIAG_BY_FAMILY: it dumps both
families in one walk of the kernel's table of connections, whose buckets (2^18 on a small
host, more on a large one) cost about 1.7 ms to walk however few connections there are; one
walk rather than two halves the cost of a read (bench/sessions_dump.py).

The SSH ports are `[protect] ssh_ports`, else sshd's, else 22 (`porttrap.sshsession`); the
watcher logs which (`event=ssh-ports ports=22 source=sshd`). Peers on a dual-stack socket
(::ffff:192.0.2.7) are reported unmapped.

`parse_reply` and `bytecode` are the pure half, tested with recorded dumps
(tests/data/sessions/). Numbers from include/uapi/linux/inet_diag.h.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from itertools import count

from porttrap import netlink
from porttrap.clock import Clock, SystemClock
from porttrap.log import LOGGER, event, fields
from porttrap.model import IPAddress, unmap
from porttrap.sensors import listeners
from porttrap.sensors.watching import FailureLog
from porttrap.sshsession import Lookup, SshPorts, ssh_ports

TCP_ESTABLISHED = 1
TCPDIAG_GETSOCK = 18  # the request (inet_diag_req, no family: both) and its answers' type
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP, INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE = 1, 2, 3
MAX_EXACT_PORTS = 64  # past this many SSH ports, the filter is their range (Python does the rest)
INTERVAL = 1.0  # seconds between reads

_REQUEST = struct.Struct("=BBBB48sII")  # inet_diag_req: family .. ext, sockid, states, dbs
_OP = struct.Struct("=BBH")  # inet_diag_bc_op: code, yes (bytes to jump), no (bytes; or a port)
_PORT_TEST = 4 * _OP.size  # S_GE, its port, S_LE, its port: "sport == port"
_MESSAGE = struct.Struct("!BB2xHH16s16s")  # inet_diag_msg: family, state, sport, dport, src, dst
_MESSAGE_SIZE = 72
_ADDRESS: dict[int, Callable[[bytes], IPAddress]] = {
    socket.AF_INET: lambda raw: IPv4Address(raw[:4]),
    socket.AF_INET6: IPv6Address,
}

Peers = frozenset[IPAddress]
ChangeHandler = Callable[[Peers], None]


@dataclass(frozen=True, slots=True)
class Reply:
    """What dump datagrams held: the session peers, what was broken, whether it ended."""

    peers: Peers = frozenset()
    malformed: int = 0  # messages, or datagram tails, too broken to read
    done: bool = False  # the dump ended (NLMSG_DONE or an error)
    error: int = 0  # the errno the kernel ended it with; 0 for none


# -- parsing and the filter (pure) ---------------------------------------------------------------


def parse_reply(data: bytes, ports: Iterable[int] | None, seq: int | None = None) -> Reply:
    """The peers of the ESTABLISHED TCP sockets whose local port is one of `ports`, in
    TCPDIAG_GETSOCK or SOCK_DIAG_BY_FAMILY dump datagrams (IPv4-mapped peers unmapped);
    counts what was skipped and sees the end of the dump. With `seq`, messages answering
    another request are left out. `ports` None: on any local port."""
    wanted = None if ports is None else frozenset(ports)
    messages, malformed = netlink.split(data)
    peers: set[IPAddress] = set()
    done, error = False, 0
    for kind, answered, body in messages:
        if seq is not None and answered != seq:
            continue
        if kind in (TCPDIAG_GETSOCK, listeners.SOCK_DIAG_BY_FAMILY):
            if len(body) < _MESSAGE_SIZE or body[0] not in _ADDRESS:
                malformed += 1
                continue
            family, state, sport, _, _, dst = _MESSAGE.unpack_from(body)
            if state == TCP_ESTABLISHED and (wanted is None or sport in wanted):
                peers.add(unmap(_ADDRESS[family](dst)))
        elif kind in (netlink.NLMSG_DONE, netlink.NLMSG_ERROR):
            done, code = True, netlink.error_code(body)
            malformed += code is None
            error = code or 0
    return Reply(frozenset(peers), malformed, done, error)


def bytecode(ports: Iterable[int]) -> bytes:
    """An inet_diag filter program that accepts a socket whose local port is one of `ports`.

    Each port is a test "sport >= p and sport <= p"; a failed comparison jumps to the next
    test (past the last one: refused), a passed test jumps to the end (accepted). The kernel
    audits the program (inet_diag_bc_audit) by walking its "yes" jumps, which must reach
    every op, so tests are joined by JMP ops whose "yes" is the next op and whose taken
    jump ("no") is the end. Past MAX_EXACT_PORTS ports, one test of their range."""
    wanted = sorted(set(ports))
    if not wanted:
        raise ValueError("a port filter needs at least one port")
    if len(wanted) > MAX_EXACT_PORTS:
        return _port_test(wanted[0], wanted[-1])
    tests = [_port_test(port, port) for port in wanted]
    size = len(tests) * _PORT_TEST + (len(tests) - 1) * _OP.size
    program = b""
    for test in tests[:-1]:
        program += test
        program += _OP.pack(INET_DIAG_BC_JMP, _OP.size, size - len(program))
    return program + tests[-1]


def _port_test(low: int, high: int) -> bytes:
    """sport in [low, high]: on failure, 4 bytes past the test (the next test, or refused)."""
    after = _PORT_TEST + _OP.size
    return (
        _OP.pack(INET_DIAG_BC_S_GE, 2 * _OP.size, after)
        + _OP.pack(0, 0, low)
        + _OP.pack(INET_DIAG_BC_S_LE, 2 * _OP.size, after - 2 * _OP.size)
        + _OP.pack(0, 0, high)
    )


def request(seq: int, ports: Iterable[int] | None) -> bytes:
    """A dump request for the ESTABLISHED TCP sockets, IPv4 and IPv6, on one of `ports`
    (None: on any port, for tests and benchmarks)."""
    body = _REQUEST.pack(socket.AF_UNSPEC, 0, 0, 0, bytes(48), 1 << TCP_ESTABLISHED, 0)
    if ports is not None:
        body += netlink.attribute(INET_DIAG_REQ_BYTECODE, bytecode(ports))
    flags = netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP
    return netlink.message(TCPDIAG_GETSOCK, flags, seq, body)


# -- talking to the kernel -----------------------------------------------------------------------


def dump(sock: socket.socket, ports: Sequence[int], seq: int = 1) -> Reply:
    """The peers of the SSH sessions on `ports`, IPv4 and IPv6 (request `seq`). No ports, no
    sessions (and no dump). Raises OSError when the kernel refuses the dump or it does not
    end."""
    if not ports:
        return Reply(done=True)
    listeners.discard_pending(sock)
    return _query(sock, seq, ports)


def current(ports: Sequence[int]) -> Peers:
    """The session peers now, in this thread's network namespace. OSError when it cannot tell."""
    with listeners.open_diag_socket() as sock:
        return dump(sock, ports).peers


def established() -> Peers:
    """The peers of every established TCP connection of this host now (its live clients, and
    the servers it talks to), in this thread's network namespace. OSError when it cannot
    tell."""
    with listeners.open_diag_socket() as sock:
        listeners.discard_pending(sock)
        return _query(sock, 1, None).peers


def _query(sock: socket.socket, seq: int, ports: Sequence[int] | None) -> Reply:
    what = "sock_diag dump of the established TCP connections (TCPDIAG_GETSOCK)"
    sock.send(request(seq, ports))
    peers: set[IPAddress] = set()
    malformed = 0
    for _ in range(listeners.MAX_DATAGRAMS):
        try:
            reply = parse_reply(sock.recv(listeners.RECV_SIZE), ports, seq)
        except BlockingIOError:
            raise OSError(errno.EAGAIN, f"{what} stopped before its end") from None
        peers |= reply.peers
        malformed += reply.malformed
        if reply.error:
            raise OSError(reply.error, f"{what} failed: {netlink.errno_text(reply.error)}")
        if reply.done:
            return Reply(frozenset(peers), malformed, done=True)
    raise OSError(errno.EMSGSIZE, f"{what} sent over {listeners.MAX_DATAGRAMS} datagrams")


# -- the watcher ---------------------------------------------------------------------------------


class SessionWatcher:
    """Calls `on_change(peers)` from the event loop when the peers of the live SSH sessions
    change.

    `start` finds the SSH ports (`configured`, else sshd's through `lookup`, else 22), logs
    them, reads the sessions at once and returns their peers (`on_change` is for later
    changes), then reads them again every `interval` seconds, or less often when a read is
    slow (listeners.COST_FACTOR). A failed read is logged and the last set kept. The netlink
    socket lives in the network namespace of the thread that calls `start`.
    """

    def __init__(
        self,
        on_change: ChangeHandler,
        configured: Sequence[int] = (),
        interval: float = INTERVAL,
        *,
        clock: Clock | None = None,
        lookup: Lookup | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval {interval} must be more than 0 seconds")
        self.interval = interval
        self._on_change = on_change
        self._configured = tuple(configured)
        self._lookup = lookup
        self._clock = clock if clock is not None else SystemClock()
        self._failures = FailureLog("sessions", self._clock)
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = count(1)
        self._ports: SshPorts | None = None
        self._peers: Peers = frozenset()
        self.cost = 0.0  # seconds the last read took

    @property
    def peers(self) -> Peers:
        """The set as last read."""
        return self._peers

    @property
    def ports(self) -> SshPorts | None:
        """The SSH ports watched, and where they come from; None before `start`."""
        return self._ports

    @property
    def failures(self) -> int:
        """Reads that failed, in a row."""
        return self._failures.count

    def start(self, loop: asyncio.AbstractEventLoop) -> Peers:
        """Find the SSH ports, read the sessions and start polling. Raises OSError when the
        first read fails: an unknown set must not pass for "no session"."""
        if self._sock is not None:
            raise RuntimeError("SessionWatcher.start called twice")
        self._ports = self._find_ports()
        sock = listeners.open_diag_socket()
        try:
            self._peers = self._read(sock)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        event("sessions", count=len(self._peers), peers=_shown(self._peers) or None)
        self._schedule()
        return self._peers

    def reconfigure(self, configured: Sequence[int]) -> None:
        """New `[protect] ssh_ports` (a reload): the ports are found again, and the next read
        uses them."""
        self._configured = tuple(configured)
        if self._sock is not None:
            self._ports = self._find_ports()

    def close(self) -> None:
        """Stop polling. Safe to call more than once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _find_ports(self) -> SshPorts:
        found = ssh_ports(self._configured, self._lookup)
        event("ssh-ports", ports=found.shown, source=found.source, note=found.note)
        return found

    def _read(self, sock: socket.socket) -> Peers:
        assert self._ports is not None
        started = self._clock.monotonic()
        reply = dump(sock, self._ports.ports, next(self._seq) & 0xFFFFFFFF)
        self.cost = self._clock.monotonic() - started
        if reply.malformed:
            event("sessions-malformed", logging.DEBUG, count=reply.malformed)
        return reply.peers

    def _schedule(self) -> None:
        if self._loop is not None and self._sock is not None:
            delay = max(self.interval, self.cost * listeners.COST_FACTOR)
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

    def _update(self, peers: Peers) -> None:
        self._failures.succeeded()
        if peers == self._peers:
            return
        old, self._peers = self._peers, peers
        event("sessions", count=len(peers), opened=_shown(peers - old) or None,
              closed=_shown(old - peers) or None)  # fmt: skip
        try:
            self._on_change(peers)
        except Exception:
            LOGGER.exception(fields("sessions-handler-failed"))


def _shown(peers: Peers) -> str:
    """'192.0.2.7 2001:db8::7', sorted (IPv4 first), for the log."""
    return " ".join(str(a) for a in sorted(peers, key=lambda a: (a.version, int(a))))
