"""Services revealed by nmap and masscan with the hold off and on, side by side (issue 17).

The protected namespace serves TCP 22, 80, 443, 5432 and 8080 (bench/nmap_scan.py's set-up).
For each mode (`--modes`: stealth with the default trap list, advanced) two daemons run at
once, each in namespaces of its own: one with `[kernel] hold = "0"` and one with
`hold = "--hold"`; the scans alternate between them (hold off, hold on, off, on ...), so that
both see the same machine. Every scan comes from a fresh attacker address (192.0.2.10, .11 ...;
2001:db8:1::a ... with `--family 6`): a released or banned source would skew it. The scans
(`--kinds`, with their default number of runs):

    nmap-T4          nmap -sS, nmap's default 1,000 ports, -T4 (10)
    nmap-T5          the same at -T5 (10)
    nmap-T4-routed   nmap-T4 with the host discovery nmap uses for a target behind a router
                     (--disable-arp-ping: ICMP echo, a SYN to 443, an ACK to 80, ICMP
                     timestamp), where the scan is on the attacker's link here (10)
    nmap-popular     nmap -sS -p 21,22,23,25,80,110,443,3389,5432,8080 -T4: 10 popular
                     ports, 5 of them served (10)
    nmap-all         nmap -sS -p- -T4 (3)
    masscan-1k       masscan -p1-65535 --rate 1000 (5)
    masscan-10k      masscan -p1-65535 --rate 10000 (5)

nmap runs as bench/nmap_scan.py runs it (`nmap -sS ... --max-retries 1 --min-rate 5000
--host-timeout 120s -n -oX - -S SOURCE -e DEV`, nmap's own random port order). masscan sends
from its own packet stack: `--adapter DEV --adapter-ip SOURCE --router-mac MAC` (the protected
side's veth, which is on-link), `--wait 2`, a random `--seed` (recorded). `--control` adds a
set of namespaces where porttrap does not run: every scan must find all 5 services there.

A capture on the protected side's veth tells what was revealed: the services that sent a
SYN-ACK to the scanner (whether or not the scanner then reported them). For each, why: how long
its SYN waited before the SYN-ACK (about the hold when held and let through, about 0 when not
held), and when the scanner's first trap probe arrived, counted from that SYN. porttrap's record
of each scanner: its hits by outcome ("hidden": a SYN the hold dropped), whether it was banned,
and what `status`'s "hold" counted during the scan. Run as root:

    .venv/bin/python bench/hold_scan.py [--kinds nmap-T4,...] [--runs N] [--modes stealth,advanced]
        [--hold 5ms] [--family 4] [--control] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import subprocess  # noqa: TID251 - bench helper
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import EventLog, Steal, environment, json_log, log_problems, machine, report
from daemon_env import SRV4, SRV6, Env
from frames import ACK, SYN, Seen, device_of, mac_of, sender
from nmap_scan import (
    CONFIGS,
    add_source,
    captured,
    is_trap,
    nmap,
    nmap_result,
    porttrap_record,
    probe_order,
)
from scans import SERVICES, start_services

from porttrap.config.fields import hold_time


@dataclass(frozen=True)
class Kind:
    tool: str  # "nmap" | "masscan"
    runs: int
    ports: str = ""  # nmap -p ("": its default 1,000; "-": all)
    timing: int = 4
    discovery: str = "arp"
    rate: int = 0  # masscan --rate


POPULAR_10 = "21,22,23,25,80,110,443,3389,5432,8080"
KINDS = {
    "nmap-T4": Kind("nmap", 10),
    "nmap-T5": Kind("nmap", 10, timing=5),
    "nmap-T4-routed": Kind("nmap", 10, discovery="ip"),
    "nmap-popular": Kind("nmap", 10, ports=POPULAR_10),
    "nmap-all": Kind("nmap", 3, ports="-"),
    "masscan-1k": Kind("masscan", 5, rate=1000),
    "masscan-10k": Kind("masscan", 5, rate=10_000),
}
DISCOVERED = re.compile(r"Discovered open port (\d+)/tcp")


@dataclass
class Setup:
    """One daemon (or none: the control) in namespaces of its own, and its scanners so far."""

    mode: str
    hold: float
    env: Env
    events: EventLog | None
    scanned: int = 0
    last_hold: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the daemon's log, but info lines

    @property
    def label(self) -> str:
        if self.events is None:
            return "no porttrap"
        return f"{self.mode}, hold {'off' if not self.hold else f'{self.hold * 1000:g} ms'}"

    def source(self, args: argparse.Namespace) -> str:
        index = args.first + self.scanned
        self.scanned += 1
        return f"2001:db8:1::{index:x}" if args.family == 6 else f"192.0.2.{index}"


def config(mode: str, hold: float, log: Path) -> str:
    return f'{CONFIGS[mode]}[kernel]\nhold = "{hold * 1000:g}ms"\n\n{json_log(log)}'


@contextlib.contextmanager
def setups(args: argparse.Namespace) -> Iterator[list[Setup]]:
    """Every (mode, hold) daemon, started; and the control (no daemon) with `--control`."""
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="porttrap-bench-")))
        made: list[Setup] = []
        if args.control:
            env = stack.enter_context(environment(""))
            made.append(Setup("control", 0.0, env, None))
        for mode in args.modes.split(","):
            for hold in (0.0, args.hold):
                log = logs / f"{mode}-{hold}.json"
                env = stack.enter_context(environment(config(mode, hold, log)))
                made.append(Setup(mode, hold, env, EventLog(log)))
        for setup in made:
            start_services(setup.env)
            if setup.events is not None:
                setup.env.start()
                setup.last_hold = hold_status(setup.env)
        yield made
        for setup in made:
            if setup.events is not None:
                setup.env.stop()
                setup.problems = log_problems(setup.env.log_text())


def hold_status(env: Env) -> dict[str, Any]:
    return dict(env.json("status").get("hold") or {})


def masscan(env: Env, source: str, device: str, target: str, *, rate: int, seed: int) -> str:
    """Every TCP port at `rate` packets a second from masscan's own stack; its output.

    masscan 1.3.2's receive thread blocks in libpcap until a frame arrives, so after its
    `--wait` it may wait for ever ("waiting -N-secs"): once it should be done, a frame that
    nothing answers (an unused ethertype) goes out of its interface every 0.2 s."""
    srv_mac = mac_of(env.srv, device_of(env.srv, target))
    argv = ["masscan", "-p1-65535", "--rate", str(rate), "--wait", "2", "--seed", str(seed),
            "--adapter", device, "--adapter-ip", source, "--router-mac", srv_mac.hex(":"),
            target]  # fmt: skip
    process = env.atk.start(argv)
    due = time.perf_counter() + 65535 / rate + 3
    nudge = srv_mac + mac_of(env.atk, device) + bytes.fromhex("88b5") + bytes(46)
    with sender(env.atk, device) as sock:
        while True:
            try:
                output, _ = process.communicate(timeout=0.2)
            except subprocess.TimeoutExpired:
                if time.perf_counter() > due + 60:
                    process.kill()
                    raise RuntimeError(
                        f"{' '.join(argv)}: still running 60 s after its end"
                    ) from None
                if time.perf_counter() > due:
                    sock.send(nudge)
                continue
            break
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit status {process.returncode}")
    return output


def one_scan(setup: Setup, name: str, args: argparse.Namespace) -> dict[str, Any]:
    kind, env = KINDS[name], setup.env
    source = setup.source(args)
    target = SRV6 if args.family == 6 else SRV4
    device = add_source(env, source)
    seed = random.randrange(2**32)
    if kind.tool == "masscan":
        output, frames, wall = captured(
            env, target, lambda: masscan(env, source, device, target, rate=kind.rate, seed=seed)
        )
        reported = sorted({int(p) for p in DISCOVERED.findall(output)})
    else:
        nmap_args = argparse.Namespace(
            scan="sS", ports=kind.ports, timing=kind.timing, host_timeout=args.host_timeout,
            min_rate=args.min_rate, family=args.family,
        )  # fmt: skip
        output, frames, wall = captured(
            env,
            target,
            lambda: nmap(env, source, device, target, discovery=kind.discovery, args=nmap_args),
        )
        reported = nmap_result(output).get("open", [])
    order = probe_order(frames, source, setup.mode) if setup.events is not None else {}
    found: dict[str, Any] = {
        "kind": name,
        "setup": setup.label,
        "mode": setup.mode,
        "hold_ms": setup.hold * 1000,
        "source": source,
        "seed": seed if kind.tool == "masscan" else None,
        "wall_s": round(wall, 1),
        "reported_open": [p for p in SERVICES if p in reported],
        "other_reported_open": len([p for p in reported if p not in SERVICES]),
        "answered": answered(frames, source),
        "why": [why(frames, source, setup, port) for port in answered(frames, source)],
        "order": order,
    }
    if setup.events is not None:
        found["porttrap"] = porttrap_record(env, source)
        now = hold_status(env)
        found["hold_counted"] = delta(setup.last_hold, now)
        setup.last_hold = now
    return found


def answered(frames: list[Seen], source: str) -> list[int]:
    """The services that sent the scanner a SYN-ACK: revealed, whatever the scanner made of it."""
    return sorted({s.sport for s in synacks(frames, source) if s.sport in SERVICES})


def synacks(frames: list[Seen], source: str) -> list[Seen]:
    both = SYN | ACK
    return [s for s in frames if s.outgoing and s.target == source and s.flags & both == both]


def syns(frames: list[Seen], source: str) -> list[Seen]:
    return [s for s in frames if not s.outgoing and s.source == source and s.flags & 0x3F == SYN]


def why(frames: list[Seen], source: str, setup: Setup, port: int) -> dict[str, Any]:
    """Why `port` was revealed: how long the SYN it answered waited, and when the scanner's
    first trap probe came, counted from the first SYN to `port` (milliseconds)."""
    answers = synacks(frames, source)
    answer = next(s for s in answers if s.sport == port)
    probes = syns(frames, source)
    asked = [s for s in probes if s.dport == port and s.sport == answer.dport and s.at <= answer.at]
    first = next(s for s in probes if s.dport == port)
    trap = next((s for s in probes if is_trap(setup.mode, s.dport)), None)
    waited = (answer.at - asked[-1].at) / 1e6 if asked else None
    trap_after = None if trap is None else (trap.at - first.at) / 1e6
    # the first SYN-ACK after a wait as long as the hold: the source was released then
    hold_ns = setup.hold * 1e9
    released = next((a for a in answers if hold_ns and waited_ns(a, probes) >= hold_ns / 2), None)
    return {
        "port": port,
        "waited_ms": None if waited is None else round(waited, 2),
        "first_trap_after_ms": None if trap_after is None else round(trap_after, 2),
        "probe_number": 1 + probes.index(first),
        "reason": reason(setup, waited, trap_after),
        "released_by": None if released is None or released.sport == port else released.sport,
    }


def waited_ns(answer: Seen, probes: list[Seen]) -> float:
    """How long the SYN that `answer` answers waited for it (0 when not captured)."""
    asked = [s for s in probes if s.dport == answer.sport and s.sport == answer.dport]
    asked = [s for s in asked if s.at <= answer.at]
    return answer.at - asked[-1].at if asked else 0.0


def reason(setup: Setup, waited: float | None, trap_after: float | None) -> str:
    hold = setup.hold * 1000
    if setup.events is None:
        return "no porttrap"
    if not hold:
        return "hold off"
    if waited is not None and waited < hold / 2:
        return "not held (released, known, or passed unheld: see released_by, hold_counted)"
    if trap_after is None:
        return "held, and no trap probe at all"
    if trap_after > hold:
        return "held, and the first trap probe came after the hold"
    return "held, a trap probe within the hold, let through all the same"


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The counters of `status`'s "hold" that changed during a scan."""
    return {
        key: value - before.get(key, 0)
        for key, value in after.items()
        if isinstance(value, int) and value != before.get(key, 0)
    }


def run_kind(made: list[Setup], name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    found = []
    for _ in range(args.runs or KINDS[name].runs):
        for setup in made:
            found.append(one_scan(setup, name, args))
            print(json.dumps(brief(found[-1])), flush=True)
    return found


def brief(scan: dict[str, Any]) -> dict[str, Any]:
    record = scan.get("porttrap", {})
    return {
        "kind": scan["kind"],
        "setup": scan["setup"],
        "source": scan["source"],
        "wall_s": scan["wall_s"],
        "revealed": scan["answered"],
        "reported_open": scan["reported_open"],
        "why": [
            (w["port"], w["reason"], w["waited_ms"], w["first_trap_after_ms"], w["released_by"])
            for w in scan["why"]
        ],
        "first_trap": scan["order"].get("first_trap"),
        "hits": record.get("hit_outcomes"),
        "banned": bool(record.get("bans")),
        "hold_counted": scan.get("hold_counted"),
    }


def table(scans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind of scan and set-up: the services revealed in each run."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for scan in scans:
        rows.setdefault((scan["kind"], scan["setup"]), []).append(scan)
    return [
        {
            "kind": kind,
            "setup": label,
            "revealed_each_run": [len(s["answered"]) for s in group],
            "runs_revealing_none": sum(not s["answered"] for s in group),
            "runs": len(group),
            "reported_open_each_run": [len(s["reported_open"]) for s in group],
            "hidden_probes": sum(
                s.get("porttrap", {}).get("hit_outcomes", {}).get("hidden", 0) for s in group
            ),
            "reasons": sorted({w["reason"] for s in group for w in s["why"]}),
            "scan_s": [min(s["wall_s"] for s in group), max(s["wall_s"] for s in group)],
        }
        for (kind, label), group in rows.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--runs", type=int, default=0, help="of each kind; 0: its default")
    parser.add_argument("--modes", default="stealth,advanced")
    parser.add_argument("--hold", type=hold_time, default=0.005, help='e.g. "5ms"')
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    parser.add_argument("--control", action="store_true", help="add a host without porttrap")
    parser.add_argument("--min-rate", type=int, default=5000, help="nmap --min-rate; 0: none")
    parser.add_argument("--host-timeout", type=int, default=120, help="nmap, seconds")
    parser.add_argument("--first", type=int, default=10, help="the first scanner's address")
    parser.add_argument("--out", type=Path, help="write every scan's JSON to this file")
    args = parser.parse_args()
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    scans: list[dict[str, Any]] = []
    with Steal() as steal, setups(args) as made:
        for name in args.kinds.split(","):
            scans += run_kind(made, name, args)
    summary = {
        "benchmark": "services revealed (of 5), hold off and on",
        "family": args.family,
        **machine(),
        "cpu_steal_percent": steal.percent,
        "table": table(scans),
        "hold_status_end": {s.label: s.last_hold for s in made if s.events},
        "daemon_log_problems": {s.label: s.problems[:10] for s in made if s.events},
    }
    report(summary, scans, args.out)


if __name__ == "__main__":
    main()
