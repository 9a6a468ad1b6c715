"""A protected host serving 5 real services, for the scanners' tests and benchmarks
(tests/integration/test_hold_scans.py, bench/nmap_scan.py): TCP 22, 80, 443, 5432 and 8080
(daemon_env's own service), tiny Python listeners on IPv4 and IPv6."""

from __future__ import annotations

import functools
import sys

from daemon_env import CLIENT, SERVE, SRV_CLI, Env, tcp_works

from porttrap.config.schema import DEFAULT_TCP_TRAPS
from waiting import wait_until

SERVICES = (22, 80, 443, 5432, 8080)  # 8080 is daemon_env's own service
EXCLUDED = (113, 139)  # advanced mode leaves these alone (config.schema.Modes)


def start_services(env: Env) -> None:
    """The 4 services besides daemon_env's own, before the daemon starts (a connection from
    the client side checks each: that client is not a scanner's first probe)."""
    env.srv.start([sys.executable, "-c", SERVE, *(str(p) for p in SERVICES if p != 8080)])
    for port in SERVICES:
        wait_until(functools.partial(tcp_works, env.cli, CLIENT, SRV_CLI, port), 10, f"{port}")


@functools.cache
def default_traps() -> frozenset[int]:
    """The TCP ports of the built-in trap list (stealth mode's)."""
    ports: set[int] = set()
    for item in DEFAULT_TCP_TRAPS:
        first, _, last = item.partition("-")
        ports.update(range(int(first), int(last or first) + 1))
    return frozenset(ports)


def is_trap(advanced: bool, port: int) -> bool:
    """Whether a TCP SYN to `port` touches a trap: advanced mode traps every port nothing
    serves but the excluded ones; stealth mode, the built-in list."""
    if advanced:
        return port not in SERVICES and port not in EXCLUDED
    return port in default_traps()
