"""What one read of the SSH sessions costs the event loop on a busy server: the kernel's
bytecode filter on the local port against every ESTABLISHED socket filtered in Python.

    .venv/bin/python bench/sessions_dump.py [--connections 5000] [--runs 300]

In a namespace made here (removed at the end, even on failure): one SSH session (port 22)
and `--connections` established TCP connections to a web port (both ends: 2x sockets). Each
read is what SessionWatcher does every second: one dump (IPv4 and IPv6) and the parse. "python"
asks for every ESTABLISHED socket and filters them in Python; "two walks" asks per family
(SOCK_DIAG_BY_FAMILY), with the filter: the kernel walks its table of connections twice.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack

from common import percentiles

from netns import Netns
from porttrap import netlink
from porttrap.model import Proto
from porttrap.sensors import listeners, sessions
from porttrap.sensors.listeners import open_diag_socket

ADDRESS = "192.0.2.1"
SSH, WEB = 22, 8080


def connect(stack: ExitStack, count: int) -> None:
    ssh = stack.enter_context(socket.create_server((ADDRESS, SSH)))
    web = stack.enter_context(socket.create_server((ADDRESS, WEB), backlog=count))
    stack.enter_context(socket.create_connection((ADDRESS, SSH)))
    stack.enter_context(ssh.accept()[0])
    for _ in range(count):
        stack.enter_context(socket.create_connection((ADDRESS, WEB)))
        stack.enter_context(web.accept()[0])


def per_family(sock: socket.socket, seq: int) -> int:
    """Two SOCK_DIAG_BY_FAMILY dumps with the filter; the number of peers."""
    program = netlink.attribute(sessions.INET_DIAG_REQ_BYTECODE, sessions.bytecode([SSH]))
    found = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        header = listeners.request(seq, family, Proto.TCP, 1 << sessions.TCP_ESTABLISHED)
        body = header[netlink.NLMSGHDR.size :] + program
        sock.send(netlink.message(listeners.SOCK_DIAG_BY_FAMILY, 0x301, seq, body))
        found += len(read(sock, seq))
    return found


def in_python(sock: socket.socket, seq: int) -> int:
    sock.send(sessions.request(seq, None))
    return len(read(sock, seq))


def with_filter(sock: socket.socket, seq: int) -> int:
    return len(sessions.dump(sock, (SSH,), seq).peers)


def read(sock: socket.socket, seq: int) -> frozenset[object]:
    peers: set[object] = set()
    while True:
        reply = sessions.parse_reply(sock.recv(65536), (SSH,), seq)
        peers |= reply.peers
        if reply.done:
            return frozenset(peers)


def timed(runs: int, read_once: Callable[[socket.socket, int], int]) -> dict[str, float]:
    samples = []
    with open_diag_socket() as sock:
        for n in range(runs):
            started = time.perf_counter()
            found = read_once(sock, n + 1)
            samples.append((time.perf_counter() - started) * 1000)
            assert found == 1, found
    return {key: round(value, 3) for key, value in percentiles(samples).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process only
    netns = Netns.create("pt-bench-")
    cases = {"filter": with_filter, "python": in_python, "two walks": per_family}
    try:
        netns.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"])
        with ExitStack() as stack, netns.inside():
            connect(stack, args.connections)
            for name, read_once in cases.items():
                case = f"{name}, 1 session + {args.connections} connections"
                print(json.dumps({"case": case, "read_ms": timed(args.runs, read_once)}))
    finally:
        netns.delete()


if __name__ == "__main__":
    main()
