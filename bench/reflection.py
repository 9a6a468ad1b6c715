"""Forged SYNs in a real client's name: how many SYN-ACKs does the protected host send that
client? What answering only a recent client's SYNs (stealth mode's redirect to the catch-all
port, 5 SYNs per source then 1 a second) costs, against answering every SYN (a connect-mode
trap, or any served port). (issue 12)

The real client (198.51.100.2) connects to the service first, so that the host counts it as a
recent client. Then, from the attacker's side, `--rate` SYNs a second for `--seconds` with the
client's address as their source, each from a source port of its own (1024-31999, below the
client's ephemeral ports), to random default TCP trap ports and, in stealth mode at the same
time and rate, to the served port 8080. A capture in the client's namespace counts the SYN-ACKs
that reach it (by the port that answered: 8080 or a trap), retransmissions included, until
they stop (`--tail`). Two kinds of victim:

    answers   the client's kernel answers each unexpected SYN-ACK with a RST, which ends the
              half-open connection on the host: one SYN-ACK per answered SYN
    silent    its namespace drops SYN-ACKs to those ports (a firewall, a host that is down):
              the host retransmits each SYN-ACK (net.ipv4.tcp_synack_retries, 5 here)

Run as root:

    .venv/bin/python bench/reflection.py [--rate 1000] [--seconds 10] [--tail 35]
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Steal, environment, log_problems, machine
from daemon_env import CLIENT, SERVICE_PORT, SRV_CLI, Env, tcp_works
from flood import Scanner, flood, kernel_counters, trap_ports
from frames import ACK, RST, SYN, Capture, Recorder, device_of, forged, sender

MODES = {"stealth": '[traps]\nmode = "stealth"\n', "connect": ""}
FIRST_SPORT, SPORTS = 1024, 30976  # 1024-31999: never the client's own ephemeral ports
SILENT = """table inet bench {
    chain input {
        type filter hook input priority 0; policy accept;
        tcp flags & (syn | ack) == syn | ack tcp dport 1024-31999 drop
    }
}
"""


def frames(env: Env, count: int, served: bool) -> list[bytes]:
    """`count` SYNs in the client's name to random trap ports, alternating with as many to the
    served port when `served`; to the host's address on the client's link, so that the client
    can answer the SYN-ACKs (it has no route to the attacker's side)."""
    macs = Scanner(env).macs[4]
    traps = trap_ports()
    ports = []
    for n in range(count * (2 if served else 1)):
        dport = SERVICE_PORT if served and n % 2 else traps[n % len(traps)]
        ports.append((FIRST_SPORT + n % SPORTS, dport))
    client = ipaddress.ip_address(CLIENT).packed
    return forged(macs, SRV_CLI, [client] * len(ports), ports)


def send(env: Env, built: list[bytes], rate: int, seconds: float) -> dict[str, Any]:
    fork = multiprocessing.get_context("fork")
    into, out = fork.Pipe(duplex=False)
    sock = sender(env.atk, device_of(env.atk, "192.0.2.2"))
    process = fork.Process(target=flood, args=(sock, built, rate, seconds, out))
    process.start()
    sent: dict[str, Any] = into.recv()
    process.join()
    sock.close()
    return {k: v for k, v in sent.items() if k != "per_second"}


def case(env: Env, victim: str, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One flood in the client's name; the SYN-ACKs its namespace received."""
    served = mode == "stealth"
    if victim == "silent":
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as rules:
            rules.write(SILENT)
            rules.flush()
            env.cli.run(["nft", "-f", rules.name])
    capture = Capture(env.cli, device_of(env.cli, CLIENT))
    recorder = Recorder(capture)
    recorder.start()
    counters_before = kernel_counters(env)
    try:
        built = frames(env, args.rate * args.seconds, served)
        sent = send(env, built, args.rate * (2 if served else 1), args.seconds)
        time.sleep(args.tail if victim == "silent" else 3.0)
    finally:
        seen = recorder.stop()
        capture.close()
        if victim == "silent":
            env.cli.run(["nft", "delete", "table", "inet", "bench"])
    synacks = [
        s
        for s in seen
        if not s.outgoing
        and s.flags & (SYN | ACK) == SYN | ACK
        and FIRST_SPORT <= s.dport < FIRST_SPORT + SPORTS
    ]
    rsts = [s for s in seen if s.outgoing and s.flags & RST]
    counters = kernel_counters(env)
    return {
        "mode": mode,
        "victim": victim,
        "sent": sent,
        "syn_acks": tally(synacks, lambda port: port == SERVICE_PORT),
        "client_rsts": len(rsts),
        "kernel_counters": {
            k: counters.get(k, 0) - counters_before.get(k, 0)
            for k in ("redirected", "over_redirect", "reported")
        },
        "client_still_served": tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT),
    }


def tally(synacks: list[Any], is_served: Any) -> dict[str, dict[str, int]]:
    """SYN-ACKs and distinct connections answered (a retransmission repeats one), by the port
    that answered: the served port or a trap."""
    found: dict[str, dict[str, int]] = {}
    for label, wanted in (("served", True), ("traps", False)):
        mine = [s for s in synacks if bool(is_served(s.sport)) is wanted]
        per = collections.Counter((s.sport, s.dport) for s in mine)
        found[label] = {
            "syn_acks": len(mine),
            "connections": len(per),
            "most_for_one": max(per.values(), default=0),
        }
    return found


def run_mode(mode: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    with environment(MODES[mode]) as env:
        env.start()
        assert tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT), "the client uses the service"
        found = [case(env, victim, args, mode) for victim in ("answers", "silent")]
        history = env.json("history", CLIENT, "-n", "1000000")
        bans = env.json("bans")
        env.stop()
        problems = log_problems(env.log_text())
    outcomes = collections.Counter(e["outcome"] for e in history if e["what"] == "hit")
    for one in found:
        one["client_hits"] = dict(outcomes)
        one["client_banned"] = any(b["address"] == CLIENT for b in bans)
        one["daemon_log_problems"] = problems[:10]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=1000, help="forged SYNs a second, per target")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tail", type=float, default=35.0, help="seconds of capture afterwards")
    parser.add_argument("--modes", default="stealth,connect")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with Steal() as steal:
        found = [c for mode in args.modes.split(",") for c in run_mode(mode, args)]
    text = json.dumps(
        {
            "benchmark": "forged SYNs in a real client's name: SYN-ACKs reflected to it",
            "rate_per_target": args.rate,
            "seconds": args.seconds,
            **machine(),
            "cpu_steal_percent": steal.percent,
            "cases": found,
        },
        indent=1,
    )
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
