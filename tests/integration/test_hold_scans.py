"""Real scanners against 5 real services (tests/integration/scans.py) with the hold on (issue
17): nmap's default SYN scan (the 1,000 most popular ports) at -T4 and -T5, and masscan
over every port at 1,000 and 10,000 packets a second, each from a fresh source address.

What a scan revealed is read from a capture on the protected side: the services that sent the
scanner a SYN-ACK. A failure shows the scan's probes up to its first trap, with the time of
each after the first: what the hold could and could not hide.

A scan is stopped once its source is blocked in the kernel: from then on every packet of it is
dropped before the hold, so the rest of the scan cannot reveal anything (and masscan at 1,000
packets a second would take 65 s to the end).
"""

from __future__ import annotations

import math
import secrets
import subprocess  # noqa: TID251 - test helper
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_env import SRV4, SRV6, Env
from frames import Seen, mac_of
from hold_env import captured, fresh_source, heartbeat, syn_acks, syns
from scans import SERVICES, is_trap, start_services

from waiting import PATIENCE, bounded, wait_until

pytestmark = pytest.mark.kernel

# Not the default 5 ms: how fast a shared, noisy VM runs the daemon must not decide a test. At
# 50 ms the daemon has 25 ms of margin (`within_reach`); what 5 ms hides is a benchmark
# (bench/hold_scan.py, BENCHMARKS.md).
HOLD_MS = 50
CONFIG = f'[traps]\nmode = "{{mode}}"\n[kernel]\nhold = "{HOLD_MS}ms"\n'
SCAN_TIME = 60.0  # seconds: a bound for nmap, which ends within seconds
# masscan at 1,000 a second goes through every port in 65 s: it is stopped at its block, or
# after this long (a quarter of the ports at 1,000 a second; every port at 10,000)
MASSCAN_TIME = 15.0


@dataclass(frozen=True)
class Outcome:
    scan: str
    source: str
    note: str  # masscan's seed
    revealed: list[int]  # the services that answered SYN-ACK
    # Each service probed before the scan's first trap: how long before it (ms)
    lead_ms: dict[int, float]
    first_trap: str  # "port N at T ms (probe K)", or "none"
    probed: int  # ports probed

    def __str__(self) -> str:
        leads = ", ".join(f"{port} {ms:.3f} ms" for port, ms in self.lead_ms.items())
        return (f"{self.scan} from {self.source} {self.note}: revealed {self.revealed}; "
                f"{self.probed} ports probed, first trap {self.first_trap}; services probed "
                f"before it (how long before): {leads or 'none'}")  # fmt: skip


def blocked(env: Env, source: str) -> bool:
    """Whether the kernel drops everything from `source` now (blocked or banned)."""
    version = 6 if ":" in source else 4
    sets = [f"block_a_v{version}", f"block_b_v{version}", f"ban_v{version}"]
    return any(env.in_set(name, source) for name in sets)


def nmap(timing: int) -> Callable[[Env, str, Path], str]:
    """nmap's default SYN scan, bounded: --min-rate keeps it going at the pace it starts with
    when every probe goes unanswered (a blocked source's are), --max-retries 1."""

    def run(env: Env, source: str, tmp: Path) -> str:
        target = SRV6 if ":" in source else SRV4
        argv = ["nmap", "-sS", f"-T{timing}", "--max-retries", "1", "--min-rate", "5000",
                "--host-timeout", f"{SCAN_TIME:.0f}s", "-n", "-oX", "-", "-S", source,
                "-e", env.atk_link[1], *(["-6"] if ":" in source else []), target]  # fmt: skip
        env.atk.run(argv, timeout=SCAN_TIME + 30)
        return ""

    return run


def masscan(rate: int) -> Callable[[Env, str, Path], str]:
    """masscan over every port, in an order of a random seed (given in a failure's message),
    stopped once its source is blocked (or at MASSCAN_TIME)."""

    def run(env: Env, source: str, tmp: Path) -> str:
        seed = secrets.randbelow(1 << 32)
        mac = mac_of(env.srv, env.atk_link[0]).hex("-")
        argv = ["ip", "netns", "exec", env.atk.name, "masscan", "-p1-65535", SRV4, "--rate",
                str(rate), "--wait", "1", "--adapter", env.atk_link[1], "--adapter-ip", source,
                "--router-mac", mac, "--seed", str(seed)]  # fmt: skip
        with (tmp / f"masscan-{source}.log").open("w") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=log, cwd=tmp)
        try:
            bounded(lambda: blocked(env, source) or process.poll() is not None, MASSCAN_TIME)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
        return f"seed {seed}"

    return run


# name: (how to run it, address family)
SCANS = {
    "nmap -sS -T4": (nmap(4), 4),
    "nmap -sS -T5": (nmap(5), 4),
    "masscan -p1-65535 --rate 1000": (masscan(1000), 4),
    "masscan -p1-65535 --rate 10000": (masscan(10000), 4),
    "nmap -6 -sS -T4": (nmap(4), 6),
}


def outcome(frames: list[Seen], name: str, source: str, note: str, advanced: bool) -> Outcome:
    """What the scan revealed, and the order of its probes that explains it."""
    first: dict[int, int] = {}
    for seen in syns(frames, source):
        first.setdefault(seen.dport, seen.at)
    ordered = sorted(first.items(), key=lambda item: item[1])
    trap = next(((n, port, at) for n, (port, at) in enumerate(ordered, 1)
                 if is_trap(advanced, port)), None)  # fmt: skip
    trap_at = trap[2] if trap else None  # no trap: nothing is within the hold's reach
    start = ordered[0][1] if ordered else 0
    return Outcome(
        scan=name,
        source=source,
        note=note,
        revealed=sorted({s.sport for s in syn_acks(frames, source)} & set(SERVICES)),
        lead_ms={
            port: math.inf if trap_at is None else (trap_at - at) / 1e6
            for port, at in ordered
            if port in SERVICES and (trap_at is None or at < trap_at)
        },
        first_trap=f"port {trap[1]} at {(trap[2] - start) / 1e6:.3f} ms (probe {trap[0]})"
        if trap
        else "none",
        probed=len(first),
    )


def scan(env: Env, name: str, source: str, advanced: bool, tmp: Path) -> Outcome:
    with captured(env) as frames:
        note = SCANS[name][0](env, source, tmp)
        wait_until(lambda: env.json("status")["hold"]["held_now"] == 0, PATIENCE, "none held")
    return outcome(frames, name, source, note, advanced)


def scans(env_factory: Callable[[str], Env], tmp: Path, mode: str) -> list[Outcome]:
    """Every scan of SCANS, each from a fresh address, against one daemon in `mode`."""
    env = env_factory(CONFIG.format(mode=mode))
    start_services(env)
    env.start()
    wait_until(lambda: heartbeat(env), PATIENCE, "the daemon reads the hold's queue")
    found = []
    for n, (name, (_, family)) in enumerate(SCANS.items()):
        found.append(scan(env, name, fresh_source(env, 10 + n, family), mode == "advanced", tmp))
        print(found[-1])
    return found


def within_reach(outcome: Outcome) -> bool:
    """Whether the scan touched its first trap less than half the hold after its first probe
    of a service (or probed none before it): every SYN held then is still held, and none of
    its services may be seen. (The other half is margin for the daemon. Later, the source
    is released at the end of its first SYN's hold, and its next SYNs are not held.)"""
    return max(outcome.lead_ms.values(), default=0.0) < HOLD_MS / 2


@pytest.mark.parametrize("mode", ["advanced", "stealth"])
def test_scans_reveal_no_service_the_hold_can_reach(
    env_factory: Callable[[str], Env], tmp_path: Path, mode: str
) -> None:
    """Advanced mode: every unserved port is a trap, so a scanner's next probe after one to
    a service touches a trap at once (nmap's first burst, masscan's uniform order); every
    scan measured here was within reach, and revealed nothing. Stealth mode with the
    built-in list (11 ports): nmap's default scan sends its 28 popular ports (22, 80, 443,
    8080 among them, no trap) in its first millisecond and comes to its first trap 0.6 to
    54 ms in; masscan comes to its first trap after 1/12 of all ports on average. What is
    probed earlier than the hold before the first trap is seen: the hold cannot reach it,
    and it is no failure here. Nothing is seen after the first trap (the block)."""
    outcomes = scans(env_factory, tmp_path, mode)
    assert [str(o) for o in outcomes if o.revealed and within_reach(o)] == []
