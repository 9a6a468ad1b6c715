"""The catch-all trap for redirected client SYNs against a real kernel: an nft nat rule in the
trap namespace's own tables redirects port 2323 to the catch-all port, as porttrap's rules do
for a recent client's SYNs, and a connection from another namespace to 2323 must be a hit on
2323 at the address it was aimed at, with client=True; IPv4 and IPv6. The listeners are made
while this thread is inside the trap namespace, the clients inside the other."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from netns import Netns
from porttrap.model import BoundTrap, Hit, Proto
from porttrap.sensors.catchall import ROLE, catch_all
from porttrap.testing import FakeClock

pytestmark = pytest.mark.kernel

TRAP_V4, TRAP_V6, CLIENT_V4, CLIENT_V6 = "192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2"
CATCH_ALL, AIMED = 65023, 2323
BANNER = b"SSH-2.0-OpenSSH_9.2p1\r\n"
RULES = "\n".join(
    f"""
table {family} t {{
    chain p {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport {AIMED} redirect to :{CATCH_ALL}
    }}
}}"""
    for family in ("ip", "ip6")
)
WAIT = 10.0


def pair(netns_factory: Callable[[], Netns]) -> tuple[Netns, Netns]:
    trap, client = netns_factory(), netns_factory()
    trap.veth(client, [f"{TRAP_V4}/24", f"{TRAP_V6}/64"], [f"{CLIENT_V4}/24", f"{CLIENT_V6}/64"])
    return trap, client


@pytest.fixture
def redirecting(netns_factory: Callable[[], Netns], tmp_path: Path) -> tuple[Netns, Netns]:
    """(the trap's namespace, whose own tables redirect AIMED to CATCH_ALL; the client's)."""
    trap, client = pair(netns_factory)
    rules = tmp_path / "redirect.nft"
    rules.write_text(RULES)
    trap.run(["nft", "-f", str(rules)])
    return trap, client


def connect(client: Netns, target: str, port: int) -> socket.socket:
    with client.inside():
        return socket.create_connection((target, port), timeout=WAIT)


async def hits(trap: Netns, client: Netns, targets: list[tuple[str, int]]) -> list[Hit]:
    """A connection from `client` to each of `targets`, with the catch-all on in `trap`: the
    hits, and each client must read the banner, then the end of the connection."""
    queue: asyncio.Queue[Hit] = asyncio.Queue()
    sensor = catch_all(CATCH_ALL, queue.put_nowait, FakeClock(), BANNER)
    with trap.inside():
        report = sensor.start(asyncio.get_running_loop())
    try:
        assert report.set == [BoundTrap(Proto.TCP, CATCH_ALL, a) for a in ("0.0.0.0", "::")]
        seen = []
        for target, port in targets:
            with connect(client, target, port) as conn:
                seen.append(await asyncio.wait_for(queue.get(), WAIT))
                assert conn.recv(len(BANNER) + 1) == BANNER
                assert conn.getsockname()[1] == seen[-1].source_port
        return seen
    finally:
        sensor.close()


def as_row(hit: Hit) -> tuple[str, str, int, str, bool, bool]:
    return (str(hit.source), str(hit.local), hit.port, hit.kind, hit.client, hit.peer)


def test_a_redirected_connection_is_a_client_hit_on_the_port_it_was_aimed_at(
    redirecting: tuple[Netns, Netns], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "porttrap")
    trap, client = redirecting
    seen = asyncio.run(hits(trap, client, [(TRAP_V4, AIMED), (TRAP_V6, AIMED)]))
    assert [r.getMessage() for r in caplog.records if "event=trap-set" in r.getMessage()] == [
        f"event=trap-set proto=tcp port={CATCH_ALL} address={a} role={ROLE}"
        for a in ("0.0.0.0", "::")
    ]
    assert [as_row(hit) for hit in seen] == [
        (CLIENT_V4, TRAP_V4, AIMED, "connect", True, False),
        (CLIENT_V6, TRAP_V6, AIMED, "connect", True, False),
    ]
    assert all(hit.verified for hit in seen)  # a completed handshake: the source is proven


def test_a_connection_to_the_catch_all_port_itself_is_a_client_hit_there(
    redirecting: tuple[Netns, Netns], netns_factory: Callable[[], Netns]
) -> None:
    """With conntrack on (the nat rules), the original destination is the catch-all port;
    without it (a namespace without rules), there is none to read: the same hit."""
    trap, client = redirecting
    bare_trap, bare_client = pair(netns_factory)
    targets = [(TRAP_V4, CATCH_ALL), (TRAP_V6, CATCH_ALL)]
    for where in ((trap, client), (bare_trap, bare_client)):
        seen = asyncio.run(hits(*where, targets))
        assert [as_row(hit) for hit in seen] == [
            (CLIENT_V4, TRAP_V4, CATCH_ALL, "connect", True, False),
            (CLIENT_V6, TRAP_V6, CATCH_ALL, "connect", True, False),
        ]
