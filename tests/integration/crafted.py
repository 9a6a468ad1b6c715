"""Crafted probes (scapy) sent from inside a test namespace: any TCP flags, any source address.

Scapy reads the routing table when it is imported, so it runs in a child process started in
the namespace (`ip netns exec`), never in the test process. One child sends a whole batch.
"""

from __future__ import annotations

import json
import subprocess  # noqa: TID251 - test helper
import sys
from dataclasses import asdict, dataclass

from netns import Netns

# nmap's probe for each class, as TCP flags in scapy's letters; "udp" is a datagram.
FLAGS = {"syn": "S", "fin": "F", "null": "", "xmas": "FPU", "ack": "A", "maimon": "FA"}

_SENDER = """
import json, sys
from scapy.all import ICMP, IP, IPv6, TCP, UDP, Raw, conf, send, sr1
conf.verb = 0
probes, answer = json.loads(sys.stdin.read()), sys.argv[1] == "answer"
packets = []
for p in probes:
    ip = IPv6(src=p["source"], dst=p["target"]) if ":" in p["target"] else IP(
        src=p["source"], dst=p["target"])
    if p["kind"] == "udp":
        packets.append(ip / UDP(sport=p["sport"], dport=p["port"]) / Raw(b"probe"))
    elif p["kind"] == "icmp-timestamp":  # IPv4 only (nmap -PP); `port` unused
        packets.append(ip / ICMP(type=13))
    else:
        packets.append(ip / TCP(sport=p["sport"], dport=p["port"], flags=p["flags"], seq=1000))
if answer:
    replies = [sr1(packet, timeout=float(sys.argv[2])) for packet in packets]
    print(json.dumps([None if r is None else (str(r[TCP].flags) if TCP in r else "other")
                      for r in replies]))
else:
    send(packets, inter=float(sys.argv[2]))
"""


@dataclass(frozen=True)
class Probe:
    source: str
    target: str
    port: int
    kind: str  # a key of FLAGS, or "udp", or "raw:<scapy flags>", or "icmp-timestamp"
    sport: int = 40000

    @property
    def flags(self) -> str:
        if self.kind.startswith("raw:"):
            return self.kind[4:]
        return FLAGS.get(self.kind, "")


def _run(ns: Netns, probes: list[Probe], mode: str, value: float) -> str:
    payload = json.dumps([{**asdict(p), "flags": p.flags} for p in probes])
    argv = ["ip", "netns", "exec", ns.name, sys.executable, "-c", _SENDER, mode, str(value)]
    done = subprocess.run(
        argv, input=payload, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"scapy sender failed: {done.stderr}")
    return done.stdout


def send(ns: Netns, probes: list[Probe], inter: float = 0.0) -> None:
    """Send every probe once, `inter` seconds apart."""
    _run(ns, probes, "send", inter)


def answers(ns: Netns, probes: list[Probe], timeout: float = 1.0) -> list[str | None]:
    """Send each probe and wait for its answer: the TCP flags that came back ("SA", "RA"),
    "other" for a non-TCP answer (ICMP), None for silence. `timeout` is how long silence
    lasts: short where silence is expected, generous (PATIENCE) where an answer is (it ends
    the wait as soon as it comes)."""
    found: list[str | None] = json.loads(_run(ns, probes, "answer", timeout))
    return found
