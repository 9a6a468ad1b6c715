"""Ports for tests that bind on the host's own addresses (unit tests run without a namespace).

A port taken by binding port 0 and released again is in the kernel's ephemeral range: until
the test binds it, any process on the machine (other suites run at the same time) may be
handed it by its own bind to port 0 or by a connect. `free_ports` picks ports outside that
range, free when checked, so only a process that binds that very number can collide.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOCAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10_000  # below: ports that services are known by


def _outside_ephemeral() -> list[int]:
    low, high = (int(n) for n in LOCAL_PORT_RANGE.read_text().split())
    return [port for port in range(LOWEST, 65536) if not low <= port <= high]


def free_ports(count: int, address: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> list[int]:
    """`count` distinct ports, outside the ephemeral range, free on `address` just now."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    found: list[int] = []
    for port in random.sample(_outside_ephemeral(), k=min(20 * count + 100, 20_000)):
        with socket.socket(family, kind) as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise AssertionError(f"not {count} free ports on {address} outside the ephemeral range")
