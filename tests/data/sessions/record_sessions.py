"""Record SOCK_DIAG dumps of SSH sessions from a real kernel for tests/unit/test_sessions_parse.py.

Run as root from the repository root:  .venv/bin/python tests/data/sessions/record_sessions.py

In a network namespace made here (deleted at the end, also on failure) it opens listeners on
the SSH ports 22 (IPv4, and IPv6-only) and 2222 (dual-stack) and on a web port, 8080, then
connects to each from addresses of its own (`SESSIONS`, `OTHERS`), and writes sessions.bin,
the dump the watcher asks for (ESTABLISHED, IPv4 and IPv6, with the bytecode filter on PORTS),
and sessions-unfiltered.bin, every ESTABLISHED socket (no filter: the clients' ends and the
web connections too), each with its parse beside it as NAME.expected.json. A parse is written
only after it matches the sessions opened, and the filtered dump must hold nothing but
them, so neither a parser nor a filter bug can slip into the expected files. Recorded on
Linux 6.18.
"""

from __future__ import annotations

import json
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent)]

from netns import Netns  # noqa: E402
from porttrap import netlink  # noqa: E402
from porttrap.sensors.listeners import open_diag_socket  # noqa: E402
from porttrap.sensors.sessions import TCPDIAG_GETSOCK, parse_reply, request  # noqa: E402

PORTS = (22, 2222)
SERVER_V4, SERVER_V6 = "192.0.2.1", "2001:db8::1"
LISTENERS = [  # (address, port, IPv6 only)
    ("0.0.0.0", 22, False),
    ("::", 22, True),
    ("::", 2222, False),  # dual-stack: an IPv4 session is an IPv4-mapped peer in the IPv6 dump
    ("0.0.0.0", 8080, False),
    ("::", 8080, True),
]
SESSIONS = [  # (client address, server address, port): the peers to report
    ("192.0.2.7", SERVER_V4, 22),
    ("192.0.2.8", SERVER_V4, 22),
    ("2001:db8::7", SERVER_V6, 22),
    ("192.0.2.9", SERVER_V4, 2222),  # ::ffff:192.0.2.9 on the dual-stack listener
]
OTHERS = [("192.0.2.10", SERVER_V4, 8080), ("2001:db8::10", SERVER_V6, 8080)]
EXPECTED = ["192.0.2.7", "192.0.2.8", "192.0.2.9", "2001:db8::7"]


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def open_sockets(stack: ExitStack) -> None:
    """LISTENERS, and a connection for each of SESSIONS and OTHERS (both ends kept open)."""
    servers: dict[tuple[int, int], socket.socket] = {}
    for address, port, v6only in LISTENERS:
        family = family_of(address)
        server = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        if family == socket.AF_INET6:
            server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        server.bind((address, port))
        server.listen()
        servers[family, port] = server
    for client, server_address, port in SESSIONS + OTHERS:
        family = family_of(client)
        sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        sock.bind((client, 0))
        sock.connect((server_address, port))
        listener = servers.get((family, port)) or servers[socket.AF_INET6, port]
        stack.enter_context(listener.accept()[0])


def dump_raw(sock: socket.socket, message: bytes, seq: int) -> bytes:
    """Every datagram of one dump, up to and including NLMSG_DONE."""
    sock.settimeout(5)
    sock.send(message)
    chunks = []
    for _ in range(64):
        chunks.append(sock.recv(65536))
        if parse_reply(chunks[-1], PORTS, seq).done:
            return b"".join(chunks)
    raise RuntimeError("no NLMSG_DONE in 64 datagrams")


def record(sock: socket.socket, seq: int, filtered: bool) -> None:
    name = "sessions" + ("" if filtered else "-unfiltered")
    data = dump_raw(sock, request(seq, PORTS if filtered else None), seq)
    reply = parse_reply(data, PORTS)
    peers = sorted(str(peer) for peer in reply.peers)
    assert peers == EXPECTED, (name, peers)
    assert (reply.malformed, reply.done, reply.error) == (0, True, 0), (name, reply)
    sockets = sum(kind == TCPDIAG_GETSOCK for kind, _, _ in netlink.split(data)[0])
    assert (sockets == len(peers)) == filtered, (name, sockets)  # the filter keeps only these
    (HERE / f"{name}.bin").write_bytes(data)
    parse = {"ports": list(PORTS), "peers": peers}
    (HERE / f"{name}.expected.json").write_text(json.dumps(parse, indent=2) + "\n")
    print(f"{name}: {len(data)} bytes, {sockets} sockets, {len(peers)} peers")


def main() -> None:
    netns = Netns.create()
    try:
        for address in (SERVER_V4, SERVER_V6, *(client for client, _, _ in SESSIONS + OTHERS)):
            v6 = ":" in address
            netns.run(["ip", "addr", "add", address + ("/128" if v6 else "/32"), "dev", "lo",
                       *(["nodad"] if v6 else [])])  # fmt: skip
        with ExitStack() as stack, netns.inside():
            open_sockets(stack)
            sock = stack.enter_context(open_diag_socket())
            record(sock, 1, filtered=True)
            record(sock, 2, filtered=False)
    finally:
        netns.delete()


if __name__ == "__main__":
    main()
