"""How long the ipset backend takes: setup with 10,000 and 100,000 bans, one apply of 1,000
bans, the daemon's 5 s check (`present`) and `entries` with 100,000 held. Every setup carries
the watch of connect mode (a UDP trap, a gateway), as the daemon's do.

Runs as root, entirely inside a network namespace it creates and deletes:

    .venv/bin/python bench/ipset_bulk.py [RUNS]

The script re-runs itself inside the namespace (`ip netns exec`), so that ipset and iptables are
started as the daemon starts them, without `ip netns exec` in front of every command. Addresses
come from 2001:db8::/32 (the IPv4 documentation ranges hold only 768 addresses). Nothing leaves
the namespace (only `lo`).
"""

from __future__ import annotations

import ipaddress
import subprocess  # noqa: TID251 - bench helper: runs itself inside the namespace
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netns import Netns
from porttrap.config.loader import load_text
from porttrap.firewall.ipset import IpsetBackend
from porttrap.model import Ban, IPNetwork
from porttrap.sensorspec import SensorState, spec_from_config

NOW = 1_800_000_000.0
V6 = "2001:db8:b::"
V6_NEW = "2001:db8:c::"
INSIDE = "--inside"
CONFIG = '[traps]\ntcp = ["23"]\nudp = ["69", "161"]\n'
GATEWAYS = frozenset({ipaddress.ip_address("2001:db8::1")})


def targets(count: int, base: str) -> list[IPNetwork]:
    first = ipaddress.ip_address(base)
    return [ipaddress.ip_network(first + i) for i in range(count)]


def bans(nets: list[IPNetwork], seconds: float | None) -> list[Ban]:
    expires = None if seconds is None else NOW + seconds
    return [Ban(net, NOW, expires, 1, "bench") for net in nets]


def timed(label: str, action: Callable[[], object]) -> None:
    start = time.perf_counter()
    action()
    print(f"{label:<52} {time.perf_counter() - start:6.3f} s", flush=True)


def netns_inode() -> int:
    return Path("/proc/self/ns/net").stat().st_ino


def bench(runs: int, parent_netns: int) -> None:
    assert netns_inode() != parent_netns, "refusing to run ipset in the host's namespace"
    backend = IpsetBackend()
    ten, hundred = bans(targets(10_000, V6), 3600), bans(targets(100_000, V6), 3600)
    new = bans(targets(1_000, V6_NEW), 3600)
    watch = SensorState(spec_from_config(load_text(CONFIG, None)), {}, gateways=GATEWAYS)
    for run in range(1, runs + 1):
        print(f"-- run {run}")
        timed("setup 10,000 bans (nothing there yet)", lambda: backend.setup(ten, NOW, watch))
        timed(
            "setup 100,000 bans (replaces the 10,000)",
            lambda: backend.setup(hundred, NOW, watch),
        )
        timed("setup 100,000 bans again", lambda: backend.setup(hundred, NOW, watch))
        timed("apply 1,000 new bans (100,000 held)", lambda: backend.apply(new, NOW))
        timed("present() (100,000 held)", backend.present)
        timed("entries() (101,000 held)", backend.entries)
        timed("teardown", backend.teardown)


def main(runs: int) -> None:
    netns = Netns.create("pt-bench-")
    try:
        inner = [str(Path(__file__).resolve()), INSIDE, str(runs), str(netns_inode())]
        subprocess.run(
            ["ip", "netns", "exec", netns.name, sys.executable, *inner],
            check=True,
            timeout=600,
        )
    finally:
        netns.delete()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == INSIDE:
        bench(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
