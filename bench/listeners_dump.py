"""What one `porttrap.sensors.listeners.dump` costs the event loop, by size of the socket table.

    .venv/bin/python bench/listeners_dump.py [--served 1000] [--connections 1000] [--runs 500]

In a namespace made here (removed at the end, even on failure): `--served` serving sockets
(half TCP listeners, half bound UDP, IPv4 and IPv6), then as many again plus `--connections`
established TCP connections and connected UDP clients, which the kernel filters out. Each
dump is all four requests (TCP/UDP x IPv4/IPv6), the parse and the set of ports: what the
watcher does per tick.
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
from porttrap.sensors.listeners import dump, open_diag_socket, served_ports

ADDRESSES = ("192.0.2.1", "2001:db8::1")
FIRST_PORT = 20000


def serve(stack: ExitStack, count: int, first: int) -> None:
    for n in range(count):
        address = ADDRESSES[n % 2]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if n % 4 < 2:
            stack.enter_context(socket.create_server((address, first + n), family=family))
        else:
            udp = stack.enter_context(socket.socket(family, socket.SOCK_DGRAM))
            udp.bind((address, first + n))


def serve_and_connect(stack: ExitStack, served: int, connections: int) -> None:
    serve(stack, served, FIRST_PORT)
    connect(stack, connections)


def connect(stack: ExitStack, count: int) -> None:
    server = stack.enter_context(socket.create_server((ADDRESSES[0], 9), backlog=count))
    for _ in range(count):
        stack.enter_context(socket.create_connection((ADDRESSES[0], 9)))
        stack.enter_context(server.accept()[0])
        udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.connect((ADDRESSES[0], 7))


def timed(runs: int) -> dict[str, float]:
    samples = []
    with open_diag_socket() as sock:
        for n in range(runs):
            started = time.perf_counter()
            served_ports(dump(sock, 1 + 4 * n).listeners)
            samples.append((time.perf_counter() - started) * 1000)
    return {key: round(value, 3) for key, value in percentiles(samples).items()}


def measure(netns: Netns, runs: int, setup: Callable[[ExitStack], None]) -> dict[str, float]:
    with ExitStack() as stack, netns.inside():
        setup(stack)
        return timed(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--served", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process only
    netns = Netns.create("pt-bench-")
    try:
        netns.run(["ip", "addr", "add", f"{ADDRESSES[0]}/32", "dev", "lo"])
        netns.run(["ip", "addr", "add", f"{ADDRESSES[1]}/128", "dev", "lo"])
        cases: dict[str, Callable[[ExitStack], None]] = {
            "empty": lambda stack: None,
            f"served={args.served}": lambda stack: serve(stack, args.served, FIRST_PORT),
            f"served={args.served}+clients={args.connections}": lambda stack: serve_and_connect(
                stack, args.served, args.connections
            ),
        }
        for name, setup in cases.items():
            print(json.dumps({"case": name, "dump_ms": measure(netns, args.runs, setup)}))
    finally:
        netns.delete()


if __name__ == "__main__":
    main()
