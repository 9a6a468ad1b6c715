"""A protected namespace that queues the SYNs to PORT to NFQUEUE 7 (with `bypass`), and a
scanner joined to it by a veth.

Shared by tests/integration/test_nfqueue.py and tests/data/nfqueue/record_nfqueue.py (which records
the kernel's messages for the unit tests). Everything happens inside the two namespaces.
"""

from __future__ import annotations

import subprocess  # noqa: TID251 - test helper
from collections.abc import Callable
from pathlib import Path

from crafted import Probe

from netns import Netns

QUEUE = 7
PORT = 8080  # its SYNs are queued
PROTECTED_V4, SCANNER_V4 = "192.0.2.1", "192.0.2.2"
PROTECTED_V6, SCANNER_V6 = "2001:db8::1", "2001:db8::2"

RULESET = f"""
table inet pthold {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {PORT} tcp flags & (syn | ack) == syn queue num {QUEUE} bypass
    }}
}}
"""
# The same rule through the xtables NFQUEUE target (nft's compat layer), for kernels built
# without CONFIG_NFT_QUEUE (nft then fails with ENOENT; this CI kernel is one of them).
XT_RULE = f"INPUT -p tcp --dport {PORT} --tcp-flags SYN,ACK SYN -j NFQUEUE --queue-num {QUEUE}"
XT_RULE += " --queue-bypass"


def protected_pair(make: Callable[[], Netns], ruleset_dir: Path) -> tuple[Netns, Netns]:
    """(protected, scanner): the SYNs to PORT queued in `protected`, a veth between them."""
    protected, scanner = make(), make()
    protected.veth(
        scanner,
        [f"{PROTECTED_V4}/24", f"{PROTECTED_V6}/64"],
        [f"{SCANNER_V4}/24", f"{SCANNER_V6}/64"],
    )
    queue_syns(protected, ruleset_dir / "pthold.nft")
    return protected, scanner


def queue_syns(netns: Netns, ruleset: Path) -> None:
    """Queue the SYNs to PORT: with nft's queue statement, else with the xtables target."""
    ruleset.write_text(RULESET)
    try:
        netns.run(["nft", "-f", str(ruleset)])
    except subprocess.CalledProcessError:
        for tool in ("iptables-nft", "ip6tables-nft"):
            netns.run([tool, "-A", *XT_RULE.split()])


def syn(target: str) -> Probe:
    """A crafted SYN from the scanner to `target`'s PORT."""
    return Probe(SCANNER_V6 if ":" in target else SCANNER_V4, target, PORT, "syn")
