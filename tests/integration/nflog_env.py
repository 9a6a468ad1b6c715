"""A protected namespace that logs probes to NFLOG group 7, and a scanner joined to it by a veth.

Shared by tests/integration/test_nflog.py and tests/data/nflog/record.py (which records the
kernel's messages for the unit tests). Everything happens inside the two namespaces.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable
from pathlib import Path

from netns import Netns

GROUP = 7
PORT = 2323  # TCP and UDP: logged with PREFIX, then dropped
UDP_PREFIX = "porttrap-udp:"
PREFIX = "porttrap:"
BARE_PORT = 2424  # TCP: logged without a prefix
PROTECTED_V4, SCANNER_V4 = "192.0.2.1", "192.0.2.2"
PROTECTED_V6, SCANNER_V6 = "2001:db8::1", "2001:db8::2"

RULESET = f"""
table inet pttest {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {PORT} log prefix "{PREFIX}" group {GROUP} drop
        udp dport {PORT} log prefix "{UDP_PREFIX}" group {GROUP} drop
        tcp dport {BARE_PORT} log group {GROUP} drop
    }}
}}
"""

# argv[1]: "tcp" or "udp"; argv[2]: target address; argv[3]: port; argv[4]: how many
PROBE_SCRIPT = """
import socket, sys
kind, target, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in target else socket.AF_INET
for number in range(count):
    if kind == "udp":
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"probe %d" % number, (target, port))
        continue
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)  # the SYN is dropped: one is enough, no retransmission
        try:
            sock.connect((target, port))
        except OSError:
            pass
"""


def protected_pair(make: Callable[[], Netns], ruleset_dir: Path) -> tuple[Netns, Netns]:
    """(protected, scanner): the ruleset loaded in `protected`, a veth between them."""
    protected, scanner = make(), make()
    protected.veth(
        scanner,
        [f"{PROTECTED_V4}/24", f"{PROTECTED_V6}/64"],
        [f"{SCANNER_V4}/24", f"{SCANNER_V6}/64"],
    )
    ruleset = ruleset_dir / "pttest.nft"
    ruleset.write_text(RULESET)
    protected.run(["nft", "-f", str(ruleset)])
    return protected, scanner


def probe(scanner: Netns, kind: str, target: str, port: int = PORT, count: int = 1) -> None:
    """Send `count` TCP SYNs (connects that time out) or UDP datagrams from `scanner`."""
    argv = [sys.executable, "-c", PROBE_SCRIPT, kind, target, str(port), str(count)]
    scanner.run(argv, timeout=60)


def ip_source(payload: bytes) -> str:
    """The source address in an IPv4 or IPv6 header."""
    if payload[0] >> 4 == 4:
        return str(ipaddress.IPv4Address(payload[12:16]))
    return str(ipaddress.IPv6Address(payload[8:24]))


def ip_protocol_and_dport(payload: bytes) -> tuple[int, int]:
    """(protocol, destination port) of a TCP or UDP packet without IPv6 extension headers."""
    if payload[0] >> 4 == 4:
        protocol, start = payload[9], (payload[0] & 0x0F) * 4
    else:
        protocol, start = payload[6], 40
    return protocol, int.from_bytes(payload[start + 2 : start + 4], "big")
