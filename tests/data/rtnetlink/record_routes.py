"""Record RTM_GETROUTE dumps from a real kernel for tests/unit/test_routes_parse.py.

Run as root from the repository root:  .venv/bin/python tests/data/rtnetlink/record_routes.py

In a network namespace made here (deleted at the end, also on failure) it adds a veth pair
and a known set of routes (`ROUTES`: plain gateways, multipath, an IPv4 route via an IPv6
next hop, a nexthop object, tables 100 and 1000, routes without a gateway, and gateways in
table local, which must be left out), then writes each dump the kernel sent as NAME.bin with
its parse beside it as NAME.expected.json. `route6-many` holds 300 more routes, so that its dump
spans several datagrams. A parse is written only after it matches the gateways added, so a
parser bug cannot slip into the expected files. Recorded on Linux 6.18.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent)]

from netns import Netns  # noqa: E402
from porttrap import netlink  # noqa: E402
from porttrap.sensors.routes import (  # noqa: E402
    RTM_NEWROUTE,
    open_route_socket,
    parse_reply,
    request,
)

DEV = "va"
NEXTHOP = ("nexthop", "via")
ROUTES = [  # `ip` arguments; the comment says which gateways each adds
    ["route", "add", "default", "via", "192.0.2.254"],  # 192.0.2.254
    ["route", "add", "203.0.113.0/25", "via", "192.0.2.253"],  # 192.0.2.253
    # 192.0.2.251 192.0.2.252
    ["route", "add", "198.51.100.0/24", *NEXTHOP, "192.0.2.251", *NEXTHOP, "192.0.2.252"],
    ["route", "add", "203.0.113.128/25", "via", "inet6", "fe80::2", "dev", DEV],  # fe80::2
    ["nexthop", "add", "id", "1", "via", "192.0.2.248", "dev", DEV],
    ["route", "add", "198.18.0.0/15", "nhid", "1"],  # 192.0.2.248
    ["route", "add", "default", "via", "192.0.2.250", "table", "100"],  # 192.0.2.250
    ["route", "add", "default", "via", "192.0.2.247", "table", "1000"],  # 192.0.2.247
    ["route", "add", "192.0.2.99", "via", "192.0.2.249", "table", "local"],  # none: local
    ["route", "add", "blackhole", "203.0.113.200/32"],  # none
    ["-6", "route", "add", "default", "via", "fe80::1", "dev", DEV],  # fe80::1
    ["-6", "route", "add", "2001:db8:1::/48", "via", "2001:db8::fe"],  # 2001:db8::fe
    # 2001:db8::fa 2001:db8::fb
    ["-6", "route", "add", "2001:db8:2::/48", *NEXTHOP, "2001:db8::fa", *NEXTHOP, "2001:db8::fb"],
    ["-6", "route", "add", "2001:db8:3::1", "via", "2001:db8::f9", "table", "local"],  # none
    ["-6", "route", "add", "unreachable", "2001:db8:4::/48"],  # none
]
GATEWAYS = {
    4: {"192.0.2.254", "192.0.2.253", "192.0.2.251", "192.0.2.252", "fe80::2", "192.0.2.248"}
    | {"192.0.2.250", "192.0.2.247"},
    6: {"fe80::1", "2001:db8::fe", "2001:db8::fa", "2001:db8::fb"},
}
MANY = 300  # routes of route6-many, each via one of MANY_GATEWAYS
MANY_GATEWAYS = ("2001:db8::e1", "2001:db8::e2", "2001:db8::e3")


def setup(netns: Netns) -> None:
    netns.run(["ip", "link", "add", DEV, "type", "veth", "peer", "name", "vb"])
    for device in (DEV, "vb"):
        netns.run(["ip", "link", "set", device, "up"])
    netns.run(["ip", "addr", "add", "192.0.2.1/24", "dev", DEV])
    netns.run(["ip", "addr", "add", "2001:db8::1/64", "dev", DEV, "nodad"])
    for argv in ROUTES:
        netns.run(["ip", *argv])


def add_many(netns: Netns) -> None:
    """MANY routes to 2001:db8:1000::/64 and the next ones, via MANY_GATEWAYS, in one batch."""
    lines = [
        f"route add 2001:db8:{0x1000 + n:x}::/64 via {MANY_GATEWAYS[n % len(MANY_GATEWAYS)]}"
        for n in range(MANY)
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as batch:
        batch.write("\n".join(lines) + "\n")
        batch.flush()
        netns.run(["ip", "-batch", batch.name], timeout=60)


def dump_raw(sock: socket.socket, seq: int, family: int) -> tuple[bytes, int]:
    """Every datagram of one dump, up to and including NLMSG_DONE, and how many there were."""
    sock.settimeout(5)
    sock.send(request(seq, family))
    chunks = []
    for _ in range(256):
        chunks.append(sock.recv(65536))
        if parse_reply(chunks[-1], seq).done:
            return b"".join(chunks), len(chunks)
    raise RuntimeError("no NLMSG_DONE in 256 datagrams")


def record(sock: socket.socket, seq: int, name: str, family: int, gateways: set[str]) -> None:
    data, datagrams = dump_raw(sock, seq, family)
    reply = parse_reply(data)
    got = {str(address) for address in reply.gateways}
    assert got == gateways, (name, got ^ gateways)
    assert reply.malformed == 0 and reply.done, (name, reply)
    routes = sum(kind == RTM_NEWROUTE for kind, _, _ in netlink.split(data)[0])
    (HERE / f"{name}.bin").write_bytes(data)
    ordered = sorted(reply.gateways, key=lambda a: (a.version, a))
    parse = {"gateways": [str(address) for address in ordered]}
    (HERE / f"{name}.expected.json").write_text(json.dumps(parse, indent=2) + "\n")
    print(f"{name}: {len(data)} bytes, {datagrams} datagrams, {routes} routes, {len(got)} gateways")


def main() -> None:
    netns = Netns.create()
    try:
        setup(netns)
        with netns.inside(), open_route_socket() as sock:
            record(sock, 1, "route4", socket.AF_INET, GATEWAYS[4])
            record(sock, 2, "route6", socket.AF_INET6, GATEWAYS[6])
        add_many(netns)
        with netns.inside(), open_route_socket() as sock:
            many = GATEWAYS[6] | set(MANY_GATEWAYS)
            record(sock, 3, "route6-many", socket.AF_INET6, many)
    finally:
        netns.delete()


if __name__ == "__main__":
    main()
