"""Who holds a port: "sshd pid=123", for the log line that says why a trap could not be set."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import psutil

from porttrap.model import IPAddress, Proto, unmap

_Bound = tuple[IPAddress, int, int]  # (address, port, pid)


class PortHolders:
    """Finds the process bound to a port; reads the socket table at most once per protocol.

    `psutil.net_connections` walks every process's descriptors, so one lookup serves all the
    traps of a start. Processes we may not inspect (not root) are not found.
    """

    def __init__(self) -> None:
        self._cache: dict[Proto, list[_Bound]] = {}

    def find(self, proto: Proto, address: IPAddress, port: int) -> str | None:
        """ "NAME pid=N" of a process bound to `port`, preferring the same address; or None."""
        bound = [(ip, pid) for ip, p, pid in self._sockets(proto) if p == port]
        bound.sort(key=lambda entry: (entry[0] != address, entry[0].version != address.version))
        for _, pid in bound:
            try:
                return f"{psutil.Process(pid).name()} pid={pid}"
            except psutil.Error:
                continue
        return None

    def _sockets(self, proto: Proto) -> list[_Bound]:
        if proto not in self._cache:
            self._cache[proto] = list(_bound_sockets(proto))
        return self._cache[proto]


def _bound_sockets(proto: Proto) -> Iterator[_Bound]:
    """Listening TCP or bound UDP sockets whose owner we can see."""
    try:
        connections = psutil.net_connections(kind=str(proto))
    except (psutil.Error, OSError):
        return
    for conn in connections:
        if conn.pid is None or not conn.laddr:
            continue
        if proto is Proto.TCP and conn.status != psutil.CONN_LISTEN:
            continue
        ip = ipaddress.ip_address(conn.laddr.ip.split("%", 1)[0])
        yield unmap(ip), conn.laddr.port, conn.pid
