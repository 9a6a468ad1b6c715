"""Forged floods that reach `[ban] confirm`: how many innocent addresses does porttrap ban, what
does it cost, and do the real client and real scanners fare as they should? (issue 12)

Each source of the flood sends two packets (`--per-source`), `--gap` seconds apart, so that a
forged source reaches `confirm = 2`, the attack that bans; new sources and repeats are evenly
interleaved (half the packets of each second are first packets). `--rate` packets a second for
`--seconds` (bounded in count and time), prebuilt and sent on the attacker's veth with an
AF_PACKET socket as `bench/flood.py` sends them. Sources: with `--family 6` (the default) each
its own random address in 2001:db8:8000::/33; with `--family 4` they cycle through the hosts of
198.51.100.0/24 and 203.0.113.0/24 (508 addresses: the per-network budget), which include the
host's own 198.51.100.1 and the real client. One packet in 1,000 is forged in the real
client's name in any case. The configurations (`--configs`):

    advanced-tcp   SYNs to random default TCP trap ports, advanced mode (kernel sensor)
    advanced-udp   datagrams to random default UDP trap ports, advanced mode (kernel sensor)
    connect-tcp    SYNs to the connect-mode TCP traps (default mode): the kernel answers each
                   with a SYN-ACK; a forged source never completes, so porttrap sees nothing
    connect-udp    datagrams to the connect-mode UDP traps: every one a hit, read by the daemon

The protected side routes 2001:db8::/32 and 203.0.113.0/24 to the attacker (its SYN-ACKs to
forged sources go there and are dropped: nobody answers them). Meanwhile:
- every second: the daemon's CPU (% of one core), RSS, and the size of its SQLite files;
- every 2 s: `porttrap status` (bans, hits by outcome, sampled hits, evicted sources);
- the real client (198.51.100.2, which used the service before) connects every 50 ms;
- at 1/3 and 2/3 of the flood and just after it, fresh real scanners (IPv4 and IPv6):
  "verified": in connect mode one full connect to a TCP trap; in advanced mode a connect to
  the service (which makes it a recent client) and then to two TCP traps (redirected to the
  catch-all: handshakes); "unverified": a probe every 0.1 s until banned, for at most 8 s (a
  SYN to a TCP trap in advanced mode, a datagram to a UDP trap in connect mode). Their time to
  ban is the daemon's `event=ban` log line (a JSON log with milliseconds) minus their start.
At the end: every ban in the log (innocent ones: the flood's sources), `porttrap bans`, the
client's history, the rows in the database, and the protected namespace's UDP and TCP counters
(datagrams dropped before the daemon read them, SYN cookies sent). Run as root:

    .venv/bin/python bench/forged_flood.py [--configs advanced-tcp,...] [--family 6]
        [--rate 30000] [--seconds 30] [--runs 1]
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import json
import multiprocessing
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import EventLog, Steal, environment, json_log, kernel_mib, log_problems, machine, wall
from daemon_env import (
    ATK4,
    ATK6,
    CLIENT,
    SERVICE_PORT,
    SRV4,
    SRV6,
    SRV_CLI,
    Env,
    tcp_works,
    udp_send,
)
from flood import (
    Monitor,
    Scanner,
    client,
    client_summary,
    flood,
    random_ports,
    random_sources,
    trap_ports,
)
from frames import TCP_PROTO, UDP_PROTO, forged, sender, tcp_frame

from porttrap.config.schema import DEFAULT_UDP_TRAPS

CONFIGS = {
    "advanced-tcp": ("advanced", TCP_PROTO),
    "advanced-udp": ("advanced", UDP_PROTO),
    "connect-tcp": ("connect", TCP_PROTO),
    "connect-udp": ("connect", UDP_PROTO),
}
FORGED_V6 = ipaddress.ip_network("2001:db8:8000::/33")
FORGED_V4 = tuple(map(ipaddress.ip_network, ("198.51.100.0/24", "203.0.113.0/24")))
CLIENT_EVERY = 1000  # one flood packet in this many is forged in the real client's name
AFTER = 12.0  # seconds watched after the flood
PROBE_EVERY, PROBE_FOR = 0.1, 8.0  # an unverified scanner's pace and patience
TCP_PROBED = (1, 11, 15, 79, 111, 119, 143, 540, 635, 1080)
UDP_PROBED = (7, 9, 69, 161, 162, 513, 635, 640, 641, 700)
VERIFIED_TRAPS = (31337, 12345)


def config_text(mode: str, events: Path) -> str:
    traps = f'[traps]\nmode = "{mode}"\n\n' if mode != "connect" else ""
    return traps + json_log(events)


def forged_sources(family: int, count: int) -> list[bytes]:
    if family == 6:
        return random_sources(count)
    cycle = [a.packed for net in FORGED_V4 for a in net.hosts()]
    return [cycle[n % len(cycle)] for n in range(count)]


def schedule(sources: int, per_source: int, spacing: int) -> list[int]:
    """The order of the sources' packets: source n sends its m-th at step n + m * spacing, so
    that new sources and repeats are interleaved evenly (`per_source` packets a step)."""
    steps = sorted((n + m * spacing, m, n) for n in range(sources) for m in range(per_source))
    return [n for _, _, n in steps]


def build(args: argparse.Namespace, proto: int, macs: tuple[bytes, bytes]) -> list[bytes]:
    """The flood's frames: each source `--per-source` times, one in CLIENT_EVERY in the real
    client's name (IPv4, to the host's IPv4 address)."""
    count = args.rate * args.seconds
    sources = forged_sources(args.family, count // args.per_source)
    spacing = max(1, round(args.gap * args.rate / args.per_source))
    order = schedule(len(sources), args.per_source, spacing)
    ports = trap_ports() if proto == TCP_PROTO else trap_ports(DEFAULT_UDP_TRAPS)
    target = SRV6 if args.family == 6 else SRV4
    packed = [sources[n] for n in order]
    frames = forged(macs, target, packed, random_ports(len(order), ports), proto)
    named = len(frames) // CLIENT_EVERY
    client_packed = [ipaddress.ip_address(CLIENT).packed] * named
    in_name = forged(macs, SRV4, client_packed, random_ports(named, ports), proto)
    for n, frame in enumerate(in_name):
        frames[(n + 1) * CLIENT_EVERY - 1] = frame
    return frames


def innocent(address: str, family: int) -> bool:
    """Whether a banned address is one of the flood's forged sources."""
    ip = ipaddress.ip_address(address.split("/", maxsplit=1)[0])
    if family == 6:
        return ip in FORGED_V6
    return any(ip in net for net in FORGED_V4)


class Watch(Monitor):
    """flood.Monitor, plus the database's size every second and, from `status`, the bans,
    the hits by outcome and the sources watched and evicted."""

    def sample(self) -> dict[str, Any]:
        return {"db_bytes": db_bytes(self.env)}

    def from_status(self, status: dict[str, Any]) -> dict[str, Any]:
        row = {
            "bans_active": status["bans"]["active"],
            "hits": status["hits"],
            "sources": status["sources"],
        }
        if status["kernel"] is not None:
            row["kernel_events"] = status["kernel"]["events"]
        return row


def db_bytes(env: Env) -> int:
    return sum(p.stat().st_size for p in env.state.glob("porttrap.db*") if p.exists())


def db_rows(env: Env) -> dict[str, int]:
    db = env.state / "porttrap.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("hits", "bans")
        }


class RealScanners:
    """Fresh real scanners during and after the flood (see the module doc): when each was
    banned, after how many probes."""

    def __init__(self, env: Env, scanners: Scanner, events: EventLog, mode: str) -> None:
        self.env, self.scanners, self.events, self.mode = env, scanners, events, mode
        self.found: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._rounds, daemon=True)
        self._next = 0x100

    def sources(self, rounds: int = 3) -> list[str]:
        """Every address the rounds use, to add to the attacker's veth beforehand."""
        return [
            address
            for n in range(0x100, 0x100 + 4 * rounds)
            for address in (f"192.0.2.{n - 0x100 + 100}", f"2001:db8:1::{n:x}")
        ]

    def start(self, flood_started: float, seconds: float) -> None:
        self._at = [flood_started + seconds / 3, flood_started + 2 * seconds / 3,
                    flood_started + seconds + 1]  # fmt: skip
        self._flood_started = flood_started
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def _source(self, version: int) -> str:
        n = self._next
        self._next += 1
        return f"192.0.2.{n - 0x100 + 100}" if version == 4 else f"2001:db8:1::{n:x}"

    def _rounds(self) -> None:
        for label, at in zip(("1/3", "2/3", "after"), self._at, strict=True):
            time.sleep(max(0.0, at - wall()))
            for version in (4, 6):
                self._record(label, self.verified(self._source(version)))
            threads = [
                threading.Thread(target=self._unverified, args=(label, self._source(v)))
                for v in (4, 6)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    def _unverified(self, label: str, source: str) -> None:
        self._record(label, self.unverified(source))

    def _record(self, label: str, found: dict[str, Any]) -> None:
        with self._lock:
            self.found.append({"round": label, **found})

    def _target(self, source: str) -> str:
        return SRV6 if ":" in source else SRV4

    def verified(self, source: str) -> dict[str, Any]:
        """Handshakes to TCP traps: a ban on verified evidence, which no budget holds back."""
        target = self._target(source)
        if self.mode != "connect":  # a recent client first: its trap SYNs are redirected
            tcp_works(self.env.atk, source, target, SERVICE_PORT, timeout=2.0)
        started = wall()
        connected = [
            tcp_works(self.env.atk, source, target, port, timeout=2.0)
            for port in VERIFIED_TRAPS[: 1 if self.mode == "connect" else 2]
        ]
        banned = self._wait(source, started, 5.0)
        return {"kind": "verified", "source": source, "connected": connected, **banned}

    def unverified(self, source: str) -> dict[str, Any]:
        """A probe every PROBE_EVERY until banned: SYNs to TCP traps where the kernel sensor
        watches them, datagrams to UDP traps in connect mode."""
        target = self._target(source)
        started = wall()
        probes = 0
        with sender(self.env.atk, self.scanners.devices[6]) as sock:
            while wall() - started < PROBE_FOR:
                if self.mode == "connect":
                    udp_send(self.env.atk, source, target, UDP_PROBED[probes % len(UDP_PROBED)])
                else:
                    port = TCP_PROBED[probes % len(TCP_PROBED)]
                    version = 6 if ":" in source else 4
                    frame = tcp_frame(self.scanners.macs[version], source, target,
                                      (40000 + probes, port))  # fmt: skip
                    sock.send(frame)
                probes += 1
                if self.events.banned_at(source) is not None:
                    break
                time.sleep(PROBE_EVERY)
        kind = "unverified-" + ("udp" if self.mode == "connect" else "syn")
        return {"kind": kind, "source": source, "probes": probes, **self._wait(source, started, 1)}

    def _wait(self, source: str, started: float, limit: float) -> dict[str, Any]:
        deadline = wall() + limit
        while (at := self.events.banned_at(source)) is None and wall() < deadline:
            time.sleep(0.02)
        return {
            "started_s": round(started - self._flood_started, 1),
            "banned_after_s": None if at is None else round(at - started, 3),
        }


def add_routes(env: Env) -> None:
    """The protected side's answers to forged sources go to the attacker (who drops them)."""
    env.srv.run(["ip", "-6", "route", "add", "2001:db8::/32", "via", ATK6])
    env.srv.run(["ip", "route", "add", "203.0.113.0/24", "via", ATK4])


def run(env: Env, args: argparse.Namespace, name: str, events: EventLog) -> dict[str, Any]:
    mode, proto = CONFIGS[name]
    scanners = Scanner(env)
    add_routes(env)
    built = time.perf_counter()
    frames = build(args, proto, scanners.macs[6])
    result: dict[str, Any] = {"pool_frames": len(frames),
                              "pool_build_s": round(time.perf_counter() - built, 1)}  # fmt: skip
    assert tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT), "the client uses the service first"
    mib_before = kernel_mib(env.srv)
    fork = multiprocessing.get_context("fork")
    stop = fork.Event()
    client_in, client_out = fork.Pipe(duplex=False)
    flood_in, flood_out = fork.Pipe(duplex=False)
    user = fork.Process(target=client, args=(env, stop, client_out))
    user.start()
    time.sleep(1.0)
    sock = sender(env.atk, scanners.devices[6])
    flooder = fork.Process(target=flood, args=(sock, frames, args.rate, args.seconds, flood_out))
    monitor = Watch(env)
    real = RealScanners(env, scanners, events, mode)
    scanners.prepare(real.sources())
    flood_started = wall()
    flooder.start()
    monitor.start()
    real.start(flood_started, args.seconds)
    del frames  # the child has its copy
    result["flood"] = flood_in.recv()
    flooder.join()
    real.join()
    time.sleep(max(0.0, flood_started + args.seconds + AFTER - wall()))
    monitor.stop()
    stop.set()
    result["client"] = client_summary(client_in.recv(), monitor.started)
    user.join()
    result["daemon"] = monitor.samples
    result["status"] = monitor.statuses
    result["scanners"] = real.found
    for scanner in real.found:  # held-back, or banned; spared as a client
        scanner["hits"] = outcomes(env.json("history", scanner["source"], "-n", "1000"))
    result["kernel_mib"] = mib_delta(mib_before, kernel_mib(env.srv))
    result["bans"] = ban_figures(env, events, args.family, flood_started)
    result["client_hits"] = outcomes(env.json("history", CLIENT, "-n", "1000000"))
    result["db_rows"] = db_rows(env)
    result["db_bytes_end"] = db_bytes(env)
    return result


MIB = (
    "Udp.InDatagrams", "Udp.RcvbufErrors", "Udp6InDatagrams", "Udp6RcvbufErrors",
    "Tcp.InSegs", "Tcp.OutSegs", "Tcp.RetransSegs", "Tcp.OutRsts", "TcpExt.SyncookiesSent",
    "TcpExt.ListenOverflows", "TcpExt.ListenDrops", "TcpExt.TCPReqQFullDoCookies",
)  # fmt: skip


def mib_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in MIB}


def outcomes(entries: list[dict[str, Any]]) -> dict[str, int]:
    return dict(collections.Counter(e["outcome"] for e in entries if e["what"] == "hit"))


def ban_figures(env: Env, events: EventLog, family: int, started: float) -> dict[str, Any]:
    """The bans of innocent addresses (the flood's sources) from the log: in all, per second of
    the run, per network, how long; and the real client's, which must be none."""
    time.sleep(1.0)  # the last bans' lines
    events.poll()
    forged_bans = [b for b in events.bans if innocent(b["address"], family)]
    per_second = collections.Counter(int(b["at"] - started) for b in forged_bans)
    networks = collections.Counter(
        str(ipaddress.ip_network(b["address"]).supernet(new_prefix=24 if family == 4 else 48))
        for b in forged_bans
    )
    listed = env.json("bans")
    last = max((b["at"] for b in forged_bans), default=started)
    return {
        "innocent": len(forged_bans),
        "innocent_per_second": {str(s): per_second[s] for s in sorted(per_second)},
        "innocent_max_in_a_second": max(per_second.values(), default=0),
        "innocent_last_at_s": round(last - started, 1),
        "innocent_networks": len(networks),
        "innocent_most_in_a_network": max(networks.values(), default=0),
        "innocent_by_evidence": dict(collections.Counter(b["evidence"] for b in forged_bans)),
        "innocent_permanent": sum(b["permanent"] for b in forged_bans),
        "innocent_longest_s": max((b["seconds"] or 0 for b in forged_bans), default=None),
        "client_banned": any(b["address"] == CLIENT for b in events.bans),
        "all_in_log": len(events.bans),
        "active_listed": len(listed),
        "active_by_evidence": dict(collections.Counter(b["evidence"] for b in listed)),
    }


def summary(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The figures of the tables in BENCHMARKS.md."""
    samples, flood_s = result["daemon"], args.seconds
    during = [s for s in samples if s["t"] <= flood_s + 0.5]
    rss = [s["rss_mib"] for s in samples]
    db = [s["db_bytes"] for s in samples]
    last = result["status"][-1] if result["status"] else {}
    sent = result["flood"]
    return {
        "rate_achieved": round(sent["sent"] / sent["elapsed_s"]),
        "cpu_percent_flood_mean": round(statistics.fmean(s["cpu_percent"] for s in during), 1),
        "cpu_percent_max": max(s["cpu_percent"] for s in samples),
        "cpu_percent_after": [s["cpu_percent"] for s in samples if s["t"] > flood_s + 2],
        "rss_mib_start_mid_end_max": [rss[0], rss[len(during) // 2], rss[-1], max(rss)],
        "db_mib_start_end_max": [round(x / 2**20, 2) for x in (db[0], db[-1], max(db))],
        "db_rows": result["db_rows"],
        "bans": {k: v for k, v in result["bans"].items() if k != "innocent_per_second"},
        "hits": last.get("hits"),
        "sources": last.get("sources"),
        "kernel_events": last.get("kernel_events"),
        "status_answer_s_max": max((s["answer_s"] for s in result["status"]), default=None),
        "client": {
            "attempts": result["client"]["attempts_from_flood_start"],
            "failures": len(result["client"]["failures"]),
            "connect_ms": result["client"]["connect_ms"],
            "hits_in_its_name": result["client_hits"],
        },
        "scanners": [
            (s["round"], s["kind"], s["source"], s["banned_after_s"], s.get("probes"), s["hits"])
            for s in result["scanners"]
        ],
        "kernel_mib": result["kernel_mib"],
    }


def one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    mode, _ = CONFIGS[name]
    with tempfile.TemporaryDirectory(prefix="porttrap-bench-log-") as logs:
        events = EventLog(Path(logs) / "events.json")
        with environment(config_text(mode, events.path)) as env:
            env.start()
            with Steal() as steal:
                result = run(env, args, name, events)
            env.stop()
            problems = log_problems(env.log_text())
    return {
        "config": name,
        "family": args.family,
        **machine(),
        "cpu_steal_percent": steal.percent,
        "summary": summary(result, args),
        "daemon_log_problems": problems[:20],
        **result,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--family", type=int, choices=(4, 6), default=6)
    parser.add_argument("--rate", type=int, default=30_000, help="packets a second")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--per-source", type=int, default=2)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between a source's packets")
    parser.add_argument("--runs", type=int, default=1, help="of each configuration, alternately")
    parser.add_argument("--out", type=Path, help="also write each run's JSON here (a directory)")
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; known: {', '.join(CONFIGS)}")
    for n in range(args.runs):
        for name in names:
            found = one(name, args)
            text = json.dumps(found, indent=1)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{name}-v{args.family}-{n + 1}.json").write_text(text)
            print(json.dumps({"config": name, "run": n + 1, "steal": found["cpu_steal_percent"],
                              **found["summary"]}, indent=1), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
