"""What the hold adds to a connection: a new client's first one, and a known client's (issue 17).

Two daemons run at once in namespaces of their own (advanced mode by default): one with
`[kernel] hold = "0"`, one with `hold = "--hold"`; each serves TCP 8080. Every new client is a
fresh source address (`--clients` of them: 198.51.100.10-250 on the client's veth, then
192.0.2.10-250 on the attacker's), added beforehand. In turns, hold off and hold on (which
goes first alternates), each new client opens:

    first   its first connection: held for the hold with hold on (a source the kernel does
            not know), then let through and released
    again   a second connection at once: a released source (and a recent client), not held
    known   and the host's long-standing client (198.51.100.2, which used the service
            before) connects: never held

Each is timed twice: `connect()` in the client (a blocking connect returns at the SYN-ACK; the
time includes Python's socket calls), and, from a capture on the protected side's veths, the
kernel's receive time of the SYN to the departure of the SYN-ACK. What hold on adds is its
figure minus hold off's, at the same percentile. Run as root:

    .venv/bin/python bench/hold_latency.py [--clients 400] [--hold 5ms] [--mode advanced]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Steal, add_addresses, environment, log_problems, machine, percentiles
from daemon_env import ATK4, CLIENT, SERVICE_PORT, SRV4, SRV_CLI, Env, open_socket, tcp_works
from frames import ACK, SYN, Capture, device_of
from hold_scan import config

from porttrap.config.fields import hold_time

KINDS = ("first", "again", "known")


@dataclass
class Setup:
    hold: float
    env: Env
    captures: list[Capture] = field(default_factory=list)
    connect_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    wire: dict[tuple[str, int], str] = field(default_factory=dict)  # (source, port) -> kind
    failures: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    hold_status: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"hold {self.hold * 1000:g} ms" if self.hold else "hold off"


def sources(count: int) -> list[str]:
    near = [f"198.51.100.{n}" for n in range(10, 251)]
    far = [f"192.0.2.{n}" for n in range(10, 251)]
    if count > len(near) + len(far):
        raise SystemExit(f"--clients: at most {len(near) + len(far)}")
    return (near + far)[:count]


@contextlib.contextmanager
def setups(args: argparse.Namespace) -> Iterator[list[Setup]]:
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="porttrap-bench-")))
        made = []
        for hold in (0.0, args.hold):
            env = stack.enter_context(environment(config(args.mode, hold, logs / f"{hold}.json")))
            made.append(Setup(hold, env))
        for setup in made:
            prepare(setup, args)
        yield made
        for setup in made:
            setup.hold_status = dict(setup.env.json("status").get("hold") or {})
            setup.env.stop()
            setup.problems = log_problems(setup.env.log_text())
            for capture in setup.captures:
                capture.close()


def prepare(setup: Setup, args: argparse.Namespace) -> None:
    env = setup.env
    near = device_of(env.cli, CLIENT)
    add_addresses(env.cli, {4: near}, [s for s in sources(args.clients) if "198.51" in s])
    add_addresses(env.atk, {4: device_of(env.atk, ATK4)},
                  [s for s in sources(args.clients) if "192.0.2" in s])  # fmt: skip
    env.start()
    assert tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT), "the known client used it before"
    setup.captures = [Capture(env.srv, device_of(env.srv, a)) for a in (SRV_CLI, SRV4)]


def connect(setup: Setup, source: str, kind: str) -> None:
    """One connection from `source`, timed from `connect()` to its return (the SYN-ACK)."""
    env = setup.env
    near = source.startswith("198.51.100.")
    with open_socket(env.cli if near else env.atk, source, socket.SOCK_STREAM) as sock:
        sock.settimeout(3.0)
        setup.wire[(source, sock.getsockname()[1])] = kind
        started = time.perf_counter()
        try:
            sock.connect((SRV_CLI if near else SRV4, SERVICE_PORT))
        except OSError as err:
            setup.failures.append({"source": source, "kind": kind, "error": repr(err)})
            return
        setup.connect_ms[kind].append((time.perf_counter() - started) * 1000)


def on_the_wire(setup: Setup) -> dict[str, list[float]]:
    """SYN in -> SYN-ACK out on the protected side's veths (kernel timestamps), in ms, by
    kind of connection."""
    syn: dict[tuple[str, int], int] = {}
    found: dict[str, list[float]] = {k: [] for k in KINDS}
    for capture in setup.captures:
        for seen in capture.drain():
            if not seen.outgoing and seen.flags & 0x3F == SYN:
                syn.setdefault((seen.source, seen.sport), seen.at)
            elif seen.outgoing and seen.flags & (SYN | ACK) == SYN | ACK:
                key = (seen.target, seen.dport)
                if key in syn and key in setup.wire:
                    found[setup.wire[key]].append((seen.at - syn.pop(key)) / 1e6)
    return found


def run(made: list[Setup], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    wire: dict[str, dict[str, list[float]]] = {s.label: {k: [] for k in KINDS} for s in made}
    for n, source in enumerate(sources(args.clients)):
        for setup in made if n % 2 else reversed(made):
            connect(setup, source, "first")
            connect(setup, source, "again")
            connect(setup, CLIENT, "known")
        if n % 50 == 49:  # keep the captures' buffers small
            for setup in made:
                for kind, values in on_the_wire(setup).items():
                    wire[setup.label][kind] += values
    for setup in made:
        for kind, values in on_the_wire(setup).items():
            wire[setup.label][kind] += values
    return wire


def figures(samples: list[float], hold: float) -> dict[str, float]:
    """Percentiles (ms), and how many samples took longer than the goal: the hold + 1 ms."""
    if not samples:
        return {}
    found = {k: round(v, 3) for k, v in percentiles(samples).items()}
    return {**found, "over_hold_plus_1ms": sum(x > hold * 1000 + 1 for x in samples)}


def added(table: dict[str, dict[str, dict[str, float]]], off: str, on: str) -> dict[str, Any]:
    """Hold on minus hold off, at p50 and p99, by kind (ms)."""
    return {
        kind: {q: round(table[on][kind][q] - table[off][kind][q], 3) for q in ("p50", "p99")}
        for kind in KINDS
        if table[on][kind] and table[off][kind]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=400, help="fresh sources, at most 482")
    parser.add_argument("--hold", type=hold_time, default=0.005, help='e.g. "5ms"')
    parser.add_argument("--mode", choices=("stealth", "advanced"), default="advanced")
    args = parser.parse_args()
    with Steal() as steal, setups(args) as made:
        started = time.perf_counter()
        wire = run(made, args)
        took = time.perf_counter() - started
    off, on = made[0].label, made[1].label
    connect_table = {
        s.label: {k: figures(v, s.hold) for k, v in s.connect_ms.items()} for s in made
    }
    wire_table = {s.label: {k: figures(v, s.hold) for k, v in wire[s.label].items()} for s in made}
    print(
        json.dumps(
            {
                "benchmark": "latency the hold adds to new and known clients",
                "mode": args.mode,
                "clients": args.clients,
                **machine(),
                "cpu_steal_percent": steal.percent,
                "run_s": round(took, 1),
                "connect_ms": connect_table,
                "syn_to_syn_ack_ms": wire_table,
                "added_connect_ms": added(connect_table, off, on),
                "added_syn_to_syn_ack_ms": added(wire_table, off, on),
                "failures": {s.label: s.failures[:20] for s in made},
                "hold_status_end": {s.label: s.hold_status for s in made},
                "daemon_log_problems": {s.label: s.problems[:10] for s in made},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
