"""Fleet propagation: from a trap touched on host A to the scanner's packets dropped on the
other hosts, through the real daemons and a real PostgreSQL (issue 14: p50 under 100 ms, p99
under 1 s).

Per fleet size, a fleet of real daemons in namespaces on one bridge (bench/fleet_common.py).
Each ban uses a fresh scanner address (198.51.100.110-199 and 2001:db8:f::a:N, alternately):
the scanner completes a handshake to the trap of host A (A turns round the fleet), t0 = the
moment connect() returns. Every host's kernel is watched (`nft monitor`): the time each one
first holds the address in its ban set, minus t0, is the kernel-holds time (A's own: the
local ban; the others': propagation). The next ban starts when every host holds this one.

For a sample (every --sample-every-th ban) the scanner also probes host B (the next host
after A) from the banned address: a SYN to a closed port every 0.5 ms, answered by a RST
until B drops it. The send time of the first probe left unanswered for 20 ms, minus t0, is
the dropped-packet time. (Not a connection to a service: an established client of B is one
that B's local protection refuses to ban.) Run as root:

    .venv/bin/python bench/fleet_propagation.py [--sizes 5 10] [--bans 200] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import select
import socket
import time
from itertools import cycle

from common import Steal, machine
from daemon_env import open_socket
from fleet_common import KernelWatch, fleet_lab, kernel_watches, spread
from fleet_env import ATK4, FleetLab, Host

CLOSED_PORT = 9  # nothing listens there on a host: a SYN gets a RST
PROBE_TIMEOUT = 0.02
PROBE_GAP = 0.0005
PATIENCE = 10.0  # seconds a ban may take to reach every host before the run fails


def sources(count: int) -> list[str]:
    """Fresh scanner addresses, IPv4 and IPv6 alternately while IPv4 ones last."""
    v4 = [f"198.51.100.{n}" for n in range(110, 200)]
    v6 = [f"2001:db8:f::a:{n:x}" for n in range(1, count + 1)]
    mixed: list[str] = []
    while len(mixed) < count:
        if v4:
            mixed.append(v4.pop(0))
        if len(mixed) < count:
            mixed.append(v6.pop(0))
    return mixed


def add_addresses(lab: FleetLab, addresses: list[str]) -> None:
    device = lab.atk.netns.run(["ip", "-o", "addr", "show", "to", ATK4]).split()[1]
    for address in addresses:
        prefix, extra = ("64", ["nodad"]) if ":" in address else ("24", [])
        lab.atk.netns.run(["ip", "addr", "add", f"{address}/{prefix}", "dev", device, *extra])


def answered(lab: FleetLab, source: str, host: Host) -> tuple[float, bool]:
    """One SYN from `source` to a closed port of `host`: (send time, answered by a RST)."""
    target = host.v6 if ":" in source else host.v4
    sock = open_socket(lab.atk.netns, source, socket.SOCK_STREAM)
    sock.setblocking(False)
    sent = time.perf_counter()
    with contextlib.suppress(BlockingIOError):
        sock.connect((target, CLOSED_PORT))
    _, ready, _ = select.select([], [sock], [], PROBE_TIMEOUT)
    refused = bool(ready) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (
        errno.ECONNREFUSED,
        0,
    )
    sock.close()
    return sent, refused


def dropped_after(lab: FleetLab, source: str, host: Host, t0: float) -> float:
    """Seconds from t0 to the send time of the first probe `host` left unanswered."""
    while time.perf_counter() < t0 + PATIENCE:
        sent, ok = answered(lab, source, host)
        if not ok:
            return sent - t0
        time.sleep(PROBE_GAP)
    raise RuntimeError(f"{source} not dropped on {host.name} within {PATIENCE} s")


def run_size(size: int, bans: int, sample_every: int) -> dict[str, object]:
    with fleet_lab() as lab:
        hosts = lab.add(size)
        addresses = sources(bans)
        add_addresses(lab, addresses)
        local: list[float] = []
        remote: list[float] = []
        slowest: list[float] = []
        dropped: list[float] = []
        dropped_before_kernel = 0
        with kernel_watches([h.netns for h in hosts]) as watches, Steal() as steal:
            banning = cycle(range(size))
            for i, source in enumerate(addresses):
                a = next(banning)
                b = (a + 1) % size
                sample = i % sample_every == 0
                if sample and not answered(lab, source, hosts[b])[1]:
                    raise RuntimeError(f"{hosts[b].name} does not answer {source} before the ban")
                lab.touch_trap(hosts[a], source)
                t0 = time.perf_counter()
                if sample:
                    drop = dropped_after(lab, source, hosts[b], t0)
                    dropped.append(drop)
                    if not watches[b].wait_for([source], t0 + PATIENCE):
                        raise RuntimeError(f"{source} dropped but not in {hosts[b].name}'s set")
                    if drop < watches[b].first[source] - t0 - PROBE_TIMEOUT:
                        dropped_before_kernel += 1  # a lost probe, not a ban
                times = _held(watches, source, t0)
                local.append(times[a])
                others = [t for n, t in enumerate(times) if n != a]
                remote += others
                slowest.append(max(others))
        for host in hosts:
            host.stop()
    return {
        "hosts": size,
        "bans": bans,
        "kernel_holds_ms_each_other_host": spread(remote),
        "kernel_holds_ms_slowest_host_per_ban": spread(slowest),
        "kernel_holds_ms_local_host_A": spread(local),
        "dropped_on_B_ms_sample": spread(dropped),
        "sample_dropped_before_kernel_held": dropped_before_kernel,
        "cpu_steal_percent": steal.percent,
    }


def _held(watches: list[KernelWatch], source: str, t0: float) -> list[float]:
    deadline = t0 + PATIENCE
    for watch in watches:
        if not watch.wait_for([source], deadline):
            raise RuntimeError(f"{source} did not reach every host within {PATIENCE} s")
    return [watch.first[source] - t0 for watch in watches]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--bans", type=int, default=200)
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="2 and 3 hosts, 20 bans")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.bans, args.sample_every = [2, 3], 20, 5
    result = {
        "benchmark": "fleet propagation: trap touch on A -> ban in the kernel of the others",
        "machine": machine(),
        "runs": [run_size(size, args.bans, args.sample_every) for size in args.sizes],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
