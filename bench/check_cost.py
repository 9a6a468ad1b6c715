"""What the daemon's periodic firewall check costs with 1,000 bans (the most it lists and
compares one by one) while the recent-clients set holds many elements (60,000 by default):
the check must read the ban sets only, whatever the clients set holds.

Runs as root, entirely inside a network namespace it creates and deletes:

    .venv/bin/python bench/check_cost.py [CLIENTS]

Addresses come from 2001:db8::/32 (documentation addresses only); nothing leaves the namespace.
"""

from __future__ import annotations

import ipaddress
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netns import Netns, in_host_netns
from porttrap.config.loader import load_text
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.model import Ban
from porttrap.sensorspec import SensorState, spec_from_config

NOW = 1_800_000_000.0
BANS = 1000
CONFIG = '[traps]\nmode = "advanced"\n'
ROUNDS = 5
CHUNK = 5000


def addresses(count: int, base: str) -> list[str]:
    first = ipaddress.ip_address(base)
    return [str(first + i) for i in range(count)]


def fill_clients(netns: Netns, count: int) -> None:
    """`count` elements in clients_v6, as `nft` would add them (the kernel's watch does too)."""
    names = addresses(count, "2001:db8:c::")
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as script:
        for start in range(0, count, CHUNK):
            chunk = ", ".join(names[start : start + CHUNK])
            script.write(f"add element inet porttrap clients_v6 {{ {chunk} }}\n")
        script.flush()
        netns.run(["nft", "-f", script.name], timeout=120)


def main(clients: int) -> None:
    netns = Netns.create("pt-bench-")
    try:
        with netns.inside():
            assert not in_host_netns()
            backend = NftablesBackend()
        bans = [
            Ban(ipaddress.ip_network(a), NOW, NOW + 3600, 1, "bench")
            for a in addresses(BANS, "2001:db8:b::")
        ]
        state = SensorState(spec_from_config(load_text(CONFIG, None)), {})
        backend.setup(bans, NOW, state)
        fill_clients(netns, clients)
        with netns.inside():
            held = NftObjects().count_elements("porttrap", ["clients_v6"])
        assert held == clients, f"clients_v6 holds {held}, not {clients}"
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            found = backend.inspect(entries=True)
            times.append(time.perf_counter() - start)
        assert found.damaged is None and found.entries is not None
        assert len(found.entries) == BANS, len(found.entries)
        median = statistics.median(times) * 1000
        print(f"check (inspect entries=True), {BANS} bans, {clients} clients: {median:.0f} ms")
        backend.teardown()
    finally:
        netns.delete()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60_000)
