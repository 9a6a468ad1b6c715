"""The host's own addresses, and a watcher that says when they change.

The policy never bans the host itself, so it needs the current list; addresses come and go
(DHCP, SLAAC, VPNs), so `AddressWatcher` listens to the kernel's RTNLGRP_IPV4_IFADDR and
RTNLGRP_IPV6_IFADDR notifications and re-reads the list whenever one arrives.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Callable

import psutil

from porttrap.log import LOGGER, event, fields
from porttrap.model import IPAddress

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
_RECV_SIZE = 65536
_DRAIN_LIMIT = 256  # messages per callback; a storm of changes ends in one re-read anyway

AddressHandler = Callable[[frozenset[IPAddress]], None]


def current_addresses() -> frozenset[IPAddress]:
    """Every IPv4 and IPv6 address on this host's interfaces (loopback too), scope stripped."""
    found: set[IPAddress] = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                found.add(ipaddress.ip_address(entry.address.split("%", 1)[0]))
    return frozenset(found)


class AddressWatcher:
    """Calls `on_change(addresses)` from the event loop whenever the host's address set changes.

    `start` subscribes before it reads the addresses, so no change between the two is missed,
    and returns that first set; `on_change` is called only for later changes.
    """

    def __init__(self, on_change: AddressHandler) -> None:
        self._on_change = on_change
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._addresses: frozenset[IPAddress] = frozenset()

    @property
    def addresses(self) -> frozenset[IPAddress]:
        """The set as last read."""
        return self._addresses

    def start(self, loop: asyncio.AbstractEventLoop) -> frozenset[IPAddress]:
        """Subscribe to address changes; return the current addresses.

        Raises OSError when the kernel refuses the netlink socket (a seccomp sandbox, say).
        """
        if self._sock is not None:
            raise RuntimeError("AddressWatcher.start called twice")
        self._sock = _open_netlink()
        self._loop = loop
        loop.add_reader(self._sock, self._on_readable)
        self._addresses = current_addresses()
        event("host-addresses", count=len(self._addresses))
        return self._addresses

    def close(self) -> None:
        """Stop watching. Safe to call more than once."""
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock)
        self._sock.close()
        self._sock = None

    def _on_readable(self) -> None:
        try:
            self._drain()
            self._reread()
        except Exception:
            LOGGER.exception(fields("host-addresses-failed"))

    def _drain(self) -> None:
        """Discard the pending notifications: what changed is read from the interfaces."""
        assert self._sock is not None
        for _ in range(_DRAIN_LIMIT):
            try:
                self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overrun: messages lost, the re-read covers it
                    raise

    def _reread(self) -> None:
        addresses = current_addresses()
        if addresses == self._addresses:
            return
        self._addresses = addresses
        event("host-addresses", count=len(addresses))
        self._on_change(addresses)


def _open_netlink() -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket subscribed to IPv4 and IPv6 address changes."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setblocking(False)
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except BaseException:
        sock.close()
        raise
    return sock
