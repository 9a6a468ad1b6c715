"""A protected host and its LAN, each in a network namespace of its own, with porttrap's table
(the watch, and the kernel sensor when the config has one) loaded in the host by the real
nftables backend, or its sets and chains by the real ipset backend (`guard_env(make, "ipset")`:
the watch only). No daemon: the tests drive the backend as the core would, send real packets
and read the kernel's sets, counters, marks and NFLOG reports. Documentation addresses only.

    lan: 192.0.2.2 client, .3 stranger, .4 TCP server, .5 UDP server, .6 other,
         2001:db8::2 client, ::3 stranger, ::4 TCP server, ::6 other, fe80::a (link-local)
    host: 192.0.2.1, 2001:db8::1, fe80::1; a TCP service on 8080 and a UDP echo on 5353
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from daemon_env import SERVICE, open_socket, tcp_works

from netns import Netns, in_host_netns
from porttrap.config.loader import load_text
from porttrap.firewall.exec import Exec
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.model import IPAddress
from porttrap.sensorspec import SensorState, spec_from_config
from waiting import PATIENCE, pause, wait_until

TABLE = "porttrap"
NOW = 1_800_000_000.0
HOST4, HOST6, HOST_LL = "192.0.2.1", "2001:db8::1", "fe80::1"
CLIENT4, STRANGER4, TCP_PEER4, UDP_PEER4, OTHER4 = (f"192.0.2.{n}" for n in range(2, 7))
CLIENT6, STRANGER6, TCP_PEER6, OTHER6 = (f"2001:db8::{n}" for n in (2, 3, 4, 6))
LAN_LL = "fe80::a"
SERVICE_PORT, ECHO_PORT = 8080, 5353
TRAP = 2323  # a trap port of the tests' configs, TCP and UDP
SO_RCVMARK, SO_MARK = 75, 36  # Linux >= 5.19: the mark of each datagram as ancillary data
LAN_TCP_PORT, LAN_UDP_PORT = 6000, 6001
UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0); s.bind(('::', %d))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(100); s.sendto(data, peer)\n"
)


@dataclass
class Guard:
    """The two namespaces and the backend bound to the host's."""

    host: Netns
    lan: Netns
    backend: NftablesBackend | IpsetBackend
    lan_if: str
    sockets: list[socket.socket] = field(default_factory=list)

    def setup(self, config: str, gateways: tuple[IPAddress, ...] = ()) -> SensorState:
        """The table as the core would have it built for `config` (one transaction)."""
        state = SensorState(
            spec_from_config(load_text(config, None)), {}, gateways=frozenset(gateways)
        )
        self.backend.setup([], NOW, state)
        return state

    def nft(self, *argv: str) -> str:
        return self.host.run(["nft", *argv])

    def elements(self, name: str) -> list[str]:
        """The keys in one of porttrap's sets (timeouts aside), by its nftables name
        (`clients_v4`); with ipset, porttrap's set of that name after the table's
        (`porttrap_clients_v4`)."""
        if isinstance(self.backend, IpsetBackend):
            return [line.split()[0] for line in self.ipset_members(f"{TABLE}_{name}")]
        listed = json.loads(self.nft("-j", "list", "set", "inet", TABLE, name))
        found = next(item["set"] for item in listed["nftables"] if "set" in item)
        return [_key(elem) for elem in found.get("elem", [])]

    def ipset_members(self, name: str) -> list[str]:
        """The member lines of `ipset list NAME` in the host ('192.0.2.2 timeout 3599')."""
        lines = self.host.run(["ipset", "list", name]).splitlines()
        return [line for line in lines[lines.index("Members:") + 1 :] if line.strip()]

    def in_set(self, name: str, address: str) -> bool:
        return address in self.elements(name)

    def counters(self) -> dict[str, int]:
        return self.backend.sensor_counters()

    def keep(self, sock: socket.socket) -> socket.socket:
        """A socket closed when the test ends."""
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    # -- traffic ---------------------------------------------------------------------------

    def become_client(self, source: str) -> None:
        """A TCP connection from `source` (in the LAN) to the host's service, completed."""
        target = HOST6 if ":" in source else HOST4
        assert tcp_works(self.lan, source, target, SERVICE_PORT), f"{source} could not connect"

    def udp_exchange(self, ns: Netns, source: str, target: str, port: int, rounds: int) -> None:
        """`rounds` datagrams from `source` answered by the echo at target:port, 2.2 s apart
        (conntrack assures a UDP flow that is still going 2 s after it began)."""
        with open_socket(ns, source, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            for number in range(rounds):
                if number:
                    pause(2.2, "conntrack assures a UDP stream only 2 s after it began")
                sock.sendto(b"ping %d" % number, (target, port))
                assert sock.recv(100) == b"ping %d" % number


def _key(elem: Any) -> str:
    value = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return str(value)


@contextmanager
def guard_env(make: Callable[[], Netns], backend: str = "nftables") -> Iterator[Guard]:
    """The host and its LAN, the host's service and echo started (not yet a table). Nothing
    crosses the link before the test: readiness is read with `ss`, and the neighbours are
    written down, so no late packet of a check lands in the sets the tests read."""
    host, lan = make(), make()
    lan_addresses = [f"192.0.2.{n}" for n in range(2, 7)]
    lan_addresses += [CLIENT6, STRANGER6, TCP_PEER6, OTHER6, LAN_LL]
    host_if, lan_if = host.veth(
        lan,
        [f"{HOST4}/24", f"{HOST6}/64", f"{HOST_LL}/64"],
        [f"{a}/24" if "." in a else f"{a}/64" for a in lan_addresses],
    )
    _neighbours(host, host_if, lan, lan_if, lan_addresses)
    _neighbours(lan, lan_if, host, host_if, [HOST4, HOST6, HOST_LL])
    guard = Guard(host, lan, _backend(host, backend), lan_if)
    host.start([sys.executable, "-c", SERVICE % SERVICE_PORT])
    host.start([sys.executable, "-c", UDP_ECHO % ECHO_PORT])
    lan.start([sys.executable, "-c", SERVICE % LAN_TCP_PORT])
    lan.start([sys.executable, "-c", UDP_ECHO % LAN_UDP_PORT])
    bound = [(host, "t", SERVICE_PORT), (host, "u", ECHO_PORT)]
    bound += [(lan, "t", LAN_TCP_PORT), (lan, "u", LAN_UDP_PORT)]
    wait_until(lambda: all(_bound(*b) for b in bound), PATIENCE, "the services bound")
    try:
        yield guard
    finally:
        guard.close()


def _backend(host: Netns, kind: str) -> NftablesBackend | IpsetBackend:
    """The backend `kind`, bound to the host's namespace: its libnftables context made there,
    or its programs run there (`ip netns exec`)."""
    if kind == "ipset":
        return IpsetBackend(TABLE, runner=Exec(netns=host.name))
    with host.inside():
        assert not in_host_netns(), "refusing to bind libnftables to the host's namespace"
        nft, objects = Nft(), NftObjects()
    return NftablesBackend(TABLE, nft=nft, objects=objects)


def _neighbours(
    ns: Netns, device: str, other: Netns, their_device: str, addresses: list[str]
) -> None:
    """`addresses` (the other side's) reachable at once through `device`: no ARP, no ND."""
    link = json.loads(other.run(["ip", "-j", "link", "show", "dev", their_device]))
    mac = link[0]["address"]
    for address in addresses:
        ns.run(["ip", "neigh", "replace", address, "lladdr", mac, "nud", "permanent",
                "dev", device])  # fmt: skip


def _bound(ns: Netns, kind: str, port: int) -> bool:
    """Whether a TCP (`t`) socket listens, or a UDP (`u`) one is bound, on `port`."""
    return bool(ns.run(["ss", f"-Hln{kind}", f"sport = :{port}"]).strip())


def trap_socket(guard: Guard, port: int = TRAP) -> socket.socket:
    """A dual-stack UDP socket on `port` in the host, reading each datagram's mark."""
    with guard.host.inside():
        sock = guard.keep(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
    sock.bind(("::", port))
    sock.settimeout(5)
    return sock


def mark_of(guard: Guard, trap: socket.socket, source: str, target: str = HOST4) -> int:
    """The mark the trap socket reads on a datagram from `source` in the LAN."""
    scope = 0
    if source.startswith("fe80:"):
        with guard.lan.inside():
            scope = socket.if_nametoindex(guard.lan_if)
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    with guard.lan.inside():
        sender = guard.keep(socket.socket(family, socket.SOCK_DGRAM))
    sender.bind((source, 0, 0, scope) if scope else (source, 0))
    sender.sendto(source.encode(), (target, TRAP, 0, scope) if scope else (target, TRAP))
    data, ancillary, _, _ = trap.recvmsg(100, socket.CMSG_SPACE(4))
    assert data == source.encode()
    [mark] = [
        int.from_bytes(raw[:4], sys.byteorder)
        for level, kind, raw in ancillary
        if (level, kind) == (socket.SOL_SOCKET, SO_MARK)
    ]
    return mark
