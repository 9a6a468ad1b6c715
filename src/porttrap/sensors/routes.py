"""The host's gateways and next hops, read from its routing tables, and a watcher that follows
them.

A probe or a datagram can carry any source address: one forged in the name of the host's
gateway must never ban it and cut the host off, so the core spares the gateways from
forgeable evidence (`GatewaysChanged`). Routes change (DHCP, router advertisements, VPNs, an
admin's `ip route`), so `RouteWatcher` subscribes to the kernel's IPv4 and IPv6 route
notifications and reads the tables again shortly after one arrives.

The gateways are the RTA_GATEWAY of every route, its RTA_VIA (an IPv4 route via an IPv6 next
hop), and both inside each next hop of a multipath route (RTA_MULTIPATH), in every table but
`local` (the host's own addresses, never a next hop). A route on a nexthop object (`ip route
... nhid N`) carries its gateway too while net.ipv4.nexthop_compat_mode is 1, the default.

`parse_reply` is the pure half, tested with recorded dumps (tests/data/rtnetlink/). Numbers
from include/uapi/linux/rtnetlink.h.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from itertools import count

from porttrap import netlink
from porttrap.clock import Clock, SystemClock
from porttrap.log import LOGGER, event, fields
from porttrap.model import IPAddress, unmap
from porttrap.sensors.watching import FailureLog

RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE, RTA_VIA = 5, 9, 15, 18
RT_TABLE_LOCAL = 255
RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x40, 0x400
FAMILIES = (socket.AF_INET, socket.AF_INET6)

RECV_SIZE = 65536
MAX_DATAGRAMS = 4096  # per dump: a full BGP table (~1 M routes) fits; beyond, we give up
DRAIN_LIMIT = 256  # notifications read per callback; any number of them ends in one dump
DEBOUNCE = 0.25  # seconds from a change to the dump: a VPN adding 50 routes costs one dump
RETRY = 5.0  # seconds before a failed dump is tried again

_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, proto, scope, type
_RTNEXTHOP = struct.Struct("=HBBi")  # rtnh_len, rtnh_flags, rtnh_hops, rtnh_ifindex
_RTVIA_FAMILY = struct.Struct("=H")  # struct rtvia: sa_family_t, then the address
_TABLE = struct.Struct("=I")
_ADDRESS_SIZE: dict[int, int] = {socket.AF_INET: 4, socket.AF_INET6: 16}

GatewayHandler = Callable[[frozenset[IPAddress]], None]


@dataclass(frozen=True, slots=True)
class Reply:
    """What dump datagrams held: the gateways, what was broken, whether the dump ended."""

    gateways: frozenset[IPAddress] = frozenset()
    malformed: int = 0  # messages, attributes or datagram tails too broken to read
    done: bool = False  # the dump ended (NLMSG_DONE or an error)
    error: int = 0  # the errno the kernel ended it with; 0 for none


@dataclass(slots=True)
class _Found:
    gateways: set[IPAddress] = field(default_factory=set)
    malformed: int = 0


# -- parsing (pure) ------------------------------------------------------------------------------


def parse_reply(data: bytes, seq: int | None = None) -> Reply:
    """The gateways of the routes in RTM_GETROUTE dump datagrams (either family; routes of
    table local left out), counting what was broken and seeing the end of the dump. With
    `seq`, messages answering another request are left out. Never raises."""
    messages, malformed = netlink.split(data)
    found = _Found(malformed=malformed)
    done, error = False, 0
    for kind, answered, body in messages:
        if seq is not None and answered != seq:
            continue
        if kind == RTM_NEWROUTE:
            _route(body, found)
        elif kind in (netlink.NLMSG_DONE, netlink.NLMSG_ERROR):
            done, code = True, netlink.error_code(body)
            found.malformed += code is None
            error = code or 0
    return Reply(frozenset(found.gateways), found.malformed, done, error)


def _route(body: bytes, found: _Found) -> None:
    """The gateways of one route message into `found`."""
    attributes = None
    if len(body) >= _RTMSG.size:
        attributes = netlink.attributes(body, _RTMSG.size)
    if attributes is None:
        found.malformed += 1
        return
    family, table = body[0], body[4]
    if RTA_TABLE in attributes and len(attributes[RTA_TABLE]) == _TABLE.size:
        table = _TABLE.unpack(attributes[RTA_TABLE])[0]  # tables past 255 are only here
    if table == RT_TABLE_LOCAL:
        return
    _next_hop(family, attributes, found)
    if RTA_MULTIPATH in attributes:
        _multipath(family, attributes[RTA_MULTIPATH], found)


def _next_hop(family: int, attributes: dict[int, bytes], found: _Found) -> None:
    """RTA_GATEWAY (an address of the route's family) and RTA_VIA (one of any family)."""
    if RTA_GATEWAY in attributes:
        _add(found, family, attributes[RTA_GATEWAY])
    via = attributes.get(RTA_VIA)
    if via is not None:
        if len(via) < _RTVIA_FAMILY.size:
            found.malformed += 1
        else:
            _add(found, _RTVIA_FAMILY.unpack_from(via)[0], via[_RTVIA_FAMILY.size :])


def _multipath(family: int, data: bytes, found: _Found) -> None:
    """Each struct rtnexthop of RTA_MULTIPATH, with the attributes inside its own length."""
    offset = 0
    while len(data) - offset >= _RTNEXTHOP.size:
        length = _RTNEXTHOP.unpack_from(data, offset)[0]
        if length < _RTNEXTHOP.size or offset + length > len(data):
            found.malformed += 1
            return
        attributes = netlink.attributes(data[offset + _RTNEXTHOP.size : offset + length])
        if attributes is None:
            found.malformed += 1
        else:
            _next_hop(family, attributes, found)
        offset += netlink.align(length)


def _add(found: _Found, family: int, raw: bytes) -> None:
    size = _ADDRESS_SIZE.get(family)
    if size is None or len(raw) != size:
        found.malformed += 1
        return
    address: IPAddress = IPv4Address(raw) if size == 4 else IPv6Address(raw)
    found.gateways.add(unmap(address))


def request(seq: int, family: int) -> bytes:
    """An RTM_GETROUTE dump request for every route of `family`, in every table."""
    body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    return netlink.message(RTM_GETROUTE, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, seq, body)


# -- talking to the kernel -----------------------------------------------------------------------


def open_route_socket(groups: int = 0) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket, subscribed to `groups` (RTMGRP_* bits). It sees the
    network namespace of the thread that opens it, for as long as it lives."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setblocking(False)
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def dump(sock: socket.socket, seq: int = 1) -> Reply:
    """The gateways of every IPv4 and IPv6 route (requests `seq` and `seq + 1`).

    The kernel fills each dump datagram inside the recv that asks for it, so a dump never waits
    on a non-blocking socket. Raises OSError when the kernel refuses a dump or it does not end.
    """
    _discard_pending(sock)
    gateways: set[IPAddress] = set()
    malformed = 0
    for n, family in enumerate(FAMILIES):
        reply = _query(sock, (seq + n) & 0xFFFFFFFF, family)
        gateways |= reply.gateways
        malformed += reply.malformed
    return Reply(frozenset(gateways), malformed, done=True)


def current() -> frozenset[IPAddress]:
    """The gateways now, in this thread's network namespace. OSError when it cannot tell."""
    with open_route_socket() as sock:
        return dump(sock).gateways


def _query(sock: socket.socket, seq: int, family: int) -> Reply:
    what = f"rtnetlink dump of the IPv{4 if family == socket.AF_INET else 6} routes"
    sock.send(request(seq, family))
    gateways: set[IPAddress] = set()
    malformed = 0
    for _ in range(MAX_DATAGRAMS):
        try:
            reply = parse_reply(sock.recv(RECV_SIZE), seq)
        except BlockingIOError:
            raise OSError(errno.EAGAIN, f"{what} stopped before its end") from None
        gateways |= reply.gateways
        malformed += reply.malformed
        if reply.error:
            raise OSError(reply.error, f"{what} failed: {netlink.errno_text(reply.error)}")
        if reply.done:
            return Reply(frozenset(gateways), malformed, done=True)
    raise OSError(errno.EMSGSIZE, f"{what} sent over {MAX_DATAGRAMS} datagrams")


def _discard_pending(sock: socket.socket) -> None:
    """Read what a failed dump left; the kernel refuses a new dump (EBUSY) until it ends."""
    _drain(sock, MAX_DATAGRAMS)


def _drain(sock: socket.socket, limit: int) -> bool:
    """Read and drop up to `limit` datagrams; True when the kernel dropped some (ENOBUFS)."""
    overrun = False
    for _ in range(limit):
        try:
            sock.recv(RECV_SIZE)
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            overrun = True
    return overrun


# -- the watcher ---------------------------------------------------------------------------------


class RouteWatcher:
    """Calls `on_change(gateways)` from the event loop when the host's gateways change.

    `start` subscribes to route changes before it reads the tables, so no change between the
    two is missed, and returns that first set; `on_change` is for later changes. A change
    leads to one dump `debounce` seconds later, whatever follows it meanwhile. A failed dump
    is logged, the last set kept, and the dump tried again every RETRY seconds. Both netlink
    sockets live in the network namespace of the thread that calls `start`.
    """

    def __init__(
        self,
        on_change: GatewayHandler,
        debounce: float = DEBOUNCE,
        *,
        clock: Clock | None = None,
    ) -> None:
        if debounce < 0:
            raise ValueError(f"debounce {debounce} must be 0 seconds or more")
        self.debounce = debounce
        self._on_change = on_change
        self._failures = FailureLog("gateways", clock if clock is not None else SystemClock())
        self._events: socket.socket | None = None  # notifications
        self._dumps: socket.socket | None = None  # requests and their answers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = count(1, len(FAMILIES))
        self._gateways: frozenset[IPAddress] = frozenset()

    @property
    def failures(self) -> int:
        """Dumps that failed, in a row."""
        return self._failures.count

    @property
    def gateways(self) -> frozenset[IPAddress]:
        """The set as last read."""
        return self._gateways

    def start(self, loop: asyncio.AbstractEventLoop) -> frozenset[IPAddress]:
        """Subscribe to route changes and read the gateways. Raises OSError when the kernel
        refuses a netlink socket or the first dump: an unknown set must not pass for "none"."""
        if self._events is not None:
            raise RuntimeError("RouteWatcher.start called twice")
        events = open_route_socket(RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        try:
            dumps = open_route_socket()
            try:
                self._gateways = self._read(dumps)
            except BaseException:
                dumps.close()
                raise
        except BaseException:
            events.close()
            raise
        self._events, self._dumps, self._loop = events, dumps, loop
        loop.add_reader(events, self._on_readable)
        event("gateways", count=len(self._gateways), gateways=_shown(self._gateways) or None)
        return self._gateways

    def close(self) -> None:
        """Stop watching. Safe to call more than once."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._events is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._events)
            self._events.close()
            self._events = None
        if self._dumps is not None:
            self._dumps.close()
            self._dumps = None

    def _read(self, sock: socket.socket) -> frozenset[IPAddress]:
        reply = dump(sock, next(self._seq) & 0xFFFFFFFF)
        if reply.malformed:
            event("gateways-malformed", logging.DEBUG, count=reply.malformed)
        return reply.gateways

    def _on_readable(self) -> None:
        """Notifications say that something changed; what it is comes from the next dump."""
        try:
            if self._events is not None:
                _drain(self._events, DRAIN_LIMIT)  # an overrun (ENOBUFS): the dump covers it
        except OSError as exc:
            self._failures.failed(exc)
        self._schedule(self.debounce)

    def _schedule(self, delay: float) -> None:
        if self._timer is None and self._loop is not None and self._dumps is not None:
            self._timer = self._loop.call_later(delay, self._reread)

    def _reread(self) -> None:
        self._timer = None
        if self._dumps is None:
            return
        try:
            gateways = self._read(self._dumps)
        except Exception as exc:
            self._failures.failed(exc)
            self._schedule(RETRY)
            return
        self._update(gateways)

    def _update(self, gateways: frozenset[IPAddress]) -> None:
        self._failures.succeeded()
        if gateways == self._gateways:
            return
        old, self._gateways = self._gateways, gateways
        event("gateways", count=len(gateways), added=_shown(gateways - old) or None,
              removed=_shown(old - gateways) or None)  # fmt: skip
        try:
            self._on_change(gateways)
        except Exception:
            LOGGER.exception(fields("gateways-handler-failed"))


def _shown(gateways: frozenset[IPAddress]) -> str:
    """'192.0.2.254 fe80::1', sorted (IPv4 first), for the log."""
    return " ".join(str(a) for a in sorted(gateways, key=lambda a: (a.version, a)))
