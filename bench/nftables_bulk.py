"""How long the nftables backend takes for 100,000 bans: setup, apply, entries, unban.

Runs as root, entirely inside a network namespace it creates and deletes:

    .venv/bin/python bench/nftables_bulk.py [COUNT]
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netns import Netns, in_host_netns
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.model import Ban, IPNetwork, Unban

NOW = 1_800_000_000.0


def targets(count: int, base: str) -> list[IPNetwork]:
    first = ipaddress.ip_address(base)
    return [ipaddress.ip_network(first + i) for i in range(count)]


def bans(nets: list[IPNetwork], seconds: float | None) -> list[Ban]:
    expires = None if seconds is None else NOW + seconds
    return [Ban(net, NOW, expires, 1, "bench") for net in nets]


def timed(label: str, action: Callable[[], object]) -> None:
    start = time.perf_counter()
    action()
    print(f"{label:<48} {time.perf_counter() - start:6.2f} s", flush=True)


def main(count: int) -> None:
    netns = Netns.create("pt-bench-")
    try:
        with netns.inside():
            assert not in_host_netns()
            backend = NftablesBackend(nft=Nft())
        run(backend, count)
    finally:
        netns.delete()


def run(backend: NftablesBackend, count: int) -> None:
    v4 = targets(count, "10.0.0.0")
    half = targets(count // 2, "10.0.0.0") + targets(count - count // 2, "2001:db8::")
    fresh = targets(count, "10.128.0.0")
    temporary, mixed, permanent = bans(v4, 3600), bans(half, 3600), bans(v4, None)
    timed(f"setup {count} temporary v4", lambda: backend.setup(temporary, NOW))
    timed(f"setup {count} again (replaces)", lambda: backend.setup(temporary, NOW))
    timed(f"setup {count} half v4 half v6", lambda: backend.setup(mixed, NOW))
    timed(f"setup {count} permanent v4", lambda: backend.setup(permanent, NOW))
    backend.setup(temporary, NOW)
    new, shorter = bans(fresh, 600), bans(v4, 60)
    timed(f"apply {count} new temporary bans", lambda: backend.apply(new, NOW))
    timed(f"apply {count} bans, replacing timeouts", lambda: backend.apply(shorter, NOW))
    timed(f"apply {count} bans, temporary -> permanent", lambda: backend.apply(permanent, NOW))
    timed(f"entries() with {2 * count} held", backend.entries)
    unbans = [Unban(net, NOW, "bench") for net in fresh]
    timed(f"apply {count} unbans", lambda: backend.apply(unbans, NOW))
    timed("teardown", backend.teardown)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
