"""RouteWatcher's bookkeeping with scripted dumps and a loop whose timers and readers the test
fires: a burst of notifications costs one dump, a failed dump keeps the last set and is tried
again, and a refused dump names its errno. The real kernel is in
tests/integration/test_routes_netns.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import cast

import pytest

from porttrap import netlink
from porttrap.model import IPAddress
from porttrap.sensors import routes
from porttrap.sensors.routes import RETRY, Reply, RouteWatcher
from porttrap.testing import FakeClock


@dataclass
class Timer:
    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    """call_later and the readers: `fire` runs the one pending timer, `notify` the reader."""

    timers: list[Timer] = field(default_factory=list)
    readers: dict[int, Callable[[], None]] = field(default_factory=dict)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        self.timers.append(Timer(delay, callback))
        return self.timers[-1]

    def add_reader(self, sock: socket.socket, callback: Callable[[], None]) -> None:
        self.readers[sock.fileno()] = callback

    def remove_reader(self, sock: socket.socket) -> bool:
        return self.readers.pop(sock.fileno(), None) is not None

    def pending(self) -> list[Timer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def fire(self) -> float:
        [timer] = self.pending()
        self.timers.remove(timer)
        timer.callback()
        return timer.delay

    def notify(self) -> None:
        [reader] = self.readers.values()
        reader()


@dataclass
class Kernel:
    """Scripted dumps: each takes the next entry, a list of gateways or an error."""

    script: list[list[str] | Exception] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    def open(self, groups: int = 0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self.sockets.append(sock)
        self.groups.append(groups)
        return sock

    def dump(self, sock: socket.socket, seq: int = 1) -> Reply:
        assert not sock._closed  # type: ignore[attr-defined]
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return Reply(frozenset(ip_address(text) for text in step), done=True)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    fake = Kernel()
    monkeypatch.setattr(routes, "open_route_socket", fake.open)
    monkeypatch.setattr(routes, "dump", fake.dump)
    yield fake
    for sock in fake.sockets:
        sock.close()


def addresses(*texts: str) -> frozenset[IPAddress]:
    return frozenset(ip_address(text) for text in texts)


def start(kernel: Kernel) -> tuple[RouteWatcher, FakeLoop, list[frozenset[IPAddress]]]:
    changes: list[frozenset[IPAddress]] = []
    watcher = RouteWatcher(changes.append, clock=FakeClock())
    loop = FakeLoop()
    watcher.start(cast(asyncio.AbstractEventLoop, loop))
    return watcher, loop, changes


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().split(" ")[0] == f"event={name}"]


def test_start_subscribes_to_both_families_and_returns_the_first_set(kernel: Kernel) -> None:
    kernel.script = [["192.0.2.254", "fe80::1"]]
    watcher, loop, changes = start(kernel)
    assert watcher.gateways == addresses("192.0.2.254", "fe80::1")
    assert kernel.groups == [routes.RTMGRP_IPV4_ROUTE | routes.RTMGRP_IPV6_ROUTE, 0]
    assert (changes, loop.pending()) == ([], [])  # nothing polls: only a change leads to a dump


def test_a_burst_of_notifications_costs_one_dump_after_the_debounce(kernel: Kernel) -> None:
    kernel.script = [["192.0.2.254"], ["192.0.2.254", "192.0.2.253"]]
    _, loop, changes = start(kernel)
    for _ in range(5):
        loop.notify()
    assert loop.fire() == routes.DEBOUNCE
    assert changes == [addresses("192.0.2.254", "192.0.2.253")]
    assert (kernel.script, loop.pending()) == ([], [])


def test_a_dump_with_the_same_gateways_reports_nothing(kernel: Kernel) -> None:
    kernel.script = [["192.0.2.254"], ["192.0.2.254"], []]
    _, loop, changes = start(kernel)
    loop.notify()
    loop.fire()
    assert changes == []
    loop.notify()
    loop.fire()
    assert changes == [frozenset()]


def test_a_failed_dump_keeps_the_last_set_warns_once_and_is_tried_again(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "porttrap")
    refused = OSError(
        1, "rtnetlink dump of the IPv4 routes failed: EPERM (Operation not permitted)"
    )
    kernel.script = [["192.0.2.254"], refused, refused, ["192.0.2.1"]]
    watcher, loop, changes = start(kernel)
    loop.notify()
    loop.fire()
    assert loop.fire() == RETRY
    assert (watcher.gateways, watcher.failures, changes) == (addresses("192.0.2.254"), 2, [])
    failed = events(caplog, "gateways-failed")
    assert [record.levelno for record in failed] == [logging.WARNING, logging.DEBUG]
    assert "EPERM (Operation not permitted)" in failed[0].getMessage()
    assert failed[0].exc_info is None
    assert loop.fire() == RETRY
    assert changes == [addresses("192.0.2.1")]
    assert (watcher.failures, loop.pending()) == (0, [])
    assert len(events(caplog, "gateways-recovered")) == 1


def test_a_notification_during_the_retry_wait_does_not_add_a_dump(kernel: Kernel) -> None:
    kernel.script = [[], OSError(errno.EBUSY, "busy"), ["192.0.2.254"]]
    _, loop, changes = start(kernel)
    loop.notify()
    loop.fire()
    loop.notify()
    assert loop.fire() == RETRY
    assert changes == [addresses("192.0.2.254")]
    assert loop.pending() == []


def test_a_failing_handler_is_logged_and_watching_goes_on(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.script = [[], ["192.0.2.1"], ["192.0.2.2"]]
    seen: list[frozenset[IPAddress]] = []

    def handler(new: frozenset[IPAddress]) -> None:
        seen.append(new)
        raise ValueError("handler bug")

    watcher = RouteWatcher(handler, clock=FakeClock())
    loop = FakeLoop()
    watcher.start(cast(asyncio.AbstractEventLoop, loop))
    for _ in range(2):
        loop.notify()
        loop.fire()
    assert seen == [addresses("192.0.2.1"), addresses("192.0.2.2")]
    assert len(events(caplog, "gateways-handler-failed")) == 2


def test_when_the_first_dump_fails_start_raises_and_closes_both_sockets(kernel: Kernel) -> None:
    kernel.script = [OSError(errno.EPERM, "refused")]
    watcher = RouteWatcher(lambda _: None)
    loop = FakeLoop()
    with pytest.raises(OSError, match="refused"):
        watcher.start(cast(asyncio.AbstractEventLoop, loop))
    assert loop.readers == {}
    assert all(sock._closed for sock in kernel.sockets)  # type: ignore[attr-defined]


def test_close_stops_watching_and_may_be_called_twice(kernel: Kernel) -> None:
    kernel.script = [[]]
    watcher, loop, _ = start(kernel)
    loop.notify()
    watcher.close()
    watcher.close()
    assert (loop.pending(), loop.readers) == ([], {})
    assert all(sock._closed for sock in kernel.sockets)  # type: ignore[attr-defined]


def test_start_twice_and_a_negative_debounce_are_refused(kernel: Kernel) -> None:
    kernel.script = [[]]
    watcher, loop, _ = start(kernel)
    with pytest.raises(RuntimeError, match="twice"):
        watcher.start(cast(asyncio.AbstractEventLoop, loop))
    with pytest.raises(ValueError, match="debounce"):
        RouteWatcher(lambda _: None, -1.0)


class Refusing:
    """A NETLINK_ROUTE socket whose kernel answers every dump request with errno `code`."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.replies: list[bytes] = []

    def send(self, request: bytes) -> int:
        [(_, seq, _)], _ = netlink.split(request)
        body = struct.pack("=i", -self.code) + request[: netlink.NLMSGHDR.size]
        self.replies.append(netlink.message(netlink.NLMSG_ERROR, 0, seq, body))
        return len(request)

    def recv(self, size: int) -> bytes:
        if not self.replies:
            raise BlockingIOError
        return self.replies.pop(0)


def test_a_refused_dump_names_the_errno_and_what_was_asked() -> None:
    with pytest.raises(OSError) as raised:
        routes.dump(cast(socket.socket, Refusing(errno.EPERM)))
    assert raised.value.errno == errno.EPERM
    assert raised.value.strerror == (
        "rtnetlink dump of the IPv4 routes failed: EPERM (Operation not permitted)"
    )
