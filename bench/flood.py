"""A forged flood of trap SYNs at a daemon in stealth mode: does the host keep serving its
clients, do the limits hold, and is a real scanner still dropped at its first packet?

The flood: `--rate` SYNs a second for `--seconds` (bounded in count and time), every one from a
source of its own, drawn at random from 2001:db8:8000::/33 (documentation space, 2^95
addresses), to a random port of the default trap list. The frames are built before the flood
(checksums included) and sent on the attacker's veth with an AF_PACKET socket, in batches
paced every millisecond; the achieved rate is measured. A veth processes what it receives on
the sending CPU, inside the send: the sender's CPU time includes the protected side's whole
input path (nftables included).

Meanwhile: the daemon's CPU (as % of one core) and RSS every second; `porttrap status --json`
every 2 s, with the time the daemon took to answer; a legitimate client (198.51.100.2, another
namespace, which used the service before the flood) opening a connection to the service every
50 ms; and every 0.5 s a new real scanner (a fresh address on the attacker's veth, two IPv6 for
one IPv4) sending one trap SYN and at once opening a connection to the service, which must
fail. Halfway through, two more scanners send five trap SYNs each: how long until the daemon
bans them? After the flood, the same tests once more, and whether the scanner is in a block set.

The daemon reads the sensor's counters every 0.25 s to decide when to rotate the block sets:
what one read costs (the same netlink dump, median of 3) is measured before the flood and
with the sets as the flood left them.

Kernel memory: /proc/meminfo's Slab before the flood, at its end and after porttrap's three
IPv6 sets that it fills (block_a_v6, block_b_v6, meter_v6) are flushed. /proc/meminfo is the
whole machine's (a namespace does not change it): other work on the machine shows in it too.
Run as root:

    .venv/bin/python bench/flood.py [--rate 50000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
from common import Steal, add_addresses, environment, log_problems, machine, percentiles
from daemon_env import ATK4, ATK6, CLIENT, SERVICE_PORT, SRV4, SRV6, SRV_CLI, Env, tcp_works
from frames import device_of, forged, mac_of, sender, tcp_frame

from porttrap.config.schema import DEFAULT_TCP_TRAPS
from porttrap.firewall.objects import NftObjects

CONFIG = '[traps]\nmode = "stealth"\n'
CLIENT_EVERY = 0.05
FORGED_PREFIX = bytes.fromhex("20010db8")


def trap_ports(traps: tuple[str, ...] = DEFAULT_TCP_TRAPS) -> list[int]:
    ports: list[int] = []
    for item in traps:
        first, _, last = item.partition("-")
        ports += range(int(first), int(last or first) + 1)
    return ports


def random_sources(count: int) -> list[bytes]:
    """`count` random addresses in 2001:db8:8000::/33 (documentation space, 2^95 addresses;
    never the test's own 2001:db8:1::/64), packed."""
    noise = bytearray(os.urandom(12 * count))
    for n in range(0, len(noise), 12):
        noise[n] |= 0x80
    return [FORGED_PREFIX + bytes(noise[n : n + 12]) for n in range(0, len(noise), 12)]


def random_ports(count: int, ports: list[int]) -> list[tuple[int, int]]:
    """`count` (source port, destination port) pairs: any unprivileged source port, a random
    one of `ports`."""
    values = struct.unpack(f"!{count}H", os.urandom(2 * count))
    return [(1024 + v % 60000, ports[v % len(ports)]) for v in values]


def pool(count: int, macs: tuple[bytes, bytes], target: str) -> list[bytes]:
    """`count` SYN frames to random trap ports, each from its own random source."""
    return forged(macs, target, random_sources(count), random_ports(count, trap_ports()))


def flood(
    sock: socket.socket, frames: list[bytes], rate: int, seconds: float, out: Connection
) -> None:
    """Send `frames` at `rate` a second in 1 ms batches, for at most `seconds`."""
    batch = max(1, rate // 1000)
    started = time.perf_counter()
    deadline, due = started + seconds, started
    sent = errors = 0
    per_second = []
    mark = started + 1
    while sent < len(frames) and time.perf_counter() < deadline:
        for frame in frames[sent : sent + batch]:
            try:
                sock.send(frame)
            except OSError:
                errors += 1
        sent += batch
        due += batch / rate
        now = time.perf_counter()
        if now >= mark:
            per_second.append(sent)
            mark += 1
        if due > now:
            time.sleep(due - now)
    elapsed = time.perf_counter() - started
    seconds_sent = [b - a for a, b in itertools.pairwise([0, *per_second])]
    out.send(
        {
            "sent": min(sent, len(frames)),
            "send_errors": errors,
            "elapsed_s": elapsed,
            "per_second": seconds_sent,
        }
    )


def client(env: Env, stop: Any, out: Connection) -> None:
    """Connect to the service every 50 ms from the legitimate client until told to stop."""
    attempts: list[tuple[float, float, str]] = []  # (start, ms, error or "")
    with env.cli.inside():
        while not stop.is_set():
            attempts.append(timed(greeted))
            time.sleep(max(0.0, CLIENT_EVERY - attempts[-1][1] / 1000))
    out.send(attempts)


def greeted() -> str:
    """One connection from the legitimate client: "" when the service greeted it."""
    with socket.create_connection((SRV_CLI, SERVICE_PORT), 1.0, (CLIENT, 0)) as sock:
        return "" if sock.recv(5) == b"hello" else "no greeting"


def timed(attempt: Callable[[], str]) -> tuple[float, float, str]:
    """(start, milliseconds, error or "") of one `attempt`, which returns its error or ""."""
    started = time.perf_counter()
    try:
        error = attempt()
    except OSError as err:
        error = type(err).__name__
    return started, (time.perf_counter() - started) * 1000, error


def in_set(env: Env, name: str, address: str) -> bool:
    """Whether `address` is in one of porttrap's sets (`nft get element`, exit 1 when not)."""
    try:
        env.srv.run(["nft", "get", "element", "inet", "porttrap", name, "{", address, "}"], 60)
    except Exception:  # CalledProcessError: not there
        return False
    return True


def in_block(env: Env, address: str) -> bool:
    version = 6 if ":" in address else 4
    return any(in_set(env, f"block_{g}_v{version}", address) for g in "ab")


class Scanner:
    """Fresh real scanners on the attacker's side: sources in 192.0.2.0/24, 2001:db8:1::/64,
    added to its veth beforehand (`prepare`), so that a test is only packets."""

    def __init__(self, env: Env) -> None:
        self.env = env
        srv_device = device_of(env.srv, SRV6)
        self.devices = {4: device_of(env.atk, ATK4), 6: device_of(env.atk, ATK6)}
        self.macs = {
            v: (mac_of(env.srv, srv_device), mac_of(env.atk, self.devices[v])) for v in (4, 6)
        }

    def prepare(self, sources: list[str]) -> None:
        add_addresses(self.env.atk, self.devices, sources)

    def _send(self, source: str, ports: list[int]) -> str:
        version = 6 if ":" in source else 4
        target = SRV6 if version == 6 else SRV4
        with sender(self.env.atk, self.devices[version]) as sock:
            for n, port in enumerate(ports):
                sock.send(tcp_frame(self.macs[version], source, target, (45000 + n, port)))
        return target

    def refused(self, source: str, timeout: float) -> bool:
        """One trap SYN; then at once a connection to the service: whether it failed."""
        target = self._send(source, [31337])
        return not tcp_works(self.env.atk, source, target, SERVICE_PORT, timeout=timeout)

    def first_packet(self, source: str) -> dict[str, Any]:
        """`refused`, and then whether the source is in a block set."""
        refused = self.refused(source, 1.0)
        return {
            "source": source,
            "service_connection_failed": refused,
            "in_block_set": in_block(self.env, source),
        }

    def banned(self, source: str, wait: float = 10.0) -> dict[str, Any]:
        """Five trap SYNs to five ports; seconds until the daemon's ban is in the kernel (each
        check is an `nft get element` on the small ban set)."""
        self._send(source, [1, 11, 15, 79, 111])
        started = time.perf_counter()
        version = 6 if ":" in source else 4
        while time.perf_counter() - started < wait:
            if in_set(self.env, f"ban_v{version}", source):
                return {"source": source, "banned_after_s": round(time.perf_counter() - started, 2)}
            time.sleep(0.1)
        return {"source": source, "banned_after_s": None}

    def after(self) -> list[dict[str, Any]]:
        return [
            {**self.first_packet(one), "ban_test": self.banned(two)}
            for one, two in (("192.0.2.90", "192.0.2.91"), ("2001:db8:1::90", "2001:db8:1::91"))
        ]


def during_sources(count: int) -> list[str]:
    """Two IPv6 scanners for one IPv4 one: the flood is IPv6."""
    return [
        f"192.0.2.{100 + n}" if n % 3 == 2 else f"2001:db8:1::{0x100 + n:x}" for n in range(count)
    ]


class DuringFlood:
    """While the flood runs: a fresh scanner every 0.5 s sends one trap SYN, then at once
    opens a connection to the service (0.5 s timeout), which must fail; and halfway, two more
    (IPv4, IPv6) send five trap SYNs each, for the daemon to ban."""

    EVERY = 0.5

    def __init__(self, scanners: Scanner, seconds: float) -> None:
        self.scanners, self.seconds = scanners, seconds
        self.sources = during_sources(int(seconds / self.EVERY))
        self.found: list[dict[str, Any]] = []
        self.bans: list[dict[str, Any]] = []
        self._threads = [
            threading.Thread(target=self._first_packets, daemon=True),
            threading.Thread(target=self._bans, daemon=True),
        ]

    def start(self) -> None:
        self.started = time.perf_counter()
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join()

    def _first_packets(self) -> None:
        for n, source in enumerate(self.sources):
            time.sleep(max(0.0, self.started + n * self.EVERY - time.perf_counter()))
            at = time.perf_counter() - self.started
            if at > self.seconds - 0.5:
                return
            refused = self.scanners.refused(source, self.EVERY)
            self.found.append({"t": round(at, 1), "source": source, "refused": refused})

    def _bans(self) -> None:
        time.sleep(self.seconds / 2)
        self.bans = [self.scanners.banned(s) for s in ("192.0.2.99", "2001:db8:1::99")]

    def summary(self) -> dict[str, Any]:
        by_family: dict[str, list[bool]] = {"v4": [], "v6": []}
        for found in self.found:
            by_family["v6" if ":" in found["source"] else "v4"].append(found["refused"])
        return {
            "first_packet": {
                f: f"{sum(r)} of {len(r)} refused at once" for f, r in by_family.items()
            },
            "scanners": self.found,
            "ban_test": self.bans,
        }


def meminfo() -> dict[str, int]:
    """Slab memory of the whole machine, in KiB (not per namespace: /proc/meminfo is global)."""
    found = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":")
        if key in ("Slab", "SUnreclaim"):
            found[key] = int(value.split()[0])
    return found


def set_sizes(env: Env) -> dict[str, int]:
    sizes = {}
    for name in ("block_a_v6", "block_b_v6", "meter_v6"):
        out = json.loads(env.srv.run(["nft", "-j", "list", "set", "inet", "porttrap", name], 60))
        sizes[name] = sum(len(i["set"].get("elem", [])) for i in out["nftables"] if "set" in i)
    return sizes


class Monitor:
    """In the background: the daemon's CPU and RSS every second; its status every 2 s, with
    how long the daemon took to answer (`porttrap status` asks it over the control socket)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        assert env.daemon is not None
        self.process = psutil.Process(env.daemon.pid)
        self.samples: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._every, args=(1.0, self._sample)),
            threading.Thread(target=self._every, args=(2.0, self._status)),
        ]

    def start(self) -> None:
        self.started = time.perf_counter()
        self._last = (self.started, self._cpu())
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join()

    def _every(self, period: float, action: Any) -> None:
        tick = 0
        while not self._done.is_set():
            tick += 1
            self._done.wait(max(0.0, self.started + tick * period - time.perf_counter()))
            if not self._done.is_set():
                action()

    def _cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def _sample(self) -> None:
        now, cpu = time.perf_counter(), self._cpu()
        share = (cpu - self._last[1]) / (now - self._last[0]) * 100
        self._last = (now, cpu)
        rss = self.process.memory_info().rss / 2**20
        self.samples.append(
            {
                "t": round(now - self.started, 1),
                "cpu_percent": round(share, 1),
                "rss_mib": round(rss, 1),
                **self.sample(),
            }
        )

    def sample(self) -> dict[str, Any]:
        """What else to record every second (a subclass's)."""
        return {}

    def _status(self) -> None:
        asked = time.perf_counter()
        status = self.env.json("status")
        self.statuses.append(
            {
                "t": round(asked - self.started, 1),
                "answer_s": round(time.perf_counter() - asked, 2),
                **self.from_status(status),
            }
        )

    def from_status(self, status: dict[str, Any]) -> dict[str, Any]:
        """What to keep of each `porttrap status`: the kernel sensor's figures."""
        kernel = status["kernel"]
        return {
            **kernel["events"],
            "rotations": kernel["block"]["rotations"],
            "fill": kernel["block"]["fill"],
        }


def counter_read_ms(env: Env) -> float:
    """What one read of the sensor's counters costs the daemon (the netlink dump of
    `NftablesBackend.sensor_counters`, in the protected namespace), median of 3, in ms. Before
    the netlink reader (BENCHMARKS.md), this measured libnftables' `list counters`."""
    times = []
    with env.srv.inside():
        objects = NftObjects()
    with contextlib.closing(objects):
        for _ in range(3):
            started = time.perf_counter()
            objects.counters("porttrap")
            times.append((time.perf_counter() - started) * 1000)
    return round(sorted(times)[1], 1)


def kernel_counters(env: Env) -> dict[str, int]:
    out = json.loads(
        env.srv.run(["nft", "-j", "list", "counters", "table", "inet", "porttrap"], 60)
    )
    return {
        i["counter"]["name"]: i["counter"]["packets"] for i in out["nftables"] if "counter" in i
    }


def run(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    scanners = Scanner(env)
    device = scanners.devices[6]
    built = time.perf_counter()
    frames = pool(args.rate * args.seconds, scanners.macs[6], SRV6)
    result: dict[str, Any] = {
        "pool_frames": len(frames),
        "pool_build_s": round(time.perf_counter() - built, 1),
    }
    assert tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT), "the client uses the service first"
    fork = multiprocessing.get_context("fork")
    stop = fork.Event()
    client_in, client_out = fork.Pipe(duplex=False)
    flood_in, flood_out = fork.Pipe(duplex=False)
    result["slab_kib_before"] = meminfo()
    result["counter_read_ms_before"] = counter_read_ms(env)
    user = fork.Process(target=client, args=(env, stop, client_out))
    user.start()
    time.sleep(1.0)
    sock = sender(env.atk, device)
    flooder = fork.Process(target=flood, args=(sock, frames, args.rate, args.seconds, flood_out))
    monitor = Monitor(env)
    during = DuringFlood(scanners, args.seconds)
    scanners.prepare(
        [
            *during.sources,
            "192.0.2.99",
            "2001:db8:1::99",
            "192.0.2.90",
            "192.0.2.91",
            "2001:db8:1::90",
            "2001:db8:1::91",
        ]
    )
    flooder.start()
    monitor.start()
    during.start()
    del frames  # the child has its copy
    result["flood"] = flood_in.recv()
    flooder.join()
    result["flood_ended_s"] = round(time.perf_counter() - monitor.started, 1)
    during.join()
    result["scanners_during_flood"] = during.summary()
    result["scanners_after_flood"] = scanners.after()
    time.sleep(1.0)
    monitor.stop()
    stop.set()
    result["client"] = client_summary(client_in.recv(), monitor.started)
    user.join()
    result["daemon"] = monitor.samples
    result["status"] = monitor.statuses
    result["slab_kib_flood_end"] = meminfo()
    result["kernel_counters"] = kernel_counters(env)
    result["set_elements_end"] = set_sizes(env)
    result["counter_read_ms_end"] = counter_read_ms(env)
    for name in ("block_a_v6", "block_b_v6", "meter_v6"):
        env.srv.run(["nft", "flush", "set", "inet", "porttrap", name], 60)
    time.sleep(3.0)  # set elements are freed after an RCU grace period
    result["slab_kib_after_flushing_sets"] = meminfo()
    return result


def client_summary(attempts: list[tuple[float, float, str]], started: float) -> dict[str, Any]:
    during = [a for a in attempts if a[0] >= started]
    failures = [{"t": round(a[0] - started, 2), "error": a[2]} for a in attempts if a[2]]
    return {
        "attempts": len(attempts),
        "attempts_from_flood_start": len(during),
        "failures": failures,
        "connect_ms": {k: round(v, 2) for k, v in percentiles([a[1] for a in during]).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=50_000, help="SYNs a second")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with environment(CONFIG) as env:
        env.start()
        with Steal() as steal:
            result = run(env, args)
        result["status_final"] = env.json("status")
        env.stop()
        result["daemon_log_problems"] = log_problems(env.log_text())
    print(
        json.dumps(
            {
                "benchmark": "forged SYN flood at trap ports",
                "rate_asked": args.rate,
                "seconds_asked": args.seconds,
                **machine(),
                "cpu_steal_percent": steal.percent,
                **result,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
