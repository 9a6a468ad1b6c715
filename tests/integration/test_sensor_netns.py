"""Sensors against a real kernel, inside a network namespace made for each test.

Each test runs a small script under `ip netns exec` (namespaces from the `netns_factory`
fixture); the script prints one JSON line with what it saw. Nothing here touches the root
namespace's addresses.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from netns import Netns

pytestmark = pytest.mark.kernel

TIMEOUT = 60  # per script; the scripts stop sooner on their own


def run_script(netns: Netns, script: str, *args: str) -> Any:
    """Run a Python script inside `netns`; the JSON of its last output line."""
    output = netns.run([sys.executable, "-c", script, *args], timeout=TIMEOUT)
    return json.loads(output.strip().splitlines()[-1])


SEND_SCRIPT = """
import socket
for target in ("192.0.2.1", "203.0.113.5", "2001:db8::1", "2001:db8::5"):
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"probe", (target, 40161))
"""

# The trap listens in one namespace; the datagrams come over a veth from another one.
UDP_SCRIPT = """
import asyncio, json, subprocess, sys
from porttrap.clock import SystemClock
from porttrap.config.schema import Trap
from porttrap.model import Proto
from porttrap.sensors.sockets import SocketTraps

async def main():
    hits = asyncio.Queue()
    traps = SocketTraps([Trap(Proto.UDP, 40161)], hits.put_nowait, SystemClock())
    report = traps.start(asyncio.get_running_loop())
    sender = ["ip", "netns", "exec", sys.argv[1], sys.executable, "-c", sys.argv[2]]
    subprocess.run(sender, check=True, timeout=20)
    seen = [await asyncio.wait_for(hits.get(), 20) for _ in range(4)]
    traps.close()
    rows = sorted([str(h.source), str(h.local), h.port, h.kind] for h in seen)
    print(json.dumps({"set": [b.address for b in report.set], "hits": rows}))

asyncio.run(main())
"""


def test_udp_hits_on_a_wildcard_bind_carry_the_real_local_address(
    netns_factory: Callable[[], Netns],
) -> None:
    host, scanner = netns_factory(), netns_factory()
    host.veth(
        scanner,
        ["192.0.2.1/24", "203.0.113.5/24", "2001:db8::1/64", "2001:db8::5/64"],
        ["192.0.2.2/24", "203.0.113.6/24", "2001:db8::2/64"],
    )
    result = run_script(host, UDP_SCRIPT, scanner.name, SEND_SCRIPT)
    assert result["set"] == ["0.0.0.0", "::"]
    assert result["hits"] == [  # [source, local, port, kind]
        ["192.0.2.2", "192.0.2.1", 40161, "udp"],
        ["2001:db8::2", "2001:db8::1", 40161, "udp"],
        ["2001:db8::2", "2001:db8::5", 40161, "udp"],
        ["203.0.113.6", "203.0.113.5", 40161, "udp"],
    ]


WATCH_SCRIPT = """
import asyncio, json, subprocess
from porttrap.sensors.hostaddrs import AddressWatcher

ADDRESS = "198.51.100.9"

async def main():
    changes = asyncio.Queue()
    watcher = AddressWatcher(changes.put_nowait)
    first = watcher.start(asyncio.get_running_loop())

    async def change_until(present):
        for _ in range(100):
            seen = await asyncio.wait_for(changes.get(), 20)
            if (ADDRESS in {str(a) for a in seen}) == present:
                return sorted(str(a) for a in seen)
        raise AssertionError("no matching change")

    subprocess.run(["ip", "addr", "add", ADDRESS + "/32", "dev", "lo"], check=True, timeout=20)
    added = await change_until(True)
    subprocess.run(["ip", "addr", "del", ADDRESS + "/32", "dev", "lo"], check=True, timeout=20)
    removed = await change_until(False)
    watcher.close()
    print(json.dumps({"first": sorted(str(a) for a in first), "added": added, "removed": removed}))

asyncio.run(main())
"""


def test_address_watcher_sees_an_address_come_and_go(
    netns_factory: Callable[[], Netns],
) -> None:
    result = run_script(netns_factory(), WATCH_SCRIPT)
    assert result == {
        "first": ["127.0.0.1", "::1"],
        "added": ["127.0.0.1", "198.51.100.9", "::1"],
        "removed": ["127.0.0.1", "::1"],
    }
