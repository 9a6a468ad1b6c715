"""ListenerWatcher's bookkeeping with scripted dumps and a loop whose timers the test fires:
when it calls back, what it keeps when a read fails, how it backs off when reads are slow.
The real kernel is in tests/integration/test_listeners_netns.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import cast

import pytest

from porttrap import netlink
from porttrap.model import Proto
from porttrap.sensors import listeners
from porttrap.sensors.listeners import Listener, ListenerWatcher, Ports, Reply
from porttrap.testing import FakeClock

ANY = IPv4Address("0.0.0.0")


@dataclass
class Timer:
    delay: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    """Only what the watcher uses: call_later. `fire` runs the one pending timer."""

    timers: list[Timer] = field(default_factory=list)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        self.timers.append(Timer(delay, callback))
        return self.timers[-1]

    def pending(self) -> list[Timer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def fire(self) -> float:
        [timer] = self.pending()
        self.timers.remove(timer)
        timer.callback()
        return timer.delay


@dataclass
class Kernel:
    """Scripted dumps: each read takes the next entry, a list of (proto, port) or an error,
    and `cost` seconds on the fake clock."""

    clock: FakeClock
    script: list[list[tuple[Proto, int]] | Exception] = field(default_factory=list)
    cost: float = 0.001
    sockets: list[socket.socket] = field(default_factory=list)

    def open(self) -> socket.socket:
        self.sockets.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        return self.sockets[-1]

    def dump(self, sock: socket.socket, seq: int = 1) -> Reply:
        assert not sock._closed  # type: ignore[attr-defined]
        self.clock.advance(self.cost)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return Reply([Listener(proto, port, ANY) for proto, port in step], done=True)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    fake = Kernel(FakeClock())
    monkeypatch.setattr(listeners, "open_diag_socket", fake.open)
    monkeypatch.setattr(listeners, "dump", fake.dump)
    yield fake
    for sock in fake.sockets:
        sock.close()


def ports(tcp: set[int] | None = None, udp: set[int] | None = None) -> Ports:
    return {Proto.TCP: frozenset(tcp or ()), Proto.UDP: frozenset(udp or ())}


def start(kernel: Kernel, **options: float) -> tuple[ListenerWatcher, FakeLoop, list[Ports]]:
    changes: list[Ports] = []
    watcher = ListenerWatcher(changes.append, clock=kernel.clock, **options)
    loop = FakeLoop()
    watcher.start(cast(asyncio.AbstractEventLoop, loop))
    return watcher, loop, changes


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().split(" ")[0] == f"event={name}"]


def test_start_returns_the_first_set_and_later_changes_are_reported_once(kernel: Kernel) -> None:
    tcp22, both = [(Proto.TCP, 22)], [(Proto.TCP, 22), (Proto.UDP, 53)]
    kernel.script = [tcp22, tcp22, both, both, tcp22]
    watcher, loop, changes = start(kernel)
    assert watcher.ports == ports({22})
    assert changes == []
    for _ in range(4):
        assert loop.fire() == 0.5
    assert changes == [ports({22}, {53}), ports({22})]
    assert watcher.ports == ports({22})


def test_a_failed_read_keeps_the_last_set_warns_once_and_recovers(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "porttrap")
    refused = OSError(
        1, "sock_diag dump of tcp IPv4 sockets failed: EPERM (Operation not permitted)"
    )
    kernel.script = [[(Proto.TCP, 22)], refused, refused, [(Proto.TCP, 22), (Proto.TCP, 80)]]
    watcher, loop, changes = start(kernel)
    loop.fire()
    loop.fire()
    assert (watcher.ports, watcher.failures, changes) == (ports({22}), 2, [])
    failed = events(caplog, "listeners-failed")
    assert [record.levelno for record in failed] == [logging.WARNING, logging.DEBUG]
    assert "Operation not permitted" in failed[0].getMessage()
    assert failed[0].exc_info is None  # the kernel's refusal is no bug: no traceback
    loop.fire()
    assert changes == [ports({22, 80})]
    assert watcher.failures == 0
    assert len(events(caplog, "listeners-recovered")) == 1


def test_an_unexpected_error_is_logged_with_its_traceback_and_polling_goes_on(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.script = [[], RuntimeError("a bug"), [(Proto.UDP, 53)]]
    _, loop, changes = start(kernel)
    loop.fire()
    [failed] = events(caplog, "listeners-failed")
    assert failed.exc_info is not None
    loop.fire()
    assert changes == [ports(udp={53})]


def test_when_the_first_read_fails_start_raises_and_closes_the_socket(kernel: Kernel) -> None:
    kernel.script = [OSError(93, "Protocol not supported")]
    watcher = ListenerWatcher(lambda _: None, clock=kernel.clock)
    loop = FakeLoop()
    with pytest.raises(OSError, match="Protocol not supported"):
        watcher.start(cast(asyncio.AbstractEventLoop, loop))
    assert loop.timers == []
    assert kernel.sockets[0]._closed  # type: ignore[attr-defined]


def test_slow_reads_stretch_the_interval(kernel: Kernel) -> None:
    kernel.script = [[], [], []]
    kernel.cost = 0.1
    watcher, loop, _ = start(kernel, interval=0.5)
    assert watcher.cost == pytest.approx(0.1)
    assert loop.fire() == pytest.approx(2.0)  # 20 x 0.1 s: the loop stays 95 % free
    kernel.cost = 0.001
    loop.fire()
    assert loop.fire() == 0.5


def test_a_failing_handler_is_logged_and_polling_goes_on(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.script = [[], [(Proto.TCP, 1)], [(Proto.TCP, 2)]]
    seen: list[Ports] = []

    def handler(new: Ports) -> None:
        seen.append(new)
        raise ValueError("handler bug")

    watcher = ListenerWatcher(handler, clock=kernel.clock)
    loop = FakeLoop()
    watcher.start(cast(asyncio.AbstractEventLoop, loop))
    loop.fire()
    loop.fire()
    assert seen == [ports({1}), ports({2})]
    assert len(events(caplog, "listeners-handler-failed")) == 2


def test_close_stops_polling_and_may_be_called_twice(kernel: Kernel) -> None:
    kernel.script = [[]]
    watcher, loop, _ = start(kernel)
    watcher.close()
    watcher.close()
    assert loop.pending() == []
    assert kernel.sockets[0]._closed  # type: ignore[attr-defined]


def test_start_twice_and_bad_intervals_are_refused(kernel: Kernel) -> None:
    kernel.script = [[]]
    watcher, loop, _ = start(kernel)
    with pytest.raises(RuntimeError, match="twice"):
        watcher.start(cast(asyncio.AbstractEventLoop, loop))
    for interval in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="interval"):
            ListenerWatcher(lambda _: None, interval)


class Refusing:
    """A sock_diag socket whose kernel answers every dump request with errno `code`."""

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
        listeners.dump(cast(socket.socket, Refusing(errno.EPERM)))
    assert raised.value.errno == errno.EPERM
    assert raised.value.strerror == (
        "sock_diag dump of tcp IPv4 sockets failed: EPERM (Operation not permitted)"
    )
