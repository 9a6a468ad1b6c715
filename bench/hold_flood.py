"""A forged SYN flood to a real port with the hold off and on (issue 17): do real clients still
connect, how long do they wait, what does it cost the daemon, and how much passes unheld?

`--rate` SYNs a second (50,000) for `--seconds` (10), bounded in count and time, to the served
port 8080 (IPv6), each from a random source of its own in 2001:db8:8000::/33 (documentation
space): every one is a source the kernel does not know, the hold's worst case. The frames are
built before the flood and sent on the attacker's veth (bench/flood.py's sender). One run with
`[kernel] hold = "0"`, then one with `hold = "--hold"` (advanced mode by default), in fresh
namespaces each. Meanwhile:
- the known client (198.51.100.2, which used the service before) connects every 50 ms;
- a new client connects every 50 ms, each from a fresh source (198.51.100.10-250 on the client
  namespace's veth): held, unless the kernel's `hold_rate` limit lets its SYN through unheld;
- every second the daemon's CPU (% of one core, from /proc/PID/stat through psutil) and RSS;
  every 2 s `porttrap status` ("hold": queued, let through, over_rate, idle, failed_open ...).
Both clients start 1 s before the flood and stop `AFTER` seconds after it; their figures count
from the flood's start. At the end: the kernel's counters (held, hold_over, hold_idle) and the
protected namespace's TCP counters (SYN cookies, listen queue overflows). Run as root:

    .venv/bin/python bench/hold_flood.py [--rate 50000] [--seconds 10] [--hold 5ms]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import socket
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from common import (
    Steal,
    add_addresses,
    environment,
    kernel_mib,
    log_problems,
    machine,
    report,
)
from daemon_env import CLIENT, SERVICE_PORT, SRV6, SRV_CLI, Env, open_socket, tcp_works
from flood import (
    Monitor,
    Scanner,
    client,
    client_summary,
    flood,
    kernel_counters,
    random_ports,
    random_sources,
    timed,
)
from forged_flood import add_routes, mib_delta
from frames import device_of, forged, sender
from hold_scan import config

from porttrap.config.fields import hold_time

NEW_CLIENTS = [f"198.51.100.{n}" for n in range(10, 251)]
EVERY = 0.05  # seconds between a client's connections
AFTER = 3.0  # seconds the clients go on after the flood


def new_clients(env: Env, stop: Any, out: Connection) -> None:
    """A connection every EVERY seconds, each from a fresh source, until told to stop or out
    of sources: (start, ms, error or "")."""
    attempts: list[tuple[float, float, str]] = []
    for source in NEW_CLIENTS:
        if stop.is_set():
            break
        attempts.append(timed(functools.partial(first_connection, env, source)))
        time.sleep(max(0.0, EVERY - attempts[-1][1] / 1000))
    out.send(attempts)


def first_connection(env: Env, source: str) -> str:
    with open_socket(env.cli, source, socket.SOCK_STREAM) as sock:
        sock.settimeout(3.0)
        sock.connect((SRV_CLI, SERVICE_PORT))
    return ""


class Watch(Monitor):
    """flood.Monitor, keeping `status`'s "hold" and the kernel sensor's events."""

    def from_status(self, status: dict[str, Any]) -> dict[str, Any]:
        kernel = status["kernel"] or {}
        return {"hold": status.get("hold"), "kernel_events": kernel.get("events")}


def one(args: argparse.Namespace, hold: float) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="porttrap-bench-") as logs,
        environment(config(args.mode, hold, Path(logs) / "events.json")) as env,
    ):
        env.start()
        with Steal() as steal:
            result = run(env, args)
        result["status_end"] = env.json("status").get("hold")
        env.stop()
        result["daemon_log_problems"] = log_problems(env.log_text())[:20]
    result["cpu_steal_percent"] = steal.percent
    return {"hold_ms": hold * 1000, "summary": summary(result, args), **result}


def run(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    scanners = Scanner(env)
    add_routes(env)
    add_addresses(env.cli, {4: device_of(env.cli, CLIENT)}, NEW_CLIENTS)
    count = args.rate * args.seconds
    built = time.perf_counter()
    frames = forged(scanners.macs[6], SRV6, random_sources(count),
                    random_ports(count, [SERVICE_PORT]))  # fmt: skip
    result: dict[str, Any] = {"pool_build_s": round(time.perf_counter() - built, 1)}
    assert tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT), "the client uses the service first"
    mib_before = kernel_mib(env.srv)
    fork = multiprocessing.get_context("fork")
    stop = fork.Event()
    pipes = {name: fork.Pipe(duplex=False) for name in ("known", "new", "flood")}
    users = [
        fork.Process(target=client, args=(env, stop, pipes["known"][1])),
        fork.Process(target=new_clients, args=(env, stop, pipes["new"][1])),
    ]
    for user in users:
        user.start()
    time.sleep(1.0)
    sock = sender(env.atk, scanners.devices[6])
    flooder = fork.Process(
        target=flood, args=(sock, frames, args.rate, args.seconds, pipes["flood"][1])
    )
    monitor = Watch(env)
    flooder.start()
    monitor.start()
    del frames  # the child has its copy
    result["flood"] = pipes["flood"][0].recv()
    flooder.join()
    time.sleep(AFTER)
    monitor.stop()
    stop.set()
    for name in ("known", "new"):
        attempts = pipes[name][0].recv()
        result[f"{name}_client"] = client_summary(attempts, monitor.started)
        result[f"{name}_client_each"] = [  # seconds from the flood's start, ms, error
            (round(at - monitor.started, 3), round(ms, 3), error) for at, ms, error in attempts
        ]
    for user in users:
        user.join()
    result["daemon"] = monitor.samples
    result["status"] = monitor.statuses
    result["kernel_counters"] = kernel_counters(env)
    result["kernel_mib"] = mib_delta(mib_before, kernel_mib(env.srv))
    return result


def summary(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the table in BENCHMARKS.md."""
    during = [s for s in result["daemon"] if s["t"] <= args.seconds + 0.5]
    sent = result["flood"]
    return {
        "rate_achieved": round(sent["sent"] / sent["elapsed_s"]),
        "cpu_percent_flood_mean": round(statistics.fmean(s["cpu_percent"] for s in during), 1),
        "cpu_percent_max": max(s["cpu_percent"] for s in result["daemon"]),
        "rss_mib_max": max(s["rss_mib"] for s in result["daemon"]),
        **{
            f"{name}_client": {
                "attempts": result[f"{name}_client"]["attempts_from_flood_start"],
                "failures": len(result[f"{name}_client"]["failures"]),
                "connect_ms": result[f"{name}_client"]["connect_ms"],
            }
            for name in ("known", "new")
        },
        "hold": result["status_end"],
        "kernel_counters": {
            k: v for k, v in result["kernel_counters"].items() if k.startswith(("held", "hold"))
        },
        "kernel_mib": {k: v for k, v in result["kernel_mib"].items() if v},
        "cpu_steal_percent": result["cpu_steal_percent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=50_000, help="SYNs a second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--hold", type=hold_time, default=0.005, help='e.g. "5ms"')
    parser.add_argument("--mode", choices=("stealth", "advanced"), default="advanced")
    parser.add_argument("--out", type=Path, help="also write the whole result here (JSON)")
    args = parser.parse_args()
    runs = [one(args, hold) for hold in (0.0, args.hold)]
    summary = {
        "benchmark": "forged SYN flood to a served port, hold off and on",
        "rate_asked": args.rate,
        "seconds_asked": args.seconds,
        "mode": args.mode,
        **machine(),
        "runs": [{"hold_ms": r["hold_ms"], **r["summary"]} for r in runs],
    }
    report(summary, runs, args.out)


if __name__ == "__main__":
    main()
