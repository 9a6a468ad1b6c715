"""First trap packet -> its source dropped, in stealth mode, where the kernel blocks the source
itself (a first-packet block set) without waiting for the daemon.

Each trial uses a source address of its own (2001:db8:f::/64, or 203.0.113.0/24 with
`--family 4`): a SYN to a trap port, then a SYN to the served port from the same source, both
hand-built frames sent on the attacker's veth. The source counts as dropped in time when the
service SYN got no SYN-ACK. A capture on the protected side's veth gives the true gap between
the two arrivals (kernel receive timestamps, taken when each frame enters the namespace).

Two ways of sending, because a veth processes a frame on the CPU that sends it, inside the
sending call (as a NIC queue would on the CPU of its interrupt):
- same-cpu: one process sends both frames, `--gaps` apart (0: back to back). The trap frame has
  gone through the whole input path before the second one is sent.
- two-cpus: two processes pinned to different CPUs send one frame each, the service frame
  `--race-gaps` after the trap frame: the two frames race through the kernel on two CPUs, as
  two frames of a scanner can when a NIC spreads them over its queues. The fraction blocked at
  a given arrival gap is then the share of trials whose latency (trap frame's arrival -> its
  source visible in the block set) was below that gap: its distribution, read at p50 and p99.
  Steal and preemption scatter the gaps actually achieved: trials are binned by the gap
  measured, not the one asked for.

`--no-block` is the control: with `[kernel] block = false` no trial may count as blocked.
`--trials` is per mode and gap; the cells are shuffled, so that bursts of steal fall on all of
them alike. Run as root:

    .venv/bin/python bench/first_packet.py [--trials 300] [--family 6] [--no-block]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import mmap
import os
import random
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from common import Steal, environment, log_problems, machine, percentiles
from daemon_env import ATK4, ATK6, SERVICE_PORT, SRV4, SRV6, Env
from frames import ACK, RST, SYN, Capture, Seen, device_of, mac_of, sender, tcp_frame

TRAP = 2323
CONFIG = f'[traps]\nmode = "stealth"\ntcp = ["{TRAP}"]\nudp = []\n'
FORGED = {6: ("2001:db8:f::/64", ATK6, SRV6), 4: ("203.0.113.0/24", ATK4, SRV4)}
LEAD = 0.003  # seconds between announcing a trial to the second sender and its first frame
_CMD = struct.Struct("qqd")  # sequence, frame index, send time (perf_counter)
_DONE = struct.Struct("q")


@dataclass
class Trial:
    mode: str  # "same-cpu" | "two-cpus"
    gap_us: float  # the gap asked for between the two sends
    source: str
    sport: int
    frames: tuple[bytes, bytes, bytes]  # trap SYN, service SYN, RST cleaning up the service's
    seen: list[Seen] = field(default_factory=list)

    def arrival(self, dport: int) -> Seen | None:
        return next((s for s in self.seen if not s.outgoing and s.dport == dport), None)

    @property
    def gap(self) -> float | None:
        """Arrival gap between the trap SYN and the service SYN, in microseconds."""
        trap, service = self.arrival(TRAP), self.arrival(SERVICE_PORT)
        if trap is None or service is None:
            return None
        return (service.at - trap.at) / 1000

    @property
    def blocked(self) -> bool:
        return not any(s.outgoing and s.flags & (SYN | ACK) == SYN | ACK for s in self.seen)


def sources(family: int, count: int) -> list[str]:
    if family == 6:
        return [f"2001:db8:f::{n:x}" for n in range(1, count + 1)]
    if count > 253:
        raise SystemExit("--family 4 has 253 forged sources (203.0.113.1-253): fewer trials")
    return [f"203.0.113.{n}" for n in range(1, count + 1)]


def plan(args: argparse.Namespace, macs: tuple[bytes, bytes], target: str) -> list[Trial]:
    gaps = {"same-cpu": args.gaps}
    if (os.cpu_count() or 1) > 1:
        gaps["two-cpus"] = args.race_gaps
    cells = [(m, g) for m, asked in gaps.items() for g in asked for _ in range(args.trials)]
    random.shuffle(cells)  # steal comes in bursts: spread it over every cell
    trials = []
    for n, ((mode, gap), source) in enumerate(
        zip(cells, sources(args.family, len(cells)), strict=True)
    ):
        sport = 20000 + 2 * (n % 20000)
        frames = (
            tcp_frame(macs, source, target, (sport, TRAP)),
            tcp_frame(macs, source, target, (sport + 1, SERVICE_PORT)),
            tcp_frame(macs, source, target, (sport + 1, SERVICE_PORT), flags=RST, seq=1001),
        )
        trials.append(Trial(mode, gap, source, sport, frames))
    return trials


def spin_until(moment: float) -> None:
    while time.perf_counter() < moment:
        pass


class SecondSender:
    """A child process pinned to CPU 1 that sends the service frame of a trial at the time it
    is told (through shared memory, polled), while this process sends the trap frame on CPU 0."""

    def __init__(self, sock, trials: list[Trial]) -> None:  # type: ignore[no-untyped-def]
        self.shared = mmap.mmap(-1, 64)
        self.seq = 0
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self._serve(sock, [t.frames[1] for t in trials])
            finally:
                os._exit(0)

    def _serve(self, sock, frames: list[bytes]) -> None:  # type: ignore[no-untyped-def]
        os.sched_setaffinity(0, {1})
        done = 0
        while True:
            seq = _DONE.unpack_from(self.shared, 0)[0]
            if seq == done:
                time.sleep(0.0001)
                continue
            if seq < 0:
                return
            _, index, at = _CMD.unpack_from(self.shared, 0)
            spin_until(at)
            sock.send(frames[index])
            done = seq
            _DONE.pack_into(self.shared, _CMD.size, seq)

    def send_at(self, index: int, at: float) -> None:
        self.seq += 1
        self.shared[8 : _CMD.size] = struct.pack("qd", index, at)
        _DONE.pack_into(self.shared, 0, self.seq)  # the sequence last: the child reads it first

    def wait(self, timeout: float = 0.5) -> None:
        deadline = time.perf_counter() + timeout
        while _DONE.unpack_from(self.shared, _CMD.size)[0] != self.seq:
            if time.perf_counter() > deadline:
                raise RuntimeError("the second sender did not send in time")
            time.sleep(0.00005)

    def close(self) -> None:
        _DONE.pack_into(self.shared, 0, -1)
        os.waitpid(self.pid, 0)


def run(trials: list[Trial], sock, capture: Capture) -> None:  # type: ignore[no-untyped-def]
    os.sched_setaffinity(0, {0})
    second = SecondSender(sock, trials) if any(t.mode == "two-cpus" for t in trials) else None
    by_key = {(t.source, t.sport + k): t for t in trials for k in (0, 1)}
    try:
        for index, trial in enumerate(trials):
            start = time.perf_counter() + LEAD
            gap = trial.gap_us / 1e6
            if trial.mode == "two-cpus":
                assert second is not None
                second.send_at(index, start + gap)
            spin_until(start)
            sock.send(trial.frames[0])
            if trial.mode == "same-cpu":
                spin_until(start + gap)
                sock.send(trial.frames[1])
            else:
                assert second is not None
                second.wait()
            time.sleep(0.002)
            sock.send(trial.frames[2])
            collect(capture, by_key)
        time.sleep(0.2)
        collect(capture, by_key)
    finally:
        if second is not None:
            second.close()


def collect(capture: Capture, by_key: dict[tuple[str, int], Trial]) -> None:
    for seen in capture.drain():
        key = (seen.target, seen.dport) if seen.outgoing else (seen.source, seen.sport)
        if (trial := by_key.get(key)) is not None:
            trial.seen.append(seen)


def summary(trials: list[Trial]) -> list[dict[str, object]]:
    return [
        cell_row(trials, mode, gap) for mode, gap in sorted({(t.mode, t.gap_us) for t in trials})
    ]


def cell_row(trials: list[Trial], mode: str, gap: float) -> dict[str, object]:
    cell = [t for t in trials if t.mode == mode and t.gap_us == gap]
    gaps = [t.gap for t in cell if t.gap is not None]
    blocked = sum(t.blocked for t in cell if t.gap is not None)
    row: dict[str, object] = {
        "mode": mode,
        "gap_asked_us": gap,
        "trials": len(cell),
        "not_captured": len(cell) - len(gaps),
        "blocked": blocked,
        "blocked_fraction": round(blocked / max(len(gaps), 1), 4),
    }
    if gaps:
        row["arrival_gap_us"] = {k: round(v, 1) for k, v in percentiles(gaps).items()}
    return row


BINS_US = (-1e9, 0, 2, 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000, 2000, 5000, 1e9)


def latency_bins(trials: list[Trial]) -> list[dict[str, object]]:
    """Two-cpus trials by measured arrival gap: the fraction blocked in each bin estimates the
    share of trials whose latency was under that gap."""
    measured = [(t.gap, t.blocked) for t in trials if t.mode == "two-cpus" and t.gap is not None]
    rows = []
    for low, high in itertools.pairwise(BINS_US):
        inside = [b for g, b in measured if g is not None and low <= g < high]
        if inside:
            rows.append(
                {
                    "gap_us": f"[{_edge(low)}, {_edge(high)})",
                    "trials": len(inside),
                    "blocked_fraction": round(sum(inside) / len(inside), 4),
                }
            )
    return rows


def _edge(value: float) -> str:
    return "-inf" if value < -1e8 else "inf" if value > 1e8 else f"{value:g}"


def bound(trials: list[Trial], share: float) -> str:
    """The arrival gap from which at least `share` of the two-cpus trials were blocked in every
    bin: an upper bound of that quantile of the latency, at the bins' resolution."""
    rows = latency_bins(trials)
    for n, row in enumerate(rows):
        if all(float(str(r["blocked_fraction"])) >= share for r in rows[n:]):
            low, high = str(row["gap_us"]).strip("[)").split(", ")
            return f"> {low} us (only the last bin)" if high == "inf" else f"<= {high} us"
    return "not reached"


@contextlib.contextmanager
def attack_path(env: Env, family: int) -> Iterator[tuple[object, Capture, str]]:
    """Replies to the forged range go back to the attacker's veth, where they die (it does not
    forward); the sending socket on that veth; a capture on the protected side's veth."""
    forged, gateway, target = FORGED[family]
    env.srv.run(["ip", f"-{family}", "route", "add", forged, "via", gateway])
    atk_dev, srv_dev = device_of(env.atk, gateway), device_of(env.srv, target)
    sock = sender(env.atk, atk_dev)
    capture = Capture(env.srv, srv_dev)
    try:
        yield sock, capture, target
    finally:
        sock.close()
        capture.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300, help="per mode and gap")
    parser.add_argument("--gaps", default="0,20,100,1000", help="same-cpu, microseconds")
    parser.add_argument(
        "--race-gaps", default="0,10,20,50,100,200,500,1000", help="two-cpus, microseconds"
    )
    parser.add_argument("--family", type=int, choices=(4, 6), default=6)
    parser.add_argument(
        "--no-block",
        action="store_true",
        help="control run: [kernel] block = false, so nothing may be blocked",
    )
    args = parser.parse_args()
    args.gaps = [float(g) for g in args.gaps.split(",")]
    args.race_gaps = [float(g) for g in args.race_gaps.split(",")]
    config = CONFIG + ("[kernel]\nblock = false\n" if args.no_block else "")
    with environment(config) as env:
        env.start()
        with attack_path(env, args.family) as (sock, capture, target):
            macs = (
                mac_of(env.srv, device_of(env.srv, target)),
                mac_of(env.atk, device_of(env.atk, FORGED[args.family][1])),
            )
            trials = plan(args, macs, target)
            with Steal() as steal:
                run(trials, sock, capture)
        status = env.json("status")["kernel"]
        env.stop()
        problems = log_problems(env.log_text())
    result = {
        "benchmark": "first trap packet -> source dropped (kernel first-packet block)",
        "family": args.family,
        "block": not args.no_block,
        **machine(),
        "cpu_steal_percent": steal.percent,
        "cells": summary(trials),
        "two_cpus_by_arrival_gap": latency_bins(trials),
        "latency_bound_us": {"p50": bound(trials, 0.5), "p99": bound(trials, 0.99)},
        "unblocked_after_20us": sorted(
            round(t.gap, 1) for t in trials if t.gap is not None and t.gap > 20 and not t.blocked
        ),
        "kernel_events": status["events"],
        "daemon_log_problems": problems,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
