"""Shared by the benchmarks: the test suite's namespaces and daemon environment, outside pytest.

Everything runs in network namespaces made here and removed at the end, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

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
