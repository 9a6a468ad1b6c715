"""The policy's memory under a flood of forged sources, in-process: one forged IPv6 datagram
from each new source (what a connect-mode UDP flood feeds it), traced with tracemalloc after
10,000, 65,536 (the watched sources' limit), 100,000 and 200,000 sources. The addresses are
made before tracing starts, as the packets would be. No network, no root. Run:

    .venv/bin/python bench/policy_memory.py [--sources 200000]
"""

from __future__ import annotations

import argparse
import json
import random
import tracemalloc
from ipaddress import IPv6Address

from porttrap.config.schema import BanPolicy
from porttrap.model import Hit, Proto
from porttrap.policy import Policy, Protection

T0 = 1_800_000_000.0
BASE = int(IPv6Address("2001:db8:8000::"))  # 2001:db8:8000::/33, documentation space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(1)
    local = IPv6Address("2001:db8::1")
    hits = [
        Hit(T0, IPv6Address(BASE + rng.getrandbits(95)), 40000, local, 161, Proto.UDP, "udp")
        for _ in range(args.sources)
    ]
    checkpoints = {10_000, 65_536, 100_000, args.sources}
    engine = Policy(BanPolicy(), (), Protection([]))
    tracemalloc.start()
    for n, hit in enumerate(hits, 1):
        engine.on_hit(hit, T0)
        if n in checkpoints:
            traced, _ = tracemalloc.get_traced_memory()
            print(json.dumps({
                "sources": n,
                "watched": engine.watched(),
                "evicted": engine.evicted,
                "traced_mib": round(traced / 2**20, 1),
                "bytes_per_watched": round(traced / engine.watched()),
            }))  # fmt: skip


if __name__ == "__main__":
    main()
