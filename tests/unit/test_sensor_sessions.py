"""SessionWatcher's bookkeeping with scripted dumps and a loop whose timers the test fires:
which SSH ports it watches and says so, when it calls back, what it keeps when a read fails.
The real kernel is in tests/integration/test_sessions_netns.py."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import cast

import pytest

from porttrap.log import FIELDS_ATTR
from porttrap.model import IPAddress
from porttrap.sensors import listeners, sessions
from porttrap.sensors.sessions import INTERVAL, Reply, SessionWatcher
from porttrap.sshsession import PortSource, SshPorts
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
    """Scripted dumps: each read takes the next entry, peers or an error; the ports each
    dump was asked for are kept."""

    clock: FakeClock
    script: list[list[str] | Exception] = field(default_factory=list)
    asked: list[tuple[int, ...]] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)

    def open(self) -> socket.socket:
        self.sockets.append(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        return self.sockets[-1]

    def dump(self, sock: socket.socket, ports: Sequence[int], seq: int = 1) -> Reply:
        assert not sock._closed  # type: ignore[attr-defined]
        self.asked.append(tuple(ports))
        self.clock.advance(0.001)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return Reply(frozenset(ip_address(text) for text in step), done=True)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Kernel]:
    fake = Kernel(FakeClock())
    monkeypatch.setattr(listeners, "open_diag_socket", fake.open)
    monkeypatch.setattr(sessions, "dump", fake.dump)
    yield fake
    for sock in fake.sockets:
        sock.close()


def peers(*texts: str) -> frozenset[IPAddress]:
    return frozenset(ip_address(text) for text in texts)


def no_sshd() -> tuple[tuple[int, ...], str]:
    return (), "no process named sshd"


def start(
    kernel: Kernel, configured: tuple[int, ...] = (2222,)
) -> tuple[SessionWatcher, FakeLoop, list[frozenset[IPAddress]]]:
    changes: list[frozenset[IPAddress]] = []
    watcher = SessionWatcher(changes.append, configured, clock=kernel.clock, lookup=no_sshd)
    loop = FakeLoop()
    watcher.start(cast(asyncio.AbstractEventLoop, loop))
    return watcher, loop, changes


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().split(" ")[0] == f"event={name}"]


def test_start_says_which_ports_and_returns_the_first_peers(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "porttrap")
    kernel.script = [["192.0.2.7"]]
    watcher, loop, changes = start(kernel, ())
    assert watcher.peers == peers("192.0.2.7")
    assert watcher.ports == SshPorts((22,), PortSource.DEFAULT, "no process named sshd")
    assert kernel.asked == [(22,)]
    [logged] = events(caplog, "ssh-ports")
    assert logged.getMessage() == (
        'event=ssh-ports ports=22 source=default note="no process named sshd"'
    )
    assert changes == []
    assert [timer.delay for timer in loop.pending()] == [INTERVAL]


def test_changes_are_reported_once_each(kernel: Kernel) -> None:
    kernel.script = [[], [], ["192.0.2.7"], ["192.0.2.7"], ["192.0.2.7", "2001:db8::7"], []]
    watcher, loop, changes = start(kernel)
    for _ in range(5):
        assert loop.fire() == INTERVAL
    assert changes == [peers("192.0.2.7"), peers("192.0.2.7", "2001:db8::7"), frozenset()]
    assert set(kernel.asked) == {(2222,)}
    assert watcher.failures == 0


def test_a_failed_read_keeps_the_last_peers_and_recovers(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "porttrap")
    refused = OSError(1, "sock_diag dump of the IPv4 SSH sessions failed: EPERM")
    kernel.script = [["192.0.2.7"], refused, ["192.0.2.8"]]
    watcher, loop, changes = start(kernel)
    loop.fire()
    assert (watcher.peers, watcher.failures, changes) == (peers("192.0.2.7"), 1, [])
    [failed] = events(caplog, "sessions-failed")
    assert failed.levelno == logging.WARNING and failed.exc_info is None
    loop.fire()
    assert changes == [peers("192.0.2.8")]
    assert len(events(caplog, "sessions-recovered")) == 1


def test_reconfigure_finds_the_ports_again_and_the_next_read_uses_them(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "porttrap")
    kernel.script = [[], []]
    watcher, loop, _ = start(kernel)
    watcher.reconfigure((22, 2200))
    loop.fire()
    assert kernel.asked == [(2222,), (22, 2200)]
    assert watcher.ports == SshPorts((22, 2200), PortSource.CONFIG)
    logged = [getattr(r, FIELDS_ATTR)["ports"] for r in events(caplog, "ssh-ports")]
    assert logged == ["2222", "22 2200"]


def test_a_failing_handler_is_logged_and_polling_goes_on(
    kernel: Kernel, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.script = [[], ["192.0.2.7"], []]

    def handler(new: frozenset[IPAddress]) -> None:
        raise ValueError("handler bug")

    watcher = SessionWatcher(handler, (22,), clock=kernel.clock)
    loop = FakeLoop()
    watcher.start(cast(asyncio.AbstractEventLoop, loop))
    loop.fire()
    loop.fire()
    assert watcher.peers == frozenset()
    assert len(events(caplog, "sessions-handler-failed")) == 2


def test_when_the_first_read_fails_start_raises_and_closes_the_socket(kernel: Kernel) -> None:
    kernel.script = [OSError(93, "Protocol not supported")]
    watcher = SessionWatcher(lambda _: None, (22,), clock=kernel.clock)
    loop = FakeLoop()
    with pytest.raises(OSError, match="Protocol not supported"):
        watcher.start(cast(asyncio.AbstractEventLoop, loop))
    assert loop.timers == []
    assert kernel.sockets[0]._closed  # type: ignore[attr-defined]


def test_close_stops_polling_twice_is_fine_and_start_twice_is_not(kernel: Kernel) -> None:
    kernel.script = [[]]
    watcher, loop, _ = start(kernel)
    with pytest.raises(RuntimeError, match="twice"):
        watcher.start(cast(asyncio.AbstractEventLoop, loop))
    watcher.close()
    watcher.close()
    assert loop.pending() == []
    assert kernel.sockets[0]._closed  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="interval"):
        SessionWatcher(lambda _: None, interval=0)


def test_no_ports_means_no_dump_and_no_sessions() -> None:
    assert sessions.dump(cast(socket.socket, None), ()) == Reply(done=True)
