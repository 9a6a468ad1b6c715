"""The catch-all trap for redirected client SYNs (stealth and advanced modes).

A recent client of the host is exempt from the kernel sensor's blocks, so a SYN of its to a
trap port proves nothing: its address could be forged. porttrap's rules redirect such SYNs
(nat, `redirect to :<[kernel] client_trap_port>`) to one port where porttrap listens, on every
address, IPv4 and IPv6. A completed handshake there proves the source, as on a connect-mode
trap: it is accepted and closed at once (after the banner, when one is set), and reported as a
hit on the port it was aimed at, read back from conntrack (SO_ORIGINAL_DST), with
`client=True` (the core asks more of a client's handshakes: [ban] client_trigger).

A connection made to the catch-all port itself (no redirect; conntrack has no entry, or one
that names the port itself) is reported on the catch-all port, with `client=True` all the same.

`catch_all` is a `SocketTraps` of one TCP trap whose sockets read the original destination;
`original_destination` is the pure parse of SO_ORIGINAL_DST's answer. Numbers from
include/uapi/linux/netfilter_ipv4.h and netfilter_ipv6/ip6_tables.h.
"""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address, IPv6Address

from porttrap.clock import Clock
from porttrap.config.schema import Trap
from porttrap.model import IPAddress, Proto
from porttrap.sensors.sockets import Destination, HitHandler, SocketTraps, TrapSocket

SO_ORIGINAL_DST = 80  # SOL_IP: the original destination of a connection conntrack NATed
IP6T_SO_ORIGINAL_DST = 80  # SOL_IPV6: the same for IPv6
ROLE = "client-catch-all"

_FAMILY = struct.Struct("=H")  # sa_family_t, host order; sockaddr_in6: port, flowinfo, addr
_PORT = struct.Struct("!H")  # the port, network order
_SIZE = {socket.AF_INET: 16, socket.AF_INET6: 28}  # sockaddr_in, sockaddr_in6
_LEVEL = {socket.AF_INET: socket.IPPROTO_IP, socket.AF_INET6: socket.IPPROTO_IPV6}
_OPTION = {socket.AF_INET: SO_ORIGINAL_DST, socket.AF_INET6: IP6T_SO_ORIGINAL_DST}


def catch_all(port: int, on_hit: HitHandler, clock: Clock, banner: bytes = b"") -> SocketTraps:
    """The catch-all listeners on `port` (0.0.0.0 and ::); `start(loop)` binds them and
    reports what was set, `update(loop, [Trap(Proto.TCP, new_port)], banner)` follows a
    reload, `close()` ends them."""
    return SocketTraps(
        [Trap(Proto.TCP, port)],
        on_hit,
        clock,
        banner,
        socket_class=RedirectedSocket,
        role=ROLE,
    )


class RedirectedSocket(TrapSocket):
    """A catch-all socket: a connection's destination is where the client aimed its SYN."""

    def destination(self, conn: socket.socket, local: IPAddress) -> Destination:
        original = read_original_destination(conn)
        if original is None:  # someone connected to the catch-all port itself
            return Destination(local, self.port, client=True)
        return Destination(original[0], original[1], client=True)


def read_original_destination(conn: socket.socket) -> tuple[IPAddress, int] | None:
    """(address, port) a redirected connection was aimed at, from conntrack; None when it
    cannot tell (no conntrack entry: not redirected, or conntrack not loaded)."""
    family = conn.family
    if family not in _SIZE:
        return None
    try:
        raw = conn.getsockopt(_LEVEL[family], _OPTION[family], _SIZE[family])
    except OSError:  # ENOENT: no entry; ENOPROTOOPT: no conntrack at all
        return None
    return original_destination(raw)


def original_destination(raw: bytes) -> tuple[IPAddress, int] | None:
    """The address and port of a sockaddr_in or sockaddr_in6; None for anything else."""
    if len(raw) < _FAMILY.size:
        return None
    family = _FAMILY.unpack_from(raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return IPv4Address(raw[4:8]), _PORT.unpack_from(raw, 2)[0]
    if family == socket.AF_INET6 and len(raw) >= 24:
        return IPv6Address(raw[8:24]), _PORT.unpack_from(raw, 2)[0]
    return None
