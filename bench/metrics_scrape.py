"""What one Prometheus scrape costs a busy daemon: time and size.

A real daemon, core and shell (its firewall and store the in-memory fakes: nothing here
touches the kernel)
holds `--bans` active bans (from 2001:db8::/32) and hit counters for `--ports` distinct TCP
ports (each with a counted and a banned series, plus the "other" series past 1,024 ports). Its
metrics endpoint listens on 127.0.0.1 (a free port); the script scrapes it over TCP as
Prometheus would, plain and gzipped, `--scrapes` times each, and reports:
- collect_ms: building the text on the daemon's loop (the loop does nothing else meanwhile);
- scrape_ms: a whole HTTP exchange as the scraper sees it (connect, request, answer);
- bytes and series of one scrape.

    .venv/bin/python bench/metrics_scrape.py [--ports 1024] [--bans 100000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import ipaddress
import json
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, Steal, percentiles

sys.path.insert(0, str(ROOT / "src"))

from prometheus_client import generate_latest

from porttrap.config.schema import Config, Listen
from porttrap.daemon.metrics import registry_for
from porttrap.daemon.shell import Shell
from porttrap.daemon.wiring import make_shell
from porttrap.model import Hit, Outcome, Proto
from porttrap.testing import FakeClock, MemoryFirewall, MemoryStore

LOCAL = ipaddress.ip_address("203.0.113.1")
SOURCE = ipaddress.ip_address("198.51.100.7")


def busy_daemon(state: Path, ports: int, bans: int) -> Shell:
    clock = FakeClock()
    daemon = make_shell(Config(state_dir=state), clock, MemoryStore(), MemoryFirewall(clock))
    for port in range(1, ports + 2):  # one past the limit: the "other" series
        for outcome in (Outcome.COUNTED, Outcome.BANNED):
            hit = Hit(clock.now(), SOURCE, 40000, LOCAL, port, Proto.TCP, "syn")
            daemon.core.stats.hit(hit, outcome)
    base = int(ipaddress.ip_address("2001:db8::"))
    targets = [ipaddress.ip_network(base + n) for n in range(bans)]
    daemon.core.policy.ban(targets, clock.now(), duration=86400.0)
    return daemon


async def scrape(address: tuple[str, int], gzipped: bool) -> tuple[float, int]:
    """One HTTP exchange; (seconds, bytes of the body)."""
    accept = b"Accept-Encoding: gzip\r\n" if gzipped else b""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n" + accept + b"\r\n")
    raw = await reader.read()
    seconds = time.perf_counter() - started
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    if gzipped:
        gzip.decompress(body)
    return seconds, len(body)


async def measure(daemon: Shell, count: int) -> dict[str, object]:
    await daemon.metrics.start(Listen(ipaddress.ip_address("127.0.0.1"), 0))
    address = daemon.metrics.address
    assert address is not None
    registry = registry_for(daemon.snapshot)
    collect = []
    for _ in range(count):
        started = time.perf_counter()
        text = generate_latest(registry)
        collect.append((time.perf_counter() - started) * 1000)
    series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    result: dict[str, object] = {"series": series, "bytes": len(text), "collect_ms": _ms(collect)}
    for gzipped in (False, True):
        timings, size = [], 0
        for _ in range(count):
            seconds, size = await scrape(address, gzipped)
            timings.append(seconds * 1000)
        key = "gzip" if gzipped else "plain"
        result[f"scrape_ms_{key}"] = _ms(timings)
        result[f"bytes_on_the_wire_{key}"] = size
    await daemon.metrics.close()
    return result


def _ms(samples: list[float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in percentiles(samples).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=1024)
    parser.add_argument("--bans", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="porttrap-bench-") as tmp:
        daemon = busy_daemon(Path(tmp), args.ports, args.bans)
        with Steal() as steal:
            result = asyncio.run(measure(daemon, args.scrapes))
        daemon.writer.close()
    result |= {"ports": args.ports, "bans": args.bans, "cpu_steal_percent": steal.percent}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
