"""Fleet under sustained load: 1,000 bans a second published across the fleet for 60 s; the
lag from a ban's decision to every other host's kernel, and each daemon's CPU (issue 14).

A fleet of real daemons (default 5) in namespaces on one bridge with a real PostgreSQL
(bench/fleet_common.py). Each host is sent admin bans over its control socket (what
`porttrap ban` sends), rate / hosts a second in 10 batches, each a fresh address of
2001:db8:d::/48: the host bans it, publishes it (outbox, INSERT, NOTIFY), and every other
host reads it and applies it. So every host publishes (rate / hosts)/s and receives the rest:
the whole real path, both ways. The kernels of the first --watch hosts (default 2) are
watched (`nft monitor`: two lines per ban; watching all five made this harness use more CPU
than the five daemons); the lag of a ban on a host is the time its address first entered
that host's ban set minus the time the batch was sent, on this process's monotonic clock
(all namespaces share it). CPU: each daemon's utime + stime over the run (/proc/PID/stat),
PostgreSQL's (the postmaster and its backends), and this harness's (with its monitors).
Run as root:

    .venv/bin/python bench/fleet_load.py [--hosts 5] [--rate 1000] [--seconds 60] [--watch 2]
                                         [--quick]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import threading
import time
from typing import Any

from common import Steal, machine
from fleet_common import (
    KernelWatch,
    children_cpu_seconds,
    cpu_seconds,
    fleet_lab,
    kernel_watches,
    spread,
)
from fleet_env import Host

from porttrap.daemon import control

TICKS = 10  # batches a second, per host
DRAIN = 120.0  # seconds the fleet may take after the run to hold every ban everywhere


class Sender(threading.Thread):
    """Sends host `index` its share of bans, TICKS batches a second, for `seconds`."""

    def __init__(self, host: Host, index: int, per_tick: int, ticks: int, start: float) -> None:
        super().__init__(daemon=True)
        self.host, self.index, self.per_tick, self.ticks, self.t0 = (
            host, index, per_tick, ticks, start,
        )  # fmt: skip
        self.sent: dict[str, float] = {}  # address -> monotonic send time
        self.late = 0  # batches sent after their slot (the host answered slowly)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as err:  # reported by the main thread
            self.error = err

    def _run(self) -> None:
        socket = self.host.dir / "state" / "control.sock"
        base = int(ipaddress.IPv6Address(f"2001:db8:d:{self.index:x}::"))
        for tick in range(self.ticks):
            slot = self.t0 + tick / TICKS
            wait = slot - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            elif wait < -1 / TICKS:
                self.late += 1
            first = base + tick * self.per_tick + 1
            batch = [str(ipaddress.IPv6Address(first + n)) for n in range(self.per_tick)]
            sent = time.perf_counter()
            control.request(socket, {"cmd": "ban", "targets": batch, "for": 3600})
            for address in batch:
                self.sent[address] = sent


def run(hosts_count: int, rate: int, seconds: int, watched: int) -> dict[str, Any]:
    per_tick = max(1, rate // hosts_count // TICKS)
    ticks = seconds * TICKS
    result: dict[str, Any] = {"hosts": hosts_count, "bans_per_s": per_tick * TICKS * hosts_count,
                              "seconds": seconds}  # fmt: skip
    with fleet_lab() as lab:
        hosts = lab.add(hosts_count)
        assert lab.cluster.process is not None
        pids = [h.daemon.pid for h in hosts if h.daemon is not None]
        with kernel_watches([h.netns for h in hosts[:watched]]) as watches, Steal() as steal:
            harness = [os.getpid(), *(w.pid for w in watches)]
            harness0 = sum(cpu_seconds(pid) for pid in harness)
            cpu0 = [cpu_seconds(pid) for pid in pids]
            pg0 = children_cpu_seconds(lab.cluster.process.pid)
            start = time.perf_counter() + 0.5
            senders = [Sender(h, n + 1, per_tick, ticks, start) for n, h in enumerate(hosts)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
                if sender.error is not None:
                    raise sender.error
            sent_done = time.perf_counter()
            cpu1 = [cpu_seconds(pid) for pid in pids]
            pg1 = children_cpu_seconds(lab.cluster.process.pid)
            harness1 = sum(cpu_seconds(pid) for pid in harness)
            drained = _drain(senders, watches)
            result["sending_s"] = round(sent_done - start, 1)
            result["all_held_everywhere_after_sending_s"] = round(drained - sent_done, 2)
        statuses = [h.json("fleet", "status")["link"] for h in hosts]
        for host in hosts:
            host.stop()
    result |= _lags(senders, watches)
    run_s = sent_done - start
    result["daemon_cpu_percent_of_one_cpu"] = {
        h.name: round(100 * (b - a) / run_s, 1) for h, a, b in zip(hosts, cpu0, cpu1, strict=True)
    }
    result["postgresql_cpu_percent_of_one_cpu"] = round(100 * (pg1 - pg0) / run_s, 1)
    result["harness_cpu_percent_of_one_cpu"] = round(100 * (harness1 - harness0) / run_s, 1)
    result["late_batches"] = sum(s.late for s in senders)
    result["last_receive_lag_ms"] = {
        h.name: None if s["receive_lag"] is None else round(s["receive_lag"] * 1000, 1)
        for h, s in zip(hosts, statuses, strict=True)
    }
    result["refused_rows"] = sum(s["refused_rows"] for s in statuses)
    result["cpu_steal_percent"] = steal.percent
    return result


def _drain(senders: list[Sender], watches: list[KernelWatch]) -> float:
    every = [a for s in senders for a in s.sent]
    deadline = time.perf_counter() + DRAIN
    for watch in watches:
        if not watch.wait_for(every, deadline):
            missing = len(every) - sum(1 for a in every if a in watch.first)
            raise RuntimeError(f"{missing} bans missing on a host after {DRAIN} s")
    return max(max(w.first[a] for a in every) for w in watches)


def _lags(senders: list[Sender], watches: list[KernelWatch]) -> dict[str, Any]:
    local: list[float] = []
    remote: list[float] = []
    for n, sender in enumerate(senders):
        for address, sent in sender.sent.items():
            for m, watch in enumerate(watches):
                (local if m == n else remote).append(watch.first[address] - sent)
    return {"lag_ms_to_each_other_host": spread(remote), "lag_ms_local": spread(local)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--rate", type=int, default=1000, help="bans a second, fleet-wide")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--watch", type=int, default=2, help="hosts whose kernel is watched")
    parser.add_argument("--quick", action="store_true", help="3 hosts, 150 bans/s, 5 s")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.rate, args.seconds = 3, 150, 5
    result = {"benchmark": "fleet sustained load", "machine": machine(),
              **run(args.hosts, args.rate, args.seconds, args.watch)}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
