"""Prefix bans at scale: 100,000 banned sources spread over 2,000 prefixes, without and with
`[ban.prefix] spread = 3`. For each: the policy's time for the 100,000 trap hits, the bans it
holds at the end (kernel elements), the time each backend takes to load them (one setup, as at
a start) and to apply the decisions as the daemon does (batches of 100 changes), and the
latency of a TCP connect from an address that is not banned, through the resulting ruleset.

Runs as root, entirely inside two network namespaces it creates and deletes:

    .venv/bin/python bench/prefix_bans.py [SOURCES] [PREFIXES]

The sources are IPv6 (2001:db8::/32, `v6_source = 128`, prefixes of /64): the IPv4
documentation ranges hold three /24s, and tests and benchmarks use documentation addresses
only. The shape is the issue's: 50 sources in each prefix, hitting in random order. The script
re-runs itself inside the server's namespace (`ip netns exec`), so that nft, ipset and iptables
run as the daemon runs them.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import subprocess  # noqa: TID251 - bench helper: runs itself inside the namespace
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netns import Netns
from porttrap.config.schema import BanPolicy, PrefixPolicy
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.nftables import NftablesBackend
from porttrap.model import Ban, Change, Hit, Proto
from porttrap.policy import Policy, Protection

NOW = 1_800_000_000.0
INSIDE = "--inside"
SERVER, CLIENT, PORT = "2001:db8:ffff::1", "2001:db8:ffff::2", 8080
CONNECTS = 2000
BATCH = 100
LISTEN = (
    "import socket\n"
    f"s = socket.create_server(('::', {PORT}), family=socket.AF_INET6, backlog=512)\n"
    "while True:\n"
    "    s.accept()[0].close()\n"
)


def hits(sources: int, prefixes: int) -> list[Hit]:
    """`sources` scanners, as many in each of `prefixes` /64s, in random order."""
    per = sources // prefixes
    local = ipaddress.ip_address(SERVER)
    found = []
    for p in range(prefixes):
        base = int(ipaddress.ip_address("2001:db8::")) + (p << 64)
        for s in range(1, per + 1):
            address = ipaddress.IPv6Address(base + s)
            found.append(Hit(NOW, address, 40000, local, 23, Proto.TCP))
    random.Random(15).shuffle(found)
    return found


def decide(spread: int, scan: Sequence[Hit]) -> tuple[list[Change], list[Ban], float]:
    prefix = PrefixPolicy(v6=(64,), spread=spread)
    policy = Policy(BanPolicy(prefix=prefix), (), Protection([]))
    changes: list[Change] = []
    start = time.perf_counter()
    for n, hit in enumerate(scan):
        verdict = policy.on_hit(hit, NOW + n / 1000)
        if verdict.ban is not None:
            changes += [verdict.ban, *verdict.more]
    took = time.perf_counter() - start
    return changes, policy.active(NOW + len(scan) / 1000), took


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def connect_ms(client: Netns) -> tuple[float, float, float]:
    """Median, 99th percentile and max of `CONNECTS` connects, in ms."""
    samples = []
    for _ in range(CONNECTS):
        with client.inside():
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        with sock:
            sock.bind((CLIENT, 0))
            start = time.perf_counter()
            sock.connect((SERVER, PORT))
            samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], samples[-1]


def bench(sources: int, prefixes: int, client_name: str) -> None:
    client = Netns(client_name)
    scan = hits(sources, prefixes)
    print(f"{sources} banned sources over {prefixes} /64s; connect latency over {CONNECTS}")
    header = f"{'backend':<9} {'prefix bans':<12} {'policy s':>8} {'changes':>8} "
    print(header + f"{'elements':>8} {'setup s':>8} {'apply s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for name, make in (("nftables", NftablesBackend), ("ipset", IpsetBackend)):
        for spread in (0, 3):
            changes, active, policy_s = decide(spread, scan)
            backend = make()
            setup_s = timed(lambda: backend.setup(active, NOW))  # noqa: B023
            elements = len(backend.entries())
            p50, p99, _ = connect_ms(client)
            backend.setup([], NOW)
            batches = [changes[i : i + BATCH] for i in range(0, len(changes), BATCH)]
            apply_s = timed(lambda: [backend.apply(b, NOW) for b in batches])  # noqa: B023
            backend.teardown()
            on = "spread=3" if spread else "off"
            print(
                f"{name:<9} {on:<12} {policy_s:8.2f} {len(changes):8} {elements:8} "
                f"{setup_s:8.2f} {apply_s:8.2f} {p50:7.3f} {p99:7.3f}",
                flush=True,
            )


def main(sources: int, prefixes: int) -> None:
    server, client = Netns.create("pt-pfx-"), Netns.create("pt-pfx-")
    try:
        server.veth(client, [f"{SERVER}/64"], [f"{CLIENT}/64"])
        server.start([sys.executable, "-c", LISTEN])
        time.sleep(1)  # a benchmark, not a test: the listener is up well before the first use
        inner = [str(Path(__file__).resolve()), INSIDE, str(sources), str(prefixes), client.name]
        subprocess.run(
            ["ip", "netns", "exec", server.name, sys.executable, *inner], check=True, timeout=3600
        )
    finally:
        client.delete()
        server.delete()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == INSIDE:
        bench(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        args = [int(a) for a in sys.argv[1:3]]
        main(*(args + [100_000, 2_000][len(args) :]))
