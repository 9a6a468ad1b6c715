"""systemd's notify protocol against real AF_UNIX datagram sockets (a path and an abstract
name): the exact datagrams, the environment cleaned for hooks, the watchdog interval and what
happens with bad values or a socket nobody reads."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess  # noqa: TID251 - a child process shows what hooks inherit
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from porttrap.daemon.notify import Notifier


class Manager:
    """A stand-in for systemd's end: a datagram socket that collects what was sent."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    def received(self) -> bytes:
        return self.sock.recv(4096)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2)
        return False


@pytest.fixture
def path_manager(tmp_path: Path) -> Iterator[tuple[str, Manager]]:
    address = str(tmp_path / "notify")
    manager = Manager(address)
    yield address, manager
    manager.sock.close()


def environ(**values: str) -> dict[str, str]:
    return {"PATH": "/usr/bin", **values}


def test_each_message_is_one_datagram_with_exactly_its_assignments(
    path_manager: tuple[str, Manager],
) -> None:
    address, manager = path_manager
    notifier = Notifier.from_environment(environ(NOTIFY_SOCKET=address))
    try:
        notifier.ready("12 traps set, 3 bans restored")
        assert manager.received() == (
            f"READY=1\nSTATUS=12 traps set, 3 bans restored\nMAINPID={os.getpid()}".encode()
        )
        notifier.ready()
        assert manager.received() == f"READY=1\nMAINPID={os.getpid()}".encode()
        notifier.status("reloading: config\nwith a newline")
        assert manager.received() == b"STATUS=reloading: config with a newline"
        notifier.stopping()
        assert manager.received() == b"STOPPING=1"
        notifier.watchdog()
        assert manager.received() == b"WATCHDOG=1"
        assert manager.nothing_pending()
    finally:
        notifier.close()


def test_reloading_carries_clock_monotonic_in_microseconds(
    path_manager: tuple[str, Manager],
) -> None:
    address, manager = path_manager
    fake = Notifier(address, clock=lambda: 123_456_789)
    fake.reloading()
    assert manager.received() == b"RELOADING=1\nMONOTONIC_USEC=123456789"
    fake.close()
    real = Notifier(address)
    # microseconds of CLOCK_MONOTONIC (time.monotonic on Linux), the clock systemd compares
    # with: not the wall clock, not seconds; read between two readings of it
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    real.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    key, value = manager.received().split(b"\n")[1].split(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after
    real.close()


def test_abstract_socket_named_with_an_at_sign() -> None:
    name = f"porttrap-test-{secrets.token_hex(6)}"
    manager = Manager("\0" + name)
    notifier = Notifier.from_environment(environ(NOTIFY_SOCKET="@" + name))
    try:
        assert notifier.enabled
        notifier.ready()
        assert manager.received() == f"READY=1\nMAINPID={os.getpid()}".encode()
    finally:
        notifier.close()
        manager.sock.close()


def test_the_variables_leave_the_environment_so_hooks_never_inherit_them(
    path_manager: tuple[str, Manager],
) -> None:
    address, _ = path_manager
    env = environ(NOTIFY_SOCKET=address, WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()))
    Notifier.from_environment(env).close()
    assert env == {"PATH": "/usr/bin"}


def test_the_real_environment_is_cleaned_for_child_processes(
    path_manager: tuple[str, Manager], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, _ = path_manager
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier.from_environment()
    notifier.close()
    assert notifier.enabled
    assert "NOTIFY_SOCKET" not in os.environ
    assert "WATCHDOG_USEC" not in os.environ
    child = subprocess.run(["env"], capture_output=True, text=True, check=True, timeout=10)
    assert "NOTIFY_SOCKET" not in child.stdout  # a hook's process sees neither
    assert "WATCHDOG_USEC" not in child.stdout
    assert "PATH=" in child.stdout


def test_without_notify_socket_every_method_is_a_no_op() -> None:
    env = environ(WATCHDOG_USEC="30000000")
    notifier = Notifier.from_environment(env)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None  # no systemd to ping
    for call in (notifier.ready, notifier.reloading, notifier.stopping, notifier.watchdog):
        call()
    notifier.status("anything")
    assert env == {"PATH": "/usr/bin"}  # removed all the same


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),  # half of WatchdogSec=30s
        ("30000000", "own", 15.0),
        ("1", "own", 0.0000005),
        ("30000000", "1", None),  # meant for another process (porttrap started by a script)
        ("30000000", "junk", None),
        (None, None, None),  # no WatchdogSec=
    ],
)
def test_watchdog_interval(
    path_manager: tuple[str, Manager], usec: str | None, pid: str | None, interval: float | None
) -> None:
    address, _ = path_manager
    env = environ(NOTIFY_SOCKET=address)
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if pid == "own" else pid
    notifier = Notifier.from_environment(env)
    assert notifier.watchdog_interval == interval
    assert notifier.enabled  # the watchdog's PID never disables READY and friends


@pytest.mark.parametrize("usec", ["abc", "", "-5", "0", "1.5"])
def test_a_bad_watchdog_usec_is_logged_and_asks_for_no_pings(
    path_manager: tuple[str, Manager], usec: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    address, _ = path_manager
    notifier = Notifier.from_environment(environ(NOTIFY_SOCKET=address, WATCHDOG_USEC=usec))
    assert notifier.watchdog_interval is None
    assert notifier.enabled
    assert "event=watchdog-invalid" in caplog.text
    assert f"watchdog_usec={usec}" in caplog.text or 'watchdog_usec=""' in caplog.text
    assert "WatchdogSec=" in caplog.text  # says what it means for the unit


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@"])
def test_a_socket_address_porttrap_cannot_use_is_logged_and_disables_notify(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    env = environ(NOTIFY_SOCKET=value, WATCHDOG_USEC="30000000")
    notifier = Notifier.from_environment(env)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert "event=notify-unsupported" in caplog.text
    assert "NOTIFY_SOCKET" not in env


def test_empty_notify_socket_is_no_systemd_and_no_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG", logger="porttrap")
    assert not Notifier.from_environment(environ(NOTIFY_SOCKET="")).enabled
    assert caplog.text == ""


def test_systemd_gone_is_logged_once_per_streak_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    address = str(tmp_path / "notify")
    notifier = Notifier(address)
    notifier.ready()  # ENOENT: nothing bound there
    notifier.watchdog()
    assert caplog.text.count("event=notify-failed") == 1
    assert 'message="READY=1"' in caplog.text
    manager = Manager(address)  # systemd is back
    notifier.watchdog()
    assert manager.received() == b"WATCHDOG=1"
    manager.sock.close()
    Path(address).unlink()
    notifier.watchdog()  # ECONNREFUSED/ENOENT again: a new streak, logged again
    assert caplog.text.count("event=notify-failed") == 2
    notifier.close()


def test_a_full_queue_never_blocks(
    path_manager: tuple[str, Manager], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    address, manager = path_manager
    notifier = Notifier(address)
    # Nobody reads: the receiver's queue fills up (EAGAIN), and each send returns at once.
    for _ in range(5000):
        notifier.watchdog()
    assert caplog.text.count("event=notify-failed") == 1
    assert "Resource temporarily unavailable" in caplog.text
    assert manager.received() == b"WATCHDOG=1"
    notifier.close()


def test_the_socket_is_close_on_exec(path_manager: tuple[str, Manager]) -> None:
    address, manager = path_manager
    notifier = Notifier(address)
    notifier.watchdog()
    manager.received()
    sock = notifier._socket
    assert sock is not None
    assert not os.get_inheritable(sock.fileno())
    assert not sock.getblocking()
    notifier.close()
