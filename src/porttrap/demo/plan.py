"""What the demo builds and runs: its addresses, ports, timings and porttrap configuration.

Documentation addresses only (RFC 5737, RFC 3849), inside the demo's own namespaces:

    scanner  192.0.2.66   2001:db8::66  ---- veth ----  host  192.0.2.1  2001:db8::1
                                                              service on 8080, traps
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HOST4, HOST6 = "192.0.2.1", "2001:db8::1"
SCANNER4, SCANNER6 = "192.0.2.66", "2001:db8::66"
PREFIX4, PREFIX6 = 24, 64
VETH_HOST, VETH_SCANNER = "demo-host", "demo-scanner"  # they exist in the demo's namespaces only
SERVICE_PORT = 8080
TRAPS_TCP = (23, 2323, 3389)  # telnet, its alternate, RDP: ports scanners try first
TRAPS_UDP = (161,)  # SNMP
PERMANENT_AFTER = 3  # the third ban is for good
TABLE = "porttrap"  # the daemon's nftables table, in the host namespace
SERVICE_REPLY = b"hello from the demo service\n"

# A real service in the host namespace: answers every connection, IPv4 and IPv6.
SERVICE = f"""
import socket
server = socket.create_server(("::", {SERVICE_PORT}), family=socket.AF_INET6, dualstack_ipv6=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall({SERVICE_REPLY!r})
"""


@dataclass(frozen=True, slots=True)
class Plan:
    """How long the first ban lasts; the n-th lasts `ban_time` x n^2 (port_trap's quadratic
    escalation), the third is permanent."""

    ban_time: int = 4

    def length(self, n: int) -> int:
        """Seconds the n-th temporary ban lasts."""
        return self.ban_time * n * n

    def config(self, state_dir: Path) -> str:
        """The daemon's configuration file."""
        return "\n".join(
            [
                "# written by `porttrap demo`; removed with the demo's temporary directory",
                f"state_dir = {json.dumps(str(state_dir))}",
                "",
                "[traps]",
                'mode = "connect"',
                f"tcp = {json.dumps([str(p) for p in TRAPS_TCP])}",
                f"udp = {json.dumps([str(p) for p in TRAPS_UDP])}",
                "",
                "[ban]",
                f'time = "{self.ban_time}s"',
                'escalation = "quadratic"',
                f"permanent_after = {PERMANENT_AFTER}",
                "confirm = 2",
                "",
                "[firewall]",
                'backend = "nftables"',
                f'table = "{TABLE}"',
                "",
            ]
        )


DEFAULT = Plan()
QUICK = Plan(ban_time=2)
