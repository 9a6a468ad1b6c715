"""The gateways sensor against a real kernel, in fresh namespaces joined by a veth: routes added
and deleted there with `ip route` must reach the watcher's callback. The watcher's netlink
sockets are made while this thread is inside the namespace; its loop then runs here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from ipaddress import ip_address

import pytest

from netns import Netns
from porttrap.model import IPAddress
from porttrap.sensors.routes import RouteWatcher, current
from waiting import PATIENCE, Calls

pytestmark = pytest.mark.kernel

WAIT = PATIENCE  # bound on every wait; it ends when the watcher has read the change
V4_GATEWAY, V6_GATEWAY = "192.0.2.254", "fe80::1"


@pytest.fixture
def host(netns_factory: Callable[[], Netns]) -> tuple[Netns, str]:
    """A namespace with a link to another one (192.0.2.1/24, 2001:db8::1/64); its device."""
    host, router = netns_factory(), netns_factory()
    device, _ = host.veth(router, ["192.0.2.1/24", "2001:db8::1/64"],
                          [f"{V4_GATEWAY}/24", "2001:db8::fe/64"])  # fmt: skip
    return host, device


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def addresses(*texts: str) -> frozenset[IPAddress]:
    return frozenset(ip_address(text) for text in texts)


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], what: str) -> float:
    """Run the loop until `done()`; the seconds it took (at most WAIT, else the test fails)."""

    async def wait() -> float:
        started = loop.time()
        while not done():
            assert loop.time() - started < WAIT, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)
        return loop.time() - started

    return loop.run_until_complete(wait())


def add_routes(netns: Netns, device: str, verb: str = "add") -> None:
    netns.run(["ip", "route", verb, "203.0.113.0/24", "via", V4_GATEWAY])
    netns.run(["ip", "-6", "route", verb, "2001:db8:1::/48", "via", V6_GATEWAY, "dev", device])


def test_the_watcher_reports_routes_added_and_deleted(
    host: tuple[Netns, str], loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The changes (two routes each time) are read in one dump, the debounce's (its delay is
    the unit tests' to hold, with a fake clock: a time bound here fails on a starved machine)."""
    netns, device = host
    changes: list[frozenset[IPAddress]] = []
    watcher = RouteWatcher(changes.append)
    reads = Calls(monkeypatch, watcher, "_read")
    with netns.inside():
        first = watcher.start(loop)
    try:
        assert first == frozenset()  # the routes on the link have no gateway
        after = reads.since()
        add_routes(netns, device)  # (the loop is not running: no dump is under way)
        wanted = addresses(V4_GATEWAY, V6_GATEWAY)
        run_until(loop, lambda: watcher.gateways == wanted, "the new routes")
        assert after() == 1
        assert changes[-1] == wanted
        after = reads.since()
        add_routes(netns, device, "del")
        run_until(loop, lambda: watcher.gateways == frozenset(), "the deleted routes")
        assert after() == 1
        assert changes[-1] == frozenset()
        assert watcher.failures == 0
    finally:
        watcher.close()


def test_start_and_current_see_the_routes_already_there(
    host: tuple[Netns, str], loop: asyncio.AbstractEventLoop
) -> None:
    netns, device = host
    add_routes(netns, device)
    netns.run(["ip", "route", "add", "198.51.100.0/24", "nexthop", "via", "192.0.2.252",
               "nexthop", "via", "192.0.2.253"])  # fmt: skip
    wanted = addresses(V4_GATEWAY, V6_GATEWAY, "192.0.2.252", "192.0.2.253")
    watcher = RouteWatcher(lambda _: None)
    with netns.inside():
        assert current() == wanted
        try:
            assert watcher.start(loop) == wanted
        finally:
            watcher.close()


def test_many_routes_at_once_are_one_change(
    host: tuple[Netns, str], loop: asyncio.AbstractEventLoop
) -> None:
    netns, _ = host
    changes: list[frozenset[IPAddress]] = []
    watcher = RouteWatcher(changes.append, debounce=1.0)  # ip's 40 calls take well under 1 s
    with netns.inside():
        watcher.start(loop)
    try:
        argv = ["ip", "-batch", "-"]
        lines = [f"route add 203.0.113.{n}/32 via 192.0.2.{200 + n % 4}" for n in range(40)]
        netns.run(["sh", "-c", " ".join(argv) + " <<'EOF'\n" + "\n".join(lines) + "\nEOF"])
        wanted = addresses(*(f"192.0.2.{200 + n}" for n in range(4)))
        run_until(loop, lambda: watcher.gateways == wanted, "the 40 routes")
        assert changes == [wanted]
    finally:
        watcher.close()
