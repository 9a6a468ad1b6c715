"""A real nmap SYN scan of every TCP port of a protected host serving 5 services, with porttrap
in connect, stealth and advanced mode: which services does nmap find, and what does porttrap
record?

The protected namespace serves TCP 22, 80, 443, 5432 and 8080 (tiny Python listeners, IPv4 and
IPv6). porttrap runs with the default trap list (connect, stealth) or in advanced mode. From the
attacker's namespace, each scan comes from a fresh address (192.0.2.10, .11 ...; 2001:db8:1::10
... with `--family 6`):

    nmap -sS -p- -T4 --max-retries 1 --min-rate 5000 --host-timeout 120s -n -oX -
         -S SOURCE -e DEV [-Pn | --disable-arp-ping] TARGET

nmap's port order is its default random one (no -r), with its "popular" ports moved to the
front (random_port_cheat, below). `--min-rate` keeps a scan of a host that drops everything
within the time limit: without it, nmap -T4 slows down to a few probes a second once every
probe goes unanswered, and at `--host-timeout` it prints nothing at all for the host. Each
mode gets `--scans` scans with each kind of host discovery: nmap's default here (an ARP ping:
the target is on the attacker's link), none (-Pn), and the one nmap uses for a target behind a
router (--disable-arp-ping: ICMP echo, SYN to 443, ACK to 80, ICMP timestamp). A capture on
the protected side's veth records the order in which the probes arrived, so that each result
can be explained: which ports came before the first trap, and which services answered. Run as
root:

    .venv/bin/python bench/nmap_scan.py [--scans 1] [--modes connect,stealth,advanced]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import EventLog, Steal, environment, json_log, log_problems, machine
from daemon_env import ATK4, ATK6, SRV4, SRV6, Env
from frames import ACK, SYN, Capture, Recorder, Seen, device_of
from scans import EXCLUDED, SERVICES, start_services
from scans import is_trap as kernel_trap

from porttrap.config.schema import DEFAULT_TCP_TRAPS

# nmap 7.93, portlist.cc random_port_cheat: after shuffling, these move to the front of the
# list (in their shuffled order).
NMAP_POPULAR = (
    80,
    23,
    443,
    21,
    22,
    25,
    3389,
    110,
    445,
    139,
    143,
    53,
    135,
    3306,
    8080,
    1723,
    111,
    995,
    993,
    5900,
    1025,
    587,
    8888,
    199,
    1720,
    113,
    554,
    256,
)
# nmap's popular ports that this host does not serve, but 113 (ident) and 139 (NetBIOS), which
# advanced mode leaves alone too (111 and 143 are in the default list already): trapped as well,
# they make it likely that a trap comes first.
POPULAR_TRAPS = sorted(set(NMAP_POPULAR) - set(SERVICES) - set(EXCLUDED) - {111, 143})
DISCOVERY = {"arp": [], "none": ["-Pn"], "ip": ["--disable-arp-ping"]}
_POPULAR_LIST = ", ".join(f'"{p}"' for p in [*DEFAULT_TCP_TRAPS, *map(str, POPULAR_TRAPS)])
CONFIGS = {
    "connect": "",
    "stealth": '[traps]\nmode = "stealth"\n',
    "stealth-popular": f'[traps]\nmode = "stealth"\ntcp = [{_POPULAR_LIST}]\n',
    "advanced": '[traps]\nmode = "advanced"\n',
}


def is_trap(mode: str, port: int) -> bool:
    if mode == "stealth-popular" and port in POPULAR_TRAPS:
        return True
    return kernel_trap(mode == "advanced", port)


def model(mode: str, runs: int = 100_000) -> dict[str, float]:
    """Services a SYN scan reveals on average in `mode`, from nmap's order alone: its popular
    ports first, shuffled, then every other port, shuffled. Revealed: the services probed
    before the first trap. Before commit fd790be, every service once one of them was probed
    before a trap: the scanner's RST after a SYN-ACK made it a recent client, exempt from
    blocks and bans. Connect mode sees no SYN scan at all."""
    if mode == "connect":
        return {"revealed": 5.0, "revealed_before_fd790be": 5.0, "share_revealing_none": 0.0}
    popular = list(NMAP_POPULAR)
    later_traps = 65535 - len(popular) - 1 - sum(1 for p in EXCLUDED if p not in popular)
    if mode != "advanced":
        later_traps = sum(1 for p in range(1, 65536) if is_trap(mode, p) and p not in popular)
    rng = random.Random(0)
    revealed = before_fix = none = 0
    for _ in range(runs):
        rng.shuffle(popular)
        first = next((n for n, p in enumerate(popular) if is_trap(mode, p)), len(popular))
        before = [p for p in popular[:first] if p in SERVICES]
        if first == len(popular) and rng.randrange(later_traps + 1) == 0:
            before.append(5432)  # 5432 is not popular: it comes before every later trap
        revealed += len(before)
        before_fix += 5 if before else 0
        none += not before
    return {
        "revealed": round(revealed / runs, 2),
        "revealed_before_fd790be": round(before_fix / runs, 2),
        "share_revealing_none": round(none / runs, 3),
    }


def nmap(
    env: Env, source: str, device: str, target: str, *, discovery: str, args: argparse.Namespace
) -> str:
    timeout = args.host_timeout
    argv = [
        "nmap",
        f"-{args.scan}",
        *(["-p-" if args.ports == "-" else f"-p{args.ports}"] if args.ports else []),
        f"-T{args.timing}",
        "--max-retries",
        "1",
        "--host-timeout",
        f"{timeout}s",
        "-n",
        "-oX",
        "-",
        "-S",
        source,
        "-e",
        device,
    ]
    if args.min_rate:
        argv += ["--min-rate", str(args.min_rate)]
    if ":" in target:
        argv.append("-6")
    argv += DISCOVERY[discovery]
    return env.atk.run([*argv, target], timeout=timeout + 60)


def nmap_result(xml: str) -> dict[str, Any]:
    root = ET.fromstring(xml)
    host = root.find("host")
    finished = root.find("runstats/finished")
    result: dict[str, Any] = {
        "nmap_elapsed_s": float(finished.get("elapsed", "nan")) if finished is not None else None,
        "host_found": host is not None,
    }
    if host is None:
        return result
    status = host.find("status")
    result["host_state"] = status.get("state") if status is not None else None
    result["host_timed_out"] = host.get("timedout") == "true"
    result["open"] = sorted(
        int(p.get("portid", "0"))
        for p in host.iter("port")
        if (state := p.find("state")) is not None and state.get("state") == "open"
    )
    result["other_states"] = {
        e.get("state", "?"): int(e.get("count", "0")) for e in host.iter("extraports")
    }
    listed: dict[str, int] = {}
    for p in host.iter("port"):
        element = p.find("state")
        if element is not None and element.get("state") != "open":
            listed[element.get("state", "?")] = listed.get(element.get("state", "?"), 0) + 1
    for name, count in listed.items():
        result["other_states"][name] = result["other_states"].get(name, 0) + count
    return result


def probe_order(frames: list[Seen], source: str, mode: str) -> dict[str, Any]:
    """What arrived from the scanner, in order, until the first trap probe; and which services
    answered SYN-ACK (to the first probe or a retry)."""
    probes = [s for s in frames if not s.outgoing and s.source == source and s.flags & 0x3F == SYN]
    first: dict[int, int] = {}
    for seen in probes:
        first.setdefault(seen.dport, len(first) + 1)
    traps = [(n, port) for port, n in first.items() if is_trap(mode, port)]
    first_trap = min(traps) if traps else None
    synacks = [
        s
        for s in frames
        if s.outgoing and s.target == source and s.flags & (SYN | ACK) == SYN | ACK
    ]
    answered = {s.sport for s in synacks}
    before = sorted(first, key=first.__getitem__)[: first_trap[0] - 1] if first_trap else None
    return {
        "first_trap": {"port": first_trap[1], "position": first_trap[0]} if first_trap else None,
        "ports_before_first_trap": before,
        "service_positions": {str(p): first.get(p) for p in SERVICES},
        "services_answered_syn_ack": sorted(p for p in SERVICES if p in answered),
        "other_ports_answered_syn_ack": sorted(answered - set(SERVICES)),
        "probes_captured": len(probes),
        "first_probe_at": probes[0].at / 1e9 if probes else None,
        "last_syn_ack_after_s": round((synacks[-1].at - probes[0].at) / 1e9, 3)
        if synacks and probes
        else None,
    }


def porttrap_record(env: Env, source: str) -> dict[str, Any]:
    time.sleep(1.0)  # hits reach the store on the writer thread
    entries = env.json("history", source, "-n", "1000000")
    hits = [e for e in entries if e["what"] == "hit"]
    outcomes: dict[str, int] = {}
    for hit in hits:
        outcomes[hit["outcome"]] = outcomes.get(hit["outcome"], 0) + 1
    bans = [e for e in entries if e["what"] in ("ban", "permanent-ban")]
    version = 6 if ":" in source else 4
    return {
        "hits": len(hits),
        "hit_outcomes": outcomes,
        "distinct_ports_hit": len({h["port"] for h in hits}),
        "bans": [
            {"reason": b.get("reason"), "at": b["at"], "evidence": b.get("evidence")} for b in bans
        ],
        "in_ban_set": env.in_set(f"ban_v{version}", source),
        **(kernel_sets(env, source) if env.json("status")["kernel"] is not None else {}),
    }


def kernel_sets(env: Env, source: str) -> dict[str, bool]:
    """Whether the scanner is in a first-packet block set, or counted as a recent client (a
    source the kernel saw in an established connection to a served port)."""
    version = 6 if ":" in source else 4
    return {
        "in_block_set": any(env.in_set(f"block_{g}_v{version}", source) for g in "ab"),
        "in_clients_set": env.in_set(f"clients_v{version}", source),
    }


def add_source(env: Env, source: str) -> str:
    """Add a fresh scanner address to the attacker's veth; its device."""
    six = ":" in source
    device = device_of(env.atk, ATK6 if six else ATK4)
    env.atk.run(["ip", "addr", "add", f"{source}/{64 if six else 24}", "dev", device,
                 *(["nodad"] if six else [])])  # fmt: skip
    return device


def captured(env: Env, target: str, scan: Callable[[], str]) -> tuple[str, list[Seen], float]:
    """Run `scan` with a capture on the protected side's veth: its output, every frame in
    and out, and its wall time in seconds."""
    capture = Capture(env.srv, device_of(env.srv, target))
    recorder = Recorder(capture)
    recorder.start()
    try:
        started = time.perf_counter()
        output = scan()
        wall = time.perf_counter() - started
    finally:
        frames = recorder.stop()
        capture.close()
    return output, frames, wall


def one_scan(
    env: Env, mode: str, source: str, *, discovery: str, args: argparse.Namespace, events: EventLog
) -> dict[str, Any]:
    target = SRV6 if args.family == 6 else SRV4
    device = add_source(env, source)
    xml, frames, wall = captured(
        env, target, lambda: nmap(env, source, device, target, discovery=discovery, args=args)
    )
    found = nmap_result(xml)
    open_ports = found.get("open", [])
    order = probe_order(frames, source, mode)
    banned_at, first = events.banned_at(source), order.pop("first_probe_at")
    return {
        "mode": mode,
        "host_discovery": discovery,
        "source": source,
        "wall_s": round(wall, 1),
        **found,
        "services_open": [p for p in SERVICES if p in open_ports],
        "other_ports_open": len([p for p in open_ports if p not in SERVICES]),
        "order": order,
        "banned_after_s": round(banned_at - first, 3) if banned_at and first else None,
        "porttrap": porttrap_record(env, source),
    }


def run_mode(mode: str, args: argparse.Namespace, first: int) -> list[dict[str, Any]]:
    scans = []
    discoveries = args.discovery.split(",")
    with (
        tempfile.TemporaryDirectory(prefix="porttrap-bench-log-") as logs,
        environment(CONFIGS[mode] + json_log(Path(logs) / "events.json")) as env,
    ):
        events = EventLog(Path(logs) / "events.json")
        start_services(env)
        env.start()
        for n in range(args.scans * len(discoveries)):
            index = first + n
            source = f"2001:db8:1::{index:x}" if args.family == 6 else f"192.0.2.{index}"
            discovery = discoveries[n % len(discoveries)]
            scans.append(one_scan(env, mode, source, discovery=discovery, args=args, events=events))
        status = env.json("status")
        env.stop()
        problems = log_problems(env.log_text())
    for scan in scans:
        scan["daemon_log_problems"] = problems
        scan["kernel_events"] = status["kernel"]["events"] if status["kernel"] else None
    return scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=1, help="per mode and kind of host discovery")
    parser.add_argument("--modes", default="connect,stealth,advanced")
    parser.add_argument("--family", type=int, choices=(4, 6), default=4)
    parser.add_argument("--host-timeout", type=int, default=120, help="seconds")
    parser.add_argument("--min-rate", type=int, default=5000, help="nmap --min-rate; 0: none")
    parser.add_argument("--scan", choices=("sS", "sT"), default="sS", help="nmap -sS or -sT")
    parser.add_argument(
        "--ports", default="-", help="nmap -p; '-': every port; '': nmap's top 1000"
    )
    parser.add_argument("--timing", type=int, default=4, help="nmap -T")
    parser.add_argument("--discovery", default=",".join(DISCOVERY), help="of: arp,none,ip")
    parser.add_argument("--first", type=int, default=10, help="the first scanner's address")
    args = parser.parse_args()
    scans: list[dict[str, Any]] = []
    per_mode = len(args.discovery.split(",")) * args.scans
    with Steal() as steal:
        for n, mode in enumerate(args.modes.split(",")):
            scans += run_mode(mode, args, args.first + n * per_mode)
    for scan in scans:
        print(json.dumps(scan))
    table = [summary(s) for s in scans]
    modes = args.modes.split(",")
    print(
        json.dumps(
            {
                "benchmark": f"nmap -{args.scan} -p{args.ports} against 5 services",
                "model_services_revealed_per_scan": {m: model(m) for m in modes}
                if args.scan == "sS"
                else None,
                **machine(),
                "cpu_steal_percent": steal.percent,
                "scans": table,
            },
            indent=1,
        )
    )


def summary(scan: dict[str, Any]) -> dict[str, Any]:
    order, record = scan["order"], scan["porttrap"]
    return {
        "mode": scan["mode"],
        "host_discovery": scan["host_discovery"],
        "wall_s": scan["wall_s"],
        "nmap_timed_out": scan.get("host_timed_out"),
        "services_open_per_nmap": scan["services_open"],
        "services_that_answered": order["services_answered_syn_ack"],
        "other_ports_open": scan["other_ports_open"],
        "other_ports_that_answered": order["other_ports_answered_syn_ack"],
        "probes_captured": order["probes_captured"],
        "last_syn_ack_after_s": order["last_syn_ack_after_s"],
        "banned_after_s": scan["banned_after_s"],
        "ban_evidence": [b["evidence"] for b in record["bans"]],
        "first_trap": order["first_trap"],
        "ports_before_first_trap": order["ports_before_first_trap"],
        "hits": record["hit_outcomes"],
        "banned": bool(record["bans"]),
        "client": record.get("in_clients_set"),
    }


if __name__ == "__main__":
    main()
