"""Shared by the fleet benchmarks: a throw-away PostgreSQL cluster and real daemons, each in
its own network namespace on one bridge (the fleet tests' tests/integration/fleet_env.py,
outside pytest), and a watch on each host's kernel.

Everything is removed at the end, even on failure: the cluster (its directory too), then the
namespaces, whose deletion kills the processes started in them, by PID.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess  # noqa: TID251 - bench helper
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import common  # noqa: F401 - puts tests/ and tests/integration/ on sys.path
from fleet_env import FleetLab

import pgcluster
from bridge import DB_HOST, Bridge
from netns import Netns
from waiting import PATIENCE, wait_until

# The daemon's events also as JSON with millisecond timestamps, at the default level (info:
# a batch of more than 1,000 bans is one summary line, and its `applied` line is there): the
# extra config of a host, after its [fleet] keys.
JSON_LOG = '[[log.output]]\nto = "stderr"\n\n[[log.output]]\nto = "{path}"\nformat = "json"\n'


@contextlib.contextmanager
def fleet_lab() -> Iterator[FleetLab]:
    """A bridge, the database (schema made) and the scanner's namespace; hosts come with
    `lab.add`. Removed on the way out."""
    reason = pgcluster.unavailable()
    if reason is not None:
        raise SystemExit(reason)
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns.create("pt-fb-"))
        return made[-1]

    cluster: pgcluster.PgCluster | None = None
    with tempfile.TemporaryDirectory(prefix="porttrap-fleetbench-") as tmp:
        try:
            bridge = Bridge.create(make)
            db = bridge.plug(make(), DB_HOST)
            cluster = pgcluster.PgCluster.create(db.netns, [db.v4, db.v6])
            cluster.start()
            cluster.create_database()
            yield FleetLab(Path(tmp), make, bridge, cluster)
        finally:
            if cluster is not None:
                cluster.remove()
            for netns in reversed(made):
                netns.delete()


_ELEMENT = re.compile(r"^add element inet porttrap ban_v[46] \{ ([0-9a-f.:/]+)")


class KernelWatch:
    """When each address first entered porttrap's ban sets in one namespace, as the kernel
    announces it (`nft monitor`), on this process's monotonic clock (every namespace shares
    it). A ban enters the set first with a 1 s timeout, then its own: the first add is the
    moment the kernel drops the address's packets."""

    def __init__(self, ns: Netns) -> None:
        self.first: dict[str, float] = {}
        self.other: list[str] = []  # lines that are not a ban (an error of nft's, if any)
        self._seen = threading.Condition()
        self._ready = False
        # The scratch set exists before the monitor starts: `nft monitor` reads the ruleset
        # once and ignores elements of a set made after that but before it subscribed.
        ns.run(["nft", "add table inet ready { set s { type inet_service; }; }"])
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "nft", "monitor", "new", "elements"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self._wait_listening(ns)
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            now = time.perf_counter()
            found = _ELEMENT.match(line)
            with self._seen:
                if found is not None:
                    self.first.setdefault(found.group(1), now)
                elif "inet ready" in line:
                    self._ready = True
                elif len(self.other) < 20:
                    self.other.append(line)
                self._seen.notify_all()

    def _wait_listening(self, ns: Netns) -> None:
        ports = iter(range(1, 10_000))

        def heard() -> bool:
            ns.run(["nft", f"add element inet ready s {{ {next(ports)} }}"])
            return self._ready

        wait_until(heard, PATIENCE, f"nft monitor listening in {ns.name} ({self.other})")
        ns.run(["nft", "delete table inet ready"])

    def wait_for(self, addresses: list[str], deadline: float) -> bool:
        """Until every address has entered the set, or the monotonic `deadline`."""
        with self._seen:
            while not all(a in self.first for a in addresses):
                left = deadline - time.perf_counter()
                if left <= 0:
                    return False
                self._seen.wait(min(left, 0.5))
        return True

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        self._process.kill()  # the `nft monitor` this object started, by PID
        self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self._process.stdout is not None
        self._process.stdout.close()


@contextlib.contextmanager
def kernel_watches(namespaces: list[Netns]) -> Iterator[list[KernelWatch]]:
    watches: list[KernelWatch] = []
    try:
        for ns in namespaces:
            watches.append(KernelWatch(ns))
        yield watches
    finally:
        for watch in watches:
            watch.close()


def spread(samples: list[float]) -> dict[str, float]:
    """n, p50, p90, p99, max (nearest rank) of `samples`, in milliseconds when they are
    seconds: rounded to 0.1 ms."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    ms = {f"p{p}": round(rank(p) * 1000, 1) for p in (50, 90, 99)}
    return {"n": len(ordered), **ms, "max": round(ordered[-1] * 1000, 1)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid` so far (/proc/PID/stat), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(parent: int) -> float:
    """CPU of `parent` and its direct children now alive (PostgreSQL's backends)."""
    total = cpu_seconds(parent)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == parent:
                total += cpu_seconds(int(stat.parent.name))
    return total
