"""Packet marks on connect-mode UDP traps against a real kernel: an nft rule in the trap
namespace's own table marks datagrams as porttrap's rules will (MARK_CLIENT, MARK_PEER), and
the hits must say so. Two namespaces joined by a veth; the trap sockets are made while this
thread is inside the trap namespace, the senders inside the other; the loop runs here."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from netns import Netns
from porttrap.config.schema import Trap
from porttrap.model import Hit, Proto
from porttrap.sensors.sockets import SO_MARK, SocketTraps, enable_marks
from porttrap.sensorspec import MARK_CLIENT, MARK_PEER
from porttrap.testing import FakeClock

pytestmark = pytest.mark.kernel

TRAP_V4, TRAP_V6, SENDER_V4, SENDER_V6 = "192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2"
CLIENT_PORT, PEER_PORT, OTHER_PORT, PLAIN_PORT = 4444, 4445, 4446, 4447
RULES = f"""
table inet t {{
    chain p {{
        type filter hook prerouting priority 0; policy accept;
        udp dport {CLIENT_PORT} meta mark set {MARK_CLIENT:#x}
        udp dport {PEER_PORT} meta mark set {MARK_PEER:#x}
        udp dport {OTHER_PORT} meta mark set 0x1
    }}
}}
"""
WAIT = 10.0


@pytest.fixture
def pair(netns_factory: Callable[[], Netns], tmp_path: Path) -> tuple[Netns, Netns]:
    """(the trap's namespace, with the marking rules in its own table; the sender's)."""
    trap, sender = netns_factory(), netns_factory()
    trap.veth(sender, [f"{TRAP_V4}/24", f"{TRAP_V6}/64"], [f"{SENDER_V4}/24", f"{SENDER_V6}/64"])
    rules = tmp_path / "marks.nft"
    rules.write_text(RULES)
    trap.run(["nft", "-f", str(rules)])
    return trap, sender


def send(sender: Netns, target: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with sender.inside(), socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"probe", (target, port))


async def hits_for(
    pair: tuple[Netns, Netns], traps: list[Trap], targets: list[tuple[str, int]]
) -> list[Hit]:
    """The hits of one datagram to each of `targets`, sent from the second namespace to
    `traps` in the first."""
    trap, sender = pair
    queue: asyncio.Queue[Hit] = asyncio.Queue()
    sensor = SocketTraps(traps, queue.put_nowait, FakeClock())
    with trap.inside():
        report = sensor.start(asyncio.get_running_loop())
    try:
        assert not report.skipped, report.skipped
        for target, port in targets:
            send(sender, target, port)
        return [await asyncio.wait_for(queue.get(), WAIT) for _ in targets]
    finally:
        sensor.close()


def test_udp_hits_carry_the_client_and_peer_marks(pair: tuple[Netns, Netns]) -> None:
    ports = (CLIENT_PORT, PEER_PORT, OTHER_PORT, PLAIN_PORT)
    traps = [Trap(Proto.UDP, port) for port in ports]
    targets = [(address, port) for address in (TRAP_V4, TRAP_V6) for port in ports]
    hits = asyncio.run(hits_for(pair, traps, targets))
    flags = {(str(hit.local), hit.port): (hit.client, hit.peer) for hit in hits}
    for address in (TRAP_V4, TRAP_V6):
        assert flags[address, CLIENT_PORT] == (True, False)
        assert flags[address, PEER_PORT] == (False, True)
        assert flags[address, OTHER_PORT] == (False, False)  # another program's mark
        assert flags[address, PLAIN_PORT] == (False, False)
    assert {str(hit.source) for hit in hits} == {SENDER_V4, SENDER_V6}
    assert {hit.kind for hit in hits} == {"udp"}


def test_the_kernel_sends_the_mark_as_a_native_u32(pair: tuple[Netns, Netns]) -> None:
    trap, sender = pair
    with trap.inside(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert enable_marks(sock)
        sock.bind(("0.0.0.0", CLIENT_PORT))
        sock.settimeout(WAIT)
        send(sender, TRAP_V4, CLIENT_PORT)
        _, ancillary, _, _ = sock.recvmsg(16, socket.CMSG_SPACE(4))
    assert ancillary == [(socket.SOL_SOCKET, SO_MARK, MARK_CLIENT.to_bytes(4, sys.byteorder))]
