"""The SSH sessions sensor against a real kernel, in a fresh namespace per test: real TCP
connections to a listener on the port named as the SSH port must reach the callback, and
connections to any other port must not. The netlink socket and the test's sockets are made
while this thread is inside the namespace; the watcher's loop then runs here."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from ipaddress import ip_address

import pytest

from netns import Netns
from porttrap.model import IPAddress
from porttrap.sensors.sessions import SessionWatcher, current
from porttrap.sshsession import PortSource
from waiting import PATIENCE, Calls

pytestmark = pytest.mark.kernel

SERVER_V4, SERVER_V6 = "192.0.2.1", "2001:db8::1"
ADMIN_V4, ADMIN_V6, OTHER = "192.0.2.7", "2001:db8::7", "192.0.2.10"
SSH_PORT, WEB_PORT = 2222, 8080
WAIT = PATIENCE  # bound on every wait; it ends when the watcher has read the change


@pytest.fixture
def netns(netns_factory: Callable[[], Netns]) -> Netns:
    netns = netns_factory()
    for address in (SERVER_V4, ADMIN_V4, OTHER):
        netns.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"])
    for address in (SERVER_V6, ADMIN_V6):
        netns.run(["ip", "addr", "add", f"{address}/128", "dev", "lo", "nodad"])
    return netns


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], what: str) -> float:
    """Run the loop until `done()`; the seconds it took (at most WAIT, else the test fails)."""

    async def wait() -> float:
        started = loop.time()
        while not done():
            assert loop.time() - started < WAIT, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)
        return loop.time() - started

    return loop.run_until_complete(wait())


def dual_stack_server(stack: ExitStack, port: int) -> socket.socket:
    server = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return stack.enter_context(server)


def connect(stack: ExitStack, server: socket.socket, source: str, target: str) -> socket.socket:
    """A TCP connection from `source` to `target` on the server's port; both ends kept open."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    client = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
    client.bind((source, 0))
    client.connect((target, server.getsockname()[1]))
    stack.enter_context(server.accept()[0])
    return client


def addresses(*texts: str) -> frozenset[IPAddress]:
    return frozenset(ip_address(text) for text in texts)


def test_the_watcher_reports_sessions_that_open_and_close(
    netns: Netns, loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read after a change reports it (the reads come every interval: the unit
    tests hold that, with a fake clock; a time bound here would fail on a starved machine)."""
    changes: list[frozenset[IPAddress]] = []
    watcher = SessionWatcher(changes.append, (SSH_PORT,))
    reads = Calls(monkeypatch, watcher, "_read")
    with ExitStack() as servers:
        with netns.inside():
            ssh = dual_stack_server(servers, SSH_PORT)
            web = dual_stack_server(servers, WEB_PORT)
            assert watcher.start(loop) == frozenset()
        try:
            assert watcher.ports is not None and watcher.ports.source is PortSource.CONFIG
            with ExitStack() as stack:
                with netns.inside():
                    connect(stack, web, OTHER, SERVER_V4)  # not SSH: never reported
                    connect(stack, ssh, ADMIN_V4, SERVER_V4)  # ::ffff:192.0.2.7 on the server
                    connect(stack, ssh, ADMIN_V6, SERVER_V6)
                wanted = addresses(ADMIN_V4, ADMIN_V6)
                after = reads.since()  # (the loop is not running: no read is under way)
                run_until(loop, lambda: watcher.peers == wanted, "the sessions")
                assert after() == 1
                assert changes[-1] == wanted
                assert all(OTHER not in {str(a) for a in change} for change in changes)
            after = reads.since()
            run_until(loop, lambda: watcher.peers == frozenset(), "the sessions' end")
            assert after() == 1
            assert changes[-1] == frozenset()
            assert watcher.failures == 0
        finally:
            watcher.close()


def test_current_sees_only_the_server_side_of_ssh_ports(netns: Netns) -> None:
    """The clients' ends (local port ephemeral, peer port SSH_PORT) are no sessions; nor are
    connections to ports outside the set, also when the set is large enough to be filtered
    as a range (65 ports and more)."""
    with ExitStack() as stack, netns.inside():
        ssh = dual_stack_server(stack, SSH_PORT)
        web = dual_stack_server(stack, WEB_PORT)
        connect(stack, ssh, ADMIN_V4, SERVER_V4)
        connect(stack, web, OTHER, SERVER_V4)
        assert current((SSH_PORT,)) == addresses(ADMIN_V4)
        assert current((22, SSH_PORT, WEB_PORT)) == addresses(ADMIN_V4, OTHER)
        assert current((22,)) == frozenset()
        around = tuple(port for port in range(SSH_PORT - 40, SSH_PORT + 40) if port != SSH_PORT)
        assert current(around) == frozenset()
        assert current((*around, SSH_PORT)) == addresses(ADMIN_V4)
