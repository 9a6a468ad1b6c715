"""The socket trap sensor on 127.0.0.1 / ::1 high ports in the root namespace (no root needed,
except that the holder of a port is found through psutil, which sees our own process anyway)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import resource
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import psutil
import pytest

import ports
from porttrap.config.schema import Trap
from porttrap.model import BoundTrap, Hit, IPAddress, Proto, TrapReport
from porttrap.sensors import sockets
from porttrap.sensors.sockets import (
    BACKOFF_MIN,
    IP_PKTINFO,
    IPV6_PKTINFO,
    SO_MARK,
    WARN_EVERY,
    SocketTraps,
    bind_failure_reason,
    enable_marks,
    packet_mark,
    pktinfo_destination,
)
from porttrap.sensorspec import MARK_CLIENT, MARK_PEER
from porttrap.testing import FakeClock

V4 = ipaddress.IPv4Address("127.0.0.1")
V6 = ipaddress.IPv6Address("::1")
PRIVILEGED = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
WAIT = 20.0  # generous: these waits end as soon as the event arrives


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no ::1 on this host")


def free_ports(count: int, address: IPAddress = V4, kind: int = socket.SOCK_STREAM) -> list[int]:
    """Distinct ports free on `address`, outside the kernel's ephemeral range (tests/ports)."""
    return ports.free_ports(count, str(address), kind)


class Sensor:
    """SocketTraps on the running loop, hits in a queue."""

    def __init__(self, traps: list[Trap], on_hit: Callable[[Hit], None] | None = None) -> None:
        self.hits: asyncio.Queue[Hit] = asyncio.Queue()
        self.clock = FakeClock()
        self.traps = SocketTraps(traps, on_hit or self.hits.put_nowait, self.clock)
        self.report = self.traps.start(asyncio.get_running_loop())

    async def hit(self) -> Hit:
        return await asyncio.wait_for(self.hits.get(), WAIT)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 60)

    asyncio.run(bounded())


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition()` holds; fail after WAIT seconds."""
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not met in time")


@contextmanager
def client(address: IPAddress, port: int) -> Iterator[socket.socket]:
    with socket.create_connection((str(address), port), timeout=WAIT) as sock:
        yield sock


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"event={name} ")]


@pytest.fixture(autouse=True)
def _debug_events(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="porttrap")


# -- TCP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [V4, pytest.param(V6, marks=needs_ipv6)], ids=str)
def test_tcp_connect_gives_one_hit_and_the_client_sees_the_close(address: IPAddress) -> None:
    (port,) = free_ports(1, address)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, address)])
        try:
            assert sensor.report.set == [BoundTrap(Proto.TCP, port, str(address))]
            with client(address, port) as first:
                hit = await sensor.hit()
                assert closed_by_peer(first)
                first_port = first.getsockname()[1]
            with client(address, port) as second:
                # a second connection's hit comes next: the first gave exactly one
                assert (await sensor.hit()).source_port == second.getsockname()[1]
        finally:
            sensor.traps.close()
        assert hit == Hit(sensor.clock.now(), address, first_port, address, port, Proto.TCP)

    run(scenario)


def accept_fails_with(monkeypatch: pytest.MonkeyPatch, errors: list[OSError]) -> None:
    """accept() raises the errors in `errors` (popped from the end, the list may grow) first."""
    real_accept = socket.socket.accept

    def accept(sock: socket.socket) -> tuple[socket.socket, Any]:
        if errors:
            raise errors.pop()
        return real_accept(sock)

    monkeypatch.setattr(socket.socket, "accept", accept)


def test_a_connection_the_peer_aborted_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    aborted = [OSError(errno.ECONNABORTED, "aborted")]
    accept_fails_with(monkeypatch, aborted)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, V4)])
        try:
            with client(V4, port) as sock:
                assert (await sensor.hit()).source_port == sock.getsockname()[1]
        finally:
            sensor.traps.close()
        assert not aborted

    run(scenario)


def test_enobufs_backs_off_doubling_then_accepts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (port,) = free_ports(1)
    failures = [OSError(errno.ENOBUFS, "No buffer space available") for _ in range(4)]
    accept_fails_with(monkeypatch, failures)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, V4)])
        try:
            with client(V4, port) as sock:
                assert (await sensor.hit()).source_port == sock.getsockname()[1]
            failures.append(OSError(errno.ENOBUFS, "No buffer space available"))
            with client(V4, port) as sock:  # a success in between: from the start again
                assert (await sensor.hit()).source_port == sock.getsockname()[1]
        finally:
            sensor.traps.close()

    run(scenario)
    backoffs = events(caplog, "trap-backoff")
    delays = [r.getMessage().rsplit("delay=", 1)[1] for r in backoffs]
    assert delays == ["0.05", "0.1", "0.2", "0.4", "0.05"]
    assert all("errno=ENOBUFS" in r.getMessage() for r in backoffs)
    # one WARNING, then DEBUG for a while: hundreds of sockets must not flood the journal
    assert [r.levelno for r in backoffs] == [logging.WARNING] + [logging.DEBUG] * 4


def test_every_trap_socket_shares_one_warning_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Descriptors out during a scan of many trap ports: one WARNING for all of them, not one
    per port (a connect-mode daemon wrote gigabytes of log so), and the next one a minute later
    says how many it held back."""
    ports = free_ports(4)
    failures = [OSError(errno.EMFILE, "Too many open files") for _ in ports]
    accept_fails_with(monkeypatch, failures)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, V4) for port in ports])
        try:
            for port in ports:
                with client(V4, port):
                    await sensor.hit()
            sensor.clock.advance(WARN_EVERY)
            failures.append(OSError(errno.EMFILE, "Too many open files"))
            with client(V4, ports[0]):
                await sensor.hit()
        finally:
            sensor.traps.close()

    run(scenario)
    backoffs = events(caplog, "trap-backoff")
    assert len(backoffs) == 5
    warnings = [r.getMessage() for r in backoffs if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "held_back" not in warnings[0]
    assert "held_back=3" in warnings[1]


def _lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


def test_emfile_backs_off_and_accepts_again_once_fds_are_free(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real EMFILE: the soft fd limit is lowered to the next free descriptor for a while."""
    (port,) = free_ports(1)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, V4)])
        sock = socket.socket()  # allocated before the limit drops
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (_lowest_free_fd(), limits[1]))
            sock.connect((str(V4), port))
            await until(lambda: len(events(caplog, "trap-backoff")) >= 3)
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            assert (await sensor.hit()).source_port == sock.getsockname()[1]
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            sock.close()
            sensor.traps.close()

    run(scenario)
    first = events(caplog, "trap-backoff")[0].getMessage()
    assert "errno=EMFILE" in first
    assert f"delay={BACKOFF_MIN}" in first


def test_on_hit_raising_is_logged_and_the_sensor_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    (port,) = free_ports(1)
    seen: list[Hit] = []

    def on_hit(hit: Hit) -> None:
        seen.append(hit)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, V4)], on_hit)
        try:
            for _ in range(2):
                with client(V4, port):
                    count = len(seen)
                    await until(lambda: len(seen) > count)  # noqa: B023 - used at once
        finally:
            sensor.traps.close()

    run(scenario)
    assert len(seen) == 2
    (failure,) = events(caplog, "hit-handler-failed")
    assert failure.exc_info is not None
    assert isinstance(failure.exc_info[1], RuntimeError)


def test_three_hundred_traps_in_one_process() -> None:
    ports = free_ports(300)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, V4) for port in ports])
        try:
            assert [b.port for b in sensor.report.set] == ports
            assert sensor.report.skipped == []
            for port in (ports[0], ports[150], ports[-1]):
                with client(V4, port):
                    assert (await sensor.hit()).port == port
        finally:
            sensor.traps.close()

    run(scenario)


# -- UDP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [V4, pytest.param(V6, marks=needs_ipv6)], ids=str)
def test_udp_datagram_gives_a_hit_with_the_local_address(address: IPAddress) -> None:
    (port,) = free_ports(1, address, socket.SOCK_DGRAM)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.UDP, port, address)])
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"probe", (str(address), port))
                hit = await sensor.hit()
                source_port = sender.getsockname()[1]
        finally:
            sensor.traps.close()
        assert hit == Hit(sensor.clock.now(), address, source_port, address, port, Proto.UDP, "udp")

    run(scenario)


# -- bind failures -----------------------------------------------------------------------------


def test_a_port_held_elsewhere_is_skipped_with_its_holder_and_the_rest_are_set() -> None:
    tcp_port, free_tcp = free_ports(2)
    (udp_port,) = free_ports(1, kind=socket.SOCK_DGRAM)
    me = f"{psutil.Process().name()} pid={os.getpid()}"
    with socket.socket() as tcp_holder, socket.socket(type=socket.SOCK_DGRAM) as udp_holder:
        tcp_holder.bind((str(V4), tcp_port))
        tcp_holder.listen()
        udp_holder.bind((str(V4), udp_port))

        async def scenario() -> None:
            sensor = Sensor(
                [
                    Trap(Proto.TCP, tcp_port, V4),
                    Trap(Proto.UDP, udp_port, V4),
                    Trap(Proto.TCP, free_tcp, V4),
                ]
            )
            sensor.traps.close()
            report = sensor.report
            assert [(s.proto, s.port, s.reason, s.holder) for s in report.skipped] == [
                (Proto.TCP, tcp_port, "in use", me),
                (Proto.UDP, udp_port, "in use", me),
            ]
            assert report.set == [BoundTrap(Proto.TCP, free_tcp, str(V4))]
            assert not report.none_set

        run(scenario)


def test_a_port_in_use_on_one_family_is_no_trap_on_either() -> None:
    """A service on IPv4 only: its port is not trapped on IPv6 either, where the service's
    clients would otherwise be banned as scanners (at start and at a reload)."""
    port, other = free_ports(2)
    with socket.socket() as service:
        service.bind(("0.0.0.0", port))
        service.listen()

        async def scenario() -> None:
            sensor = Sensor([Trap(Proto.TCP, port), Trap(Proto.TCP, other)])
            try:
                skipped = {(s.port, s.address): s.reason for s in sensor.report.skipped}
                assert skipped[(port, "0.0.0.0")] == "in use"
                assert skipped[(port, "::")].startswith("in use on 0.0.0.0")
                assert {(b.port, b.address) for b in sensor.report.set} == {
                    (other, "0.0.0.0"),
                    (other, "::"),
                }
                with socket.socket(socket.AF_INET6) as six:  # the port is free on IPv6
                    six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    six.bind(("::", port))
            finally:
                sensor.traps.close()

        run(scenario)


def test_a_reload_gives_up_a_trap_whose_port_a_service_took_on_one_family() -> None:
    (port,) = free_ports(1)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, port, V4)])  # on 127.0.0.1 only, for now
        try:
            with socket.socket(socket.AF_INET6) as service:
                service.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                service.bind(("::", port))
                service.listen()
                loop = asyncio.get_running_loop()
                report = sensor.traps.update(loop, [Trap(Proto.TCP, port)], b"")
                assert report.set == []
                assert {s.address for s in report.skipped} == {"0.0.0.0", "::"}
        finally:
            sensor.traps.close()

    run(scenario)


def test_an_address_not_on_this_host_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.TCP, 40000, ipaddress.IPv4Address("192.0.2.1"))])
        sensor.traps.close()
        assert sensor.report.none_set
        assert sensor.report.skipped[0].reason == "address not on this host"

    run(scenario)
    (skipped,) = events(caplog, "trap-skipped")
    assert skipped.levelno == logging.WARNING
    assert skipped.getMessage() == (
        "event=trap-skipped proto=tcp port=40000 address=192.0.2.1"
        ' reason="address not on this host"'
    )


@pytest.mark.parametrize(
    ("number", "shown", "reason"),
    [
        (errno.EADDRINUSE, "0.0.0.0", "in use"),
        (errno.EADDRNOTAVAIL, "203.0.113.5", "address not on this host"),
        (errno.EAFNOSUPPORT, "::", "IPv6 not available"),
        (errno.EACCES, "::", f"permission denied ({PRIVILEGED})"),
        (errno.EINVAL, "::", "Invalid argument (EINVAL)"),
    ],
)
def test_bind_failure_reasons(number: int, shown: str, reason: str) -> None:
    assert bind_failure_reason(OSError(number, os.strerror(number)), shown) == reason


def test_none_set() -> None:
    assert TrapReport().none_set
    assert not TrapReport(set=[BoundTrap(Proto.TCP, 23, "::")]).none_set


# -- ancillary data ----------------------------------------------------------------------------

# recorded: recvmsg(0, CMSG_SPACE(20)) on wildcard binds in a namespace, for datagrams sent to
# 203.0.113.5 and 2001:db8::5 on a veth with ifindex 3 (x86_64)
IN_PKTINFO = b"\x03\x00\x00\x00\xcb\x00q\x05\xcb\x00q\x05"
IN6_PKTINFO = b" \x01\r\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x03\x00\x00\x00"


@pytest.mark.parametrize(
    ("ancillary", "expected"),
    [
        ([(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO)], ipaddress.ip_address("203.0.113.5")),
        ([(socket.IPPROTO_IPV6, IPV6_PKTINFO, IN6_PKTINFO)], ipaddress.ip_address("2001:db8::5")),
        ([(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO[:8])], None),  # truncated
        ([(socket.SOL_SOCKET, 29, b"\0" * 16)], None),  # SO_TIMESTAMP: not ours
        ([], None),
    ],
)
def test_pktinfo_destination(
    ancillary: list[tuple[int, int, bytes]], expected: IPAddress | None
) -> None:
    assert pktinfo_destination(ancillary) == expected


# the SO_MARK control message of a datagram marked 0x10000: a native-endian u32 (x86_64 here;
# tests/integration/test_marks_netns.py checks it against the kernel's)
MARKED = (0x10000).to_bytes(4, sys.byteorder)


@pytest.mark.parametrize(
    ("ancillary", "expected"),
    [
        ([(socket.SOL_SOCKET, SO_MARK, MARKED)], MARK_CLIENT),
        (
            [(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO), (socket.SOL_SOCKET, SO_MARK, MARKED)],
            MARK_CLIENT,
        ),
        ([(socket.SOL_SOCKET, SO_MARK, (MARK_PEER | 0x7).to_bytes(4, sys.byteorder))], 0x20007),
        ([(socket.SOL_SOCKET, SO_MARK, MARKED[:3])], 0),  # truncated
        ([(socket.IPPROTO_IP, SO_MARK, MARKED)], 0),  # another level's option 36
        ([(socket.IPPROTO_IP, IP_PKTINFO, IN_PKTINFO)], 0),
        ([], 0),
    ],
)
def test_packet_mark(ancillary: list[tuple[int, int, bytes]], expected: int) -> None:
    assert packet_mark(ancillary) == expected


class Datagrams:
    """A UDP socket's recvmsg, scripted: one datagram from 192.0.2.7:5353 to 198.51.100.1."""

    def __init__(self, mark: int | None) -> None:
        ancillary = [
            (socket.IPPROTO_IP, IP_PKTINFO, b"\x03\0\0\0" + bytes(4) + bytes([198, 51, 100, 1]))
        ]
        if mark is not None:
            ancillary.append((socket.SOL_SOCKET, SO_MARK, mark.to_bytes(4, sys.byteorder)))
        self.reply = (b"", ancillary, 0, ("192.0.2.7", 5353))

    def recvmsg(self, size: int, ancillary_size: int) -> Any:
        assert ancillary_size >= socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4)
        return self.reply


@pytest.mark.parametrize(
    ("mark", "client", "peer"),
    [
        (None, False, False),  # no SO_RCVMARK: no marks
        (0, False, False),
        (MARK_CLIENT, True, False),
        (MARK_PEER, False, True),
        (MARK_CLIENT | MARK_PEER | 0xFF, True, True),
        (0xFFFF, False, False),  # other bits are other programs' marks
    ],
)
def test_a_datagram_s_mark_says_whether_its_source_is_a_client_or_a_peer(
    mark: int | None, client: bool, peer: bool
) -> None:
    hits: list[Hit] = []
    listener = sockets.TrapSocket(
        cast(socket.socket, Datagrams(mark)), proto=Proto.UDP,
        bound=ipaddress.IPv4Address("0.0.0.0"), port=53, emit=hits.append, clock=FakeClock(),
    )  # fmt: skip
    hit = listener._receive()
    assert (hit.client, hit.peer) == (client, peer)
    assert (str(hit.source), str(hit.local), hit.port, hit.kind) == (
        "192.0.2.7", "198.51.100.1", 53, "udp",
    )  # fmt: skip


class Options:
    """setsockopt that fails with `number`."""

    def __init__(self, number: int) -> None:
        self.number = number

    def setsockopt(self, *args: int) -> None:
        raise OSError(self.number, os.strerror(self.number))


def test_enable_marks_on_a_kernel_without_so_rcvmark_says_so() -> None:
    assert enable_marks(cast(socket.socket, Options(errno.ENOPROTOOPT))) is False
    with pytest.raises(OSError, match="Bad file descriptor"):
        enable_marks(cast(socket.socket, Options(errno.EBADF)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert enable_marks(sock) is True  # Linux 5.19 and later
        assert sock.getsockopt(socket.SOL_SOCKET, sockets.SO_RCVMARK) == 1


def test_without_so_rcvmark_the_udp_traps_work_and_say_it_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sockets, "enable_marks", lambda sock: False)
    first, second = free_ports(2, kind=socket.SOCK_DGRAM)

    async def scenario() -> None:
        sensor = Sensor([Trap(Proto.UDP, first, V4), Trap(Proto.UDP, second, V4)])
        try:
            assert len(sensor.report.set) == 2
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"x", (str(V4), second))
                hit = await sensor.hit()
            assert (hit.port, hit.client, hit.peer) == (second, False, False)
            (third,) = free_ports(1, kind=socket.SOCK_DGRAM)
            sensor.traps.update(asyncio.get_running_loop(), [Trap(Proto.UDP, third, V4)], b"")
        finally:
            sensor.traps.close()

    run(scenario)
    [logged] = events(caplog, "trap-marks-unavailable")
    assert logged.levelno == logging.WARNING
    assert "SO_RCVMARK: ENOPROTOOPT (Protocol not available)" in logged.getMessage()
    assert 'fix="Linux 5.19 or later"' in logged.getMessage()
