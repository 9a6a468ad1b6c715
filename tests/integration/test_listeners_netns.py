"""The served-ports sensor against a real kernel, in a fresh namespace per test: it must see
exactly the sockets the test opens there. The netlink socket and the test's sockets are made
while this thread is inside the namespace (sockets stay in the one they were made in); the
watcher's loop then runs here, in the test's own namespace, and still reads the test's one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from netns import Netns
from porttrap.model import Proto
from porttrap.sensors.listeners import (
    ListenerWatcher,
    Ports,
    current,
    dump,
    open_diag_socket,
    request,
    served_ports,
)
from waiting import PATIENCE, Calls

pytestmark = pytest.mark.kernel

ADDRESS = "192.0.2.1"
WAIT = PATIENCE  # bound on every wait; it ends when the watcher has read the change


@pytest.fixture
def netns(netns_factory: Callable[[], Netns]) -> Netns:
    netns = netns_factory()
    netns.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"])
    return netns


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def udp_socket(stack: ExitStack) -> socket.socket:
    return stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))


def test_current_sees_exactly_the_served_ports_and_no_client_ports(netns: Netns) -> None:
    with ExitStack() as stack:
        with netns.inside():
            server = stack.enter_context(socket.create_server((ADDRESS, 8080)))
            v6 = socket.create_server(("::", 8443), family=socket.AF_INET6, dualstack_ipv6=True)
            stack.enter_context(v6)
            udp_socket(stack).bind(("0.0.0.0", 5353))
            udp_client = udp_socket(stack)
            udp_client.connect((ADDRESS, 5353))
            tcp_client = stack.enter_context(socket.create_connection((ADDRESS, 8080), 5))
            stack.enter_context(server.accept()[0])
            served = current()
        assert served == {Proto.TCP: frozenset({8080, 8443}), Proto.UDP: frozenset({5353})}
        assert udp_client.getsockname()[1] not in served[Proto.UDP]
        assert tcp_client.getsockname()[1] not in served[Proto.TCP]


def test_an_empty_namespace_serves_nothing(netns: Netns) -> None:
    with netns.inside():
        assert current() == {Proto.TCP: frozenset(), Proto.UDP: frozenset()}


def test_a_dump_left_unread_does_not_block_the_next_one(netns: Netns) -> None:
    """The kernel runs one dump per socket at a time (EBUSY); `dump` reads what is left."""
    with ExitStack() as stack, netns.inside():
        stack.enter_context(socket.create_server((ADDRESS, 8080)))
        sock = stack.enter_context(open_diag_socket())
        sock.send(request(77, socket.AF_INET, Proto.TCP))  # a dump never read
        assert served_ports(dump(sock, seq=1).listeners)[Proto.TCP] == {8080}


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], what: str) -> float:
    """Run the loop until `done()`; the seconds it took (at most WAIT, else the test fails)."""

    async def wait() -> float:
        started = loop.time()
        while not done():
            assert loop.time() - started < WAIT, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)
        return loop.time() - started

    return loop.run_until_complete(wait())


def test_the_watcher_reports_a_service_that_starts_and_stops(
    netns: Netns, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read after a change reports it (the reads come every interval: the unit
    tests hold that, with a fake clock; a time bound here would fail on a starved machine)."""
    changes: list[Ports] = []
    watcher = ListenerWatcher(changes.append, interval=0.5)
    reads = Calls(monkeypatch, watcher, "_read")
    with netns.inside():
        first = watcher.start(loop)
    try:
        assert first == {Proto.TCP: frozenset(), Proto.UDP: frozenset()}
        with ExitStack() as stack:
            with netns.inside():  # (the loop is not running: no read is under way)
                stack.enter_context(socket.create_server((ADDRESS, 9090)))
                udp_socket(stack).bind((ADDRESS, 5353))
            after = reads.since()
            run_until(loop, lambda: watcher.ports[Proto.UDP] == {5353}, "the opening")
            assert after() == 1
            assert changes[-1] == {Proto.TCP: frozenset({9090}), Proto.UDP: frozenset({5353})}
        after = reads.since()
        run_until(loop, lambda: not any(watcher.ports.values()), "the closing")
        assert after() == 1
        assert changes[-1] == {Proto.TCP: frozenset(), Proto.UDP: frozenset()}
        assert watcher.failures == 0
    finally:
        watcher.close()
