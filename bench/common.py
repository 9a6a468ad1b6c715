"""Shared by the benchmarks: the test suite's namespaces and daemon environment, outside pytest.

Everything runs in network namespaces made here and removed at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from daemon_env import Env  # noqa: E402

from netns import Netns  # noqa: E402


@contextlib.contextmanager
def environment(config: str) -> Iterator[Env]:
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns.create("pt-bench-"))
        return made[-1]

    with tempfile.TemporaryDirectory(prefix="porttrap-bench-") as tmp:
        try:
            yield Env(make, Path(tmp), config)
        finally:
            for netns in reversed(made):
                netns.delete()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"n": len(ordered), "min": ordered[0], "p50": cuts[49], "p99": cuts[98],
            "max": ordered[-1]}  # fmt: skip


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Steal:
    """CPU time the hypervisor took from this VM while a block ran, as a share of the wall
    time of all CPUs: on a shared VM it is what makes latency tails, not the code."""

    def __enter__(self) -> Steal:
        self._start = (_steal_ticks(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        ticks, started = _steal_ticks() - self._start[0], time.perf_counter() - self._start[1]
        hz = os.sysconf("SC_CLK_TCK")
        self.percent = round(100 * ticks / hz / (started * (os.cpu_count() or 1)), 1)


def _steal_ticks() -> int:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8])  # cpu user nice system idle iowait irq softirq steal


def machine() -> dict[str, str | int | float]:
    """What the figures depend on besides the code: the kernel and the CPUs of this VM, and
    how busy the VM was at the start (the 1-minute load average: other work competes for the
    same CPUs)."""
    return {"kernel": os.uname().release, "cpus": os.cpu_count() or 1,
            "load_average_1min": os.getloadavg()[0]}  # fmt: skip


def log_problems(log: str) -> list[str]:
    """The daemon's log lines that are not `level=info` (warnings, errors, tracebacks)."""
    return [line for line in log.splitlines() if line and not line.startswith("level=info")]


def wall() -> float:
    """The wall clock (CLOCK_REALTIME), which the daemon's log timestamps and the kernel's
    packet timestamps also use."""
    return time.clock_gettime(time.CLOCK_REALTIME)


def json_log(path: Path) -> str:
    """Config lines that keep the daemon's usual stderr log and add its events as JSON to
    `path`, with millisecond timestamps (`EventLog` reads them)."""
    return f'[[log.output]]\nto = "stderr"\n\n[[log.output]]\nto = "{path}"\nformat = "json"\n'


class EventLog:
    """The bans in the daemon's JSON log (`json_log`), read as it grows; any thread may ask."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bans: list[dict[str, Any]] = []  # at (epoch seconds), address, evidence, ...
        self._first: dict[str, float] = {}
        self._offset = 0
        self._lock = threading.Lock()

    def poll(self) -> None:
        with self._lock:
            if not self.path.exists():
                return
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
            end = data.rfind(b"\n") + 1
            self._offset += end
            for line in data[:end].splitlines():
                self._take(json.loads(line))

    def _take(self, record: dict[str, Any]) -> None:
        if record["event"] not in ("ban", "permanent-ban"):
            return
        fields = record["fields"]
        at = datetime.fromisoformat(record["ts"]).timestamp()
        until = fields.get("until")
        ends = None if until is None else datetime.fromisoformat(until).timestamp()
        self.bans.append(
            {
                "at": at,
                "address": fields["address"],
                "evidence": fields.get("evidence"),
                "permanent": record["event"] == "permanent-ban",
                "seconds": None if ends is None else round(ends - at),
            }
        )
        self._first.setdefault(fields["address"], at)

    def banned_at(self, address: str) -> float | None:
        """When `address` was first banned (the log line's time), or None."""
        self.poll()
        return self._first.get(address)


def kernel_mib(ns: Netns) -> dict[str, int]:
    """The counters of `ns`'s network stack (/proc/net/snmp, netstat, snmp6 read inside it):
    `Udp.RcvbufErrors`, `TcpExt.SyncookiesSent`, `Udp6InDatagrams` ..."""
    found: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        lines = ns.run(["cat", f"/proc/net/{name}"]).splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=True):
            group, *keys = head.split()
            for key, value in zip(keys, values.split()[1:], strict=True):
                found[f"{group.rstrip(':')}.{key}"] = int(value)
    for line in ns.run(["cat", "/proc/net/snmp6"]).splitlines():
        key, value = line.split()
        found[key] = int(value)
    return found


def add_addresses(ns: Netns, devices: dict[int, str], addresses: list[str]) -> None:
    """Add `addresses` to `ns` in one `ip -batch`, each on `devices[4]` or `devices[6]` by its
    family (IPv6 without duplicate address detection)."""
    lines = [
        f"addr add {a}/{64 if ':' in a else 24} dev {devices[6 if ':' in a else 4]}"
        + (" nodad" if ":" in a else "")
        for a in addresses
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".ip") as batch:
        batch.write("\n".join(lines) + "\n")
        batch.flush()
        ns.run(["ip", "-batch", batch.name], 60)


def report(summary: dict[str, Any], details: object, out: Path | None) -> None:
    """Print `summary` as JSON, and write `details` (every figure) to `out` when given."""
    if out is not None:
        out.write_text(json.dumps(details, indent=1))
    print(json.dumps(summary, indent=1))
