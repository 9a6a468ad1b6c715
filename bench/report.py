"""`porttrap report --since 90d` on a big store: ~1,000,000 hits and ~10,000 bans over 90 days
(the default hit_retention), from 30,000 sources with a few heavy hitters, 300 ports, every
scan class. Measures the command's wall time and peak memory (max RSS), each run a new process.
Addresses come from the documentation ranges. No root, no network:

    .venv/bin/python bench/report.py [--hits 1000000] [--bans 10000] [--runs 3] [--since 90d]
                                     [--keep DIR]

The store is built through the Store API (SQLiteStore.add_hits, add_bans, lift) in a temporary
directory, or in DIR with --keep (a later run with the same DIR reuses it).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import subprocess  # noqa: TID251 - bench helper: runs the CLI as a user would
import sys
import tempfile
import time
from pathlib import Path

from common import Steal, machine

from porttrap.clock import SystemClock
from porttrap.model import Ban, Hit, Outcome, Proto, Unban, trap_reason
from porttrap.store.sqlite import SQLiteStore

DAY = 86400.0
KINDS = ["connect"] * 50 + ["syn"] * 30 + ["udp"] * 10 + ["fin", "null", "xmas", "ack", "maimon"]
LOCAL4, LOCAL6 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")


def sources(count: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The IPv4 documentation ranges, then 2001:db8:5::/48 for the rest."""
    four = [a for net in ("198.51.100.0/24", "203.0.113.0/24") for a in ipaddress.ip_network(net)]
    base = int(ipaddress.IPv6Address("2001:db8:5::"))
    six = [ipaddress.IPv6Address(base + i) for i in range(1, max(1, count - len(four)) + 1)]
    return [*four, *six][:count]


def build(database: Path, hits: int, bans: int, now: float) -> None:
    rng = random.Random(90)
    addresses = sources(30_000)
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(addresses))]  # a few heavy hitters
    ports = rng.sample(range(1, 65536), 300)
    port_weights = [1 / (rank + 1) for rank in range(len(ports))]
    start = now - 90 * DAY + 60
    with SQLiteStore.open(database) as store:
        times = sorted(rng.uniform(start, now) for _ in range(hits))  # as the daemon writes
        for batch in range(0, hits, 50_000):
            count = min(50_000, hits - batch)
            who = rng.choices(addresses, weights, k=count)
            where = rng.choices(ports, port_weights, k=count)
            made = []
            for at, address, port in zip(times[batch:], who, where, strict=False):
                kind = rng.choice(KINDS)
                proto = Proto.UDP if kind == "udp" else Proto.TCP
                local = LOCAL6 if address.version == 6 else LOCAL4
                made.append((Hit(at, address, 40000, local, port, proto, kind), Outcome.COUNTED))
            store.add_hits(made)
        banned = rng.choices(addresses[:5000], k=bans)
        made_bans, unbans = [], []
        for n, address in enumerate(banned):
            at = rng.uniform(start, now)
            expires = None if n % 20 == 0 else at + rng.choice([3600, 4 * 3600, 9 * 3600])
            ban = Ban(
                ipaddress.ip_network(address), at, expires, 1 + n % 3, trap_reason(Proto.TCP, 23)
            )
            made_bans.append(ban)
            if n % 50 == 1:
                unbans.append(Unban(ban.target, at + 60, "manual"))
        store.add_bans(sorted(made_bans, key=lambda b: b.banned_at))
        store.lift(unbans)


# The CLI, then its peak memory: VmHWM of its own address space. (ru_maxrss of a child would
# count the pages of this process at the fork, and this one holds the store it just built.)
_MEASURED = """import sys
from porttrap.cli.main import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
print(status, file=sys.stderr)
sys.exit(code)
"""


def run_report(config: Path, output: Path, since: str) -> tuple[float, float]:
    """(seconds, peak MiB) of one `porttrap report --since SINCE` in a new process."""
    argv = [sys.executable, "-c", _MEASURED, "report", "--since", since, "-c", str(config),
            "-o", str(output)]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    return seconds, int(done.stderr.split()[-1]) / 1024  # VmHWM is in KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=1_000_000)
    parser.add_argument("--bans", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--since", default="90d", help="the report's period (default: 90d)")
    parser.add_argument("--keep", type=Path, help="build (or reuse) the store in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="porttrap-bench-report-") as tmp:
        state = args.keep or Path(tmp)
        state.mkdir(parents=True, exist_ok=True)
        config = state / "porttrap.toml"
        config.write_text(f'state_dir = "{state}"\n')
        database = state / "porttrap.db"
        result: dict[str, object] = {"hits": args.hits, "bans": args.bans, "since": args.since}
        result.update(machine())
        if not database.exists():
            started = time.perf_counter()
            build(database, args.hits, args.bans, SystemClock().now())
            result["build_s"] = round(time.perf_counter() - started, 1)
        result["database_mib"] = round(database.stat().st_size / 2**20, 1)
        times, peaks = [], []
        with Steal() as steal:
            for _ in range(args.runs):
                seconds, peak = run_report(config, state / "report.html", args.since)
                times.append(seconds)
                peaks.append(peak)
        result.update(
            report_s_median=round(statistics.median(times), 2),
            report_s_min=round(min(times), 2),
            peak_rss_mib=round(max(peaks), 1),
            html_kib=round((state / "report.html").stat().st_size / 1024, 1),
            cpu_steal_percent=steal.percent,
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
