"""Shared by the hold's tests with the daemon (test_hold_netns.py, test_hold_daemon.py,
test_hold_scans.py): the kernel's view of the hold in the protected namespace, fresh attacker
addresses, and which services answered a source, as a capture on the protected side saw it."""

from __future__ import annotations

import json
import subprocess  # noqa: TID251 - test helper
from collections.abc import Iterator
from contextlib import contextmanager

from daemon_env import ATK4, ATK6, SRV4, SRV6, Env
from frames import ACK, SYN, Capture, Recorder, Seen

from netns import Netns

TABLE = "porttrap"
QUEUE = 7022
KERNEL_COUNTERS = ("held", "hold_over", "hold_idle", "hold_suspect")


def hold_ports(env: Env) -> str:
    """The hold's port set as nft lists it; "" while the table is not there."""
    argv = ["nft", "list", "set", "inet", TABLE, "hold_tcp"]
    try:
        return env.srv.run(argv)
    except subprocess.CalledProcessError:  # the table is not there (yet)
        return ""


def damage(env: Env) -> tuple[int, int]:
    """How often the daemon found its table missing, and damaged (its log)."""
    text = env.log_text()
    return text.count("event=firewall-missing"), text.count("event=firewall-damaged")


def kernel_counters(ns: Netns) -> dict[str, int]:
    """The hold's kernel counters (docs/hold.md), read with nft: works while the daemon is
    stopped or dead."""
    found = {}
    for name in KERNEL_COUNTERS:
        listed = json.loads(ns.run(["nft", "-j", "list", "counter", "inet", TABLE, name]))
        counter = next(item["counter"] for item in listed["nftables"] if "counter" in item)
        found[name] = int(counter["packets"])
    return found


def heartbeat(env: Env) -> bool:
    """Whether the daemon's heartbeat element is in `hold_ready` (it is reading the queue)."""
    try:
        return "tcp" in env.srv.run(["nft", "list", "set", "inet", TABLE, "hold_ready"])
    except subprocess.CalledProcessError:
        return False


def fresh_source(env: Env, number: int, family: int) -> str:
    """A new address of the attacker (192.0.2.N or 2001:db8:1::N, hex), on its link: the
    protected side's answers reach it (ARP and neighbour discovery find it)."""
    source = f"2001:db8:1::{number:x}" if family == 6 else f"192.0.2.{number}"
    length, extra = ("64", ["nodad"]) if family == 6 else ("24", [])
    env.atk.run(["ip", "addr", "add", f"{source}/{length}", "dev", env.atk_link[1], *extra])
    return source


def target_of(source: str) -> str:
    return SRV6 if ":" in source else SRV4


def attacker(family: int) -> str:
    return ATK6 if family == 6 else ATK4


@contextmanager
def captured(env: Env) -> Iterator[list[Seen]]:
    """Every TCP segment on the protected side's link to the attacker during the block, in
    the list yielded (filled when the block ends)."""
    capture = Capture(env.srv, env.atk_link[0])
    recorder = Recorder(capture)
    recorder.start()
    frames: list[Seen] = []
    try:
        yield frames
    finally:
        frames.extend(recorder.stop())
        capture.close()


def syn_acks(frames: list[Seen], source: str) -> list[Seen]:
    """The SYN-ACKs the protected host sent to `source`."""
    return [s for s in frames if s.outgoing and s.target == source and s.flags & (SYN | ACK) ==
            SYN | ACK]  # fmt: skip


def syns(frames: list[Seen], source: str) -> list[Seen]:
    """The SYNs (SYN alone of SYN, ACK) that came in from `source`, in order."""
    return [s for s in frames if not s.outgoing and s.source == source and s.flags & (SYN | ACK)
            == SYN]  # fmt: skip
