"""How long the nftables backend takes for 100,000 bans: setup, apply (new bans, new timeouts,
temporary to permanent, unbans), entries.

Runs as root, entirely inside a network namespace it creates and deletes:

    .venv/bin/python bench/nftables_bulk.py [COUNT]

Addresses come from 2001:db8::/32: the IPv4 documentation ranges hold only 768 addresses, and
tests and benchmarks use documentation addresses only. Nothing leaves the namespace (only `lo`).
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netns import Netns, in_host_netns
from porttrap.firewall.nftables import NftablesBackend
from porttrap.model import Ban, IPNetwork, Unban

NOW = 1_800_000_000.0
V6 = "2001:db8:b::"


def targets(count: int, base: str) -> list[IPNetwork]:
    first = ipaddress.ip_address(base)
    return [ipaddress.ip_network(first + i) for i in range(count)]


def bans(nets: list[IPNetwork], seconds: float | None) -> list[Ban]:
    expires = None if seconds is None else NOW + seconds
    return [Ban(net, NOW, expires, 1, "bench") for net in nets]


def timed(label: str, action: Callable[[], object]) -> None:
    start = time.perf_counter()
    action()
    print(f"{label:<52} {time.perf_counter() - start:6.2f} s", flush=True)


def main(count: int) -> None:
    netns = Netns.create("pt-bench-")
    try:
        with netns.inside():
            assert not in_host_netns()
            backend = NftablesBackend()
        run(backend, f"{count} v6", targets(count, V6))
        timed("teardown", backend.teardown)
    finally:
        netns.delete()


def run(backend: NftablesBackend, what: str, nets: list[IPNetwork]) -> None:
    hour, permanent, ten_minutes = bans(nets, 3600), bans(nets, None), bans(nets, 600)
    unbans = [Unban(net, NOW, "bench") for net in nets]
    timed(f"setup {what} temporary (empty table)", lambda: backend.setup(hour, NOW))
    timed(f"setup {what} temporary again (replaces)", lambda: backend.setup(hour, NOW))
    timed(f"setup {what} permanent", lambda: backend.setup(permanent, NOW))
    backend.setup([], NOW)
    timed(f"apply {what} new temporary bans", lambda: backend.apply(ten_minutes, NOW))
    timed(f"apply {what} bans, replacing timeouts", lambda: backend.apply(hour, NOW))
    timed(f"apply {what} bans, temporary -> permanent", lambda: backend.apply(permanent, NOW))
    timed(f"entries() with {what} held", backend.entries)
    timed(f"apply {what} unbans", lambda: backend.apply(unbans, NOW))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
