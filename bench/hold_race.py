"""A SYN to a served port, then a trap probe from the same source: how soon must the trap probe
follow for the hold to hide the service? (issue 17)

For each hold (`--holds`) a daemon in advanced mode (fresh namespaces each); for each gap
(`--gaps`, milliseconds) `--trials` fresh sources (2001:db8:f::/64, or 203.0.113.0/24 with
`--family 4`, routed to the attacker, where answers die), each sending a SYN to the service
(8080) and, the gap later, a SYN to a trap port (31337), two hand-built frames sent on the
attacker's veth by one process (bench/first_packet.py's sending path). A capture on the
protected side's veth gives the true gap between the two arrivals and whether the service sent
a SYN-ACK: hidden when it did not. The cells are shuffled so that bursts of CPU steal fall on
all of them alike. Run as root:

    .venv/bin/python bench/hold_race.py [--holds 5ms,10ms,15ms,20ms] [--gaps 0.1,1,3]
        [--trials 10] [--family 6]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Steal, environment, log_problems, machine, percentiles
from daemon_env import SERVICE_PORT, Env
from first_packet import FORGED, attack_path, sources, spin_until
from frames import ACK, SYN, Seen, device_of, mac_of, tcp_frame
from hold_scan import config

from porttrap.config.fields import hold_time

TRAP = 31337  # a trap in stealth mode's default list and in advanced mode


def trial(sock: Any, macs: tuple[bytes, bytes], source: str, target: str, gap: float) -> None:
    service = tcp_frame(macs, source, target, (40000, SERVICE_PORT))
    trap = tcp_frame(macs, source, target, (40001, TRAP))
    sock.send(service)
    spin_until(time.perf_counter() + gap / 1000)
    sock.send(trap)


def outcome(frames: list[Seen], source: str) -> dict[str, Any]:
    """The arrival gap (ms) and whether the service answered."""
    mine = [f for f in frames if source in (f.source, f.target)]
    syn = next((f for f in mine if not f.outgoing and f.dport == SERVICE_PORT), None)
    trap = next((f for f in mine if not f.outgoing and f.dport == TRAP), None)
    answered = any(f.outgoing and f.flags & (SYN | ACK) == SYN | ACK for f in mine)
    gap = None if syn is None or trap is None else (trap.at - syn.at) / 1e6
    return {"gap_ms": gap, "answered": answered}


def run_hold(hold: float, args: argparse.Namespace) -> list[dict[str, Any]]:
    cells = [gap for gap in args.gaps for _ in range(args.trials)]
    random.shuffle(cells)
    found = []
    with (
        tempfile.TemporaryDirectory(prefix="porttrap-bench-") as logs,
        environment(config("advanced", hold, Path(logs) / "events.json")) as env,
    ):
        env.start()
        with attack_path(env, args.family) as (sock, capture, target):
            macs = macs_of(env, args.family, target)
            for gap, source in zip(cells, sources(args.family, len(cells)), strict=True):
                trial(sock, macs, source, target, gap)
                time.sleep(hold + 0.05)
                found.append({"gap_asked_ms": gap, **outcome(list(capture.drain()), source)})
        status = env.json("status")["hold"]
        env.stop()
        problems = log_problems(env.log_text())
    return [{"hold_ms": hold * 1000, "status": status, "log_problems": problems[:5]}, *found]


def macs_of(env: Env, family: int, target: str) -> tuple[bytes, bytes]:
    gateway = FORGED[family][1]
    return mac_of(env.srv, device_of(env.srv, target)), mac_of(env.atk, device_of(env.atk, gateway))


def summary(
    hold_ms: float, trials: list[dict[str, Any]], gaps: list[float]
) -> list[dict[str, Any]]:
    rows = []
    for gap in gaps:
        cell = [t for t in trials if t["gap_asked_ms"] == gap]
        measured = [t["gap_ms"] for t in cell if t["gap_ms"] is not None]
        rows.append(
            {
                "hold_ms": hold_ms,
                "gap_asked_ms": gap,
                "trials": len(cell),
                "hidden": sum(not t["answered"] for t in cell),
                "arrival_gap_ms": {k: round(v, 2) for k, v in percentiles(measured).items()}
                if len(measured) > 1
                else None,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", default="5ms,10ms,15ms,20ms")
    parser.add_argument("--gaps", default="0.1,1,3", help="milliseconds")
    parser.add_argument("--trials", type=int, default=10, help="per hold and gap")
    parser.add_argument("--family", type=int, choices=(4, 6), default=6)
    args = parser.parse_args()
    args.gaps = [float(g) for g in args.gaps.split(",")]
    holds = [hold_time(h) for h in args.holds.split(",")]
    rows, statuses = [], {}
    with Steal() as steal:
        for hold in holds:
            head, *trials = run_hold(hold, args)
            statuses[f"{hold * 1000:g} ms"] = head
            rows += summary(hold * 1000, trials, args.gaps)
    print(
        json.dumps(
            {
                "benchmark": "service SYN, then a trap SYN `gap` later: hidden by the hold?",
                "family": args.family,
                **machine(),
                "cpu_steal_percent": steal.percent,
                "cells": rows,
                "hold_status_end": statuses,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
