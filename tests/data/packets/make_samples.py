"""Records samples.json: real packets built with scapy, each beside the Probe that
porttrap.sensors.classify must make of it. The expected results are written here by hand, never
by running classify. The samples are recorded once and kept; rerun only to add or change cases:

    .venv/bin/python tests/data/packets/make_samples.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.packet import Raw

OUT = Path(__file__).with_name("samples.json")
SOURCE4, TARGET4 = "198.51.100.7", "192.0.2.1"
SOURCE6, TARGET6 = "2001:db8::7", "2001:db8::1"
SPORT = 40123

# (nmap flags, expected kind) for every TCP class, sent on both families.
TCP_CLASSES = [
    ("syn", "S", "syn"),
    ("syn-ecn", "SEC", "syn"),  # ECE and CWR are ignored when classifying, kept in flags
    ("fin", "F", "fin"),
    ("null", "", "null"),
    ("xmas", "FPU", "xmas"),
    ("ack", "A", "ack"),  # nmap -sW sends the same packet
    ("maimon", "FA", "maimon"),
    ("synack", "SA", "other"),
    ("rst", "R", "other"),
    ("all-flags", "FSRPAUEC", "other"),
]


def tcp(flags: str, dport: int = 22) -> Any:
    return TCP(sport=SPORT, dport=dport, flags=flags, seq=1000, window=1024)


def probe(family: str, kind: str, flags: str, dport: int = 22, proto: str = "tcp") -> Any:
    source, destination = (SOURCE4, TARGET4) if family == "ipv4" else (SOURCE6, TARGET6)
    return {
        "source": source,
        "destination": destination,
        "source_port": SPORT,
        "destination_port": dport,
        "proto": proto,
        "kind": kind,
        "flags": flags,
    }


def ipv4(**fields: Any) -> Any:
    return IP(src=SOURCE4, dst=TARGET4, id=4242, **fields)


def ipv6() -> Any:
    return IPv6(src=SOURCE6, dst=TARGET6)


def by_class() -> list[tuple[str, str, Any, Any]]:
    cases = []
    for name, flags, kind in TCP_CLASSES:
        cases.append((f"ipv4-{name}", "ipv4", ipv4() / tcp(flags), probe("ipv4", kind, flags)))
        cases.append((f"ipv6-{name}", "ipv6", ipv6() / tcp(flags), probe("ipv6", kind, flags)))
    for family, layer in (("ipv4", ipv4()), ("ipv6", ipv6())):
        datagram = layer / UDP(sport=SPORT, dport=161) / Raw(b"\x30\x00")
        cases.append((f"{family}-udp", family, datagram, probe(family, "udp", "", 161, "udp")))
    return cases


def ipv4_layouts() -> list[tuple[str, str, Any, Any]]:
    options = [IPOption_RR(routers=["192.0.2.254"]), IPOption_NOP()]  # IHL 7: 28 bytes of header
    fragment = ipv4(flags="MF", frag=0) / tcp("S", 443) / Raw(b"x" * 16)
    later = ipv4(frag=3, proto=6) / Raw(b"y" * 24)  # offset 24 bytes: no TCP header here
    return [
        (
            "ipv4-options-syn",
            "ipv4",
            ipv4(options=options) / tcp("S", 25),
            probe("ipv4", "syn", "S", 25),
        ),
        ("ipv4-first-fragment-syn", "ipv4", fragment, probe("ipv4", "syn", "S", 443)),
        ("ipv4-later-fragment", "ipv4", later, None),
        ("ipv4-icmp-echo", "ipv4", ipv4() / ICMP(), None),
    ]


def ipv6_layouts() -> list[tuple[str, str, Any, Any]]:
    hop_dest = ipv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / tcp("S", 80)
    routing = ipv6() / IPv6ExtHdrRouting(addresses=["2001:db8::fe"]) / tcp("FPU", 80)
    first = ipv6() / IPv6ExtHdrFragment(id=7, m=1, offset=0) / tcp("F", 443) / Raw(b"x" * 16)
    later = ipv6() / IPv6ExtHdrFragment(id=7, nh=6, m=0, offset=3) / Raw(b"y" * 24)
    # AH counts its length in 4-octet units minus 2: 12 fixed octets + 12 of ICV = 6 - 2 = 4.
    ah = ipv6() / AH(nh=6, payloadlen=4, spi=0x100, seq=1, icv=b"\x00" * 12) / tcp("A", 22)
    no_next = ipv6() / IPv6ExtHdrDestOpt(nh=59)
    return [
        ("ipv6-hop-by-hop-dest-options-syn", "ipv6", hop_dest, probe("ipv6", "syn", "S", 80)),
        ("ipv6-routing-xmas", "ipv6", routing, probe("ipv6", "xmas", "FPU", 80)),
        ("ipv6-first-fragment-fin", "ipv6", first, probe("ipv6", "fin", "F", 443)),
        ("ipv6-later-fragment", "ipv6", later, None),
        ("ipv6-ah-ack", "ipv6", ah, probe("ipv6", "ack", "A", 22)),
        ("ipv6-no-next-header", "ipv6", no_next, None),
        ("ipv6-icmp-echo", "ipv6", ipv6() / ICMPv6EchoRequest(), None),
    ]


def main() -> None:
    entries = [
        {"name": name, "family": family, "hex": bytes(packet).hex(), "expected": expected}
        for name, family, packet, expected in by_class() + ipv4_layouts() + ipv6_layouts()
    ]
    OUT.write_text(json.dumps(entries, indent=1) + "\n")
    print(f"wrote {len(entries)} samples to {OUT}")


if __name__ == "__main__":
    main()
