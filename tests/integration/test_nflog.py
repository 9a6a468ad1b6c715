"""NflogReceiver against a real kernel: probes from a scanner namespace hit `log group 7` rules
in a protected namespace (tests/integration/nflog_env.py), where the receiver's socket lives.
The receiver's event loop runs here in the test process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nflog_env import (
    GROUP,
    PREFIX,
    PROTECTED_V4,
    PROTECTED_V6,
    SCANNER_V4,
    SCANNER_V6,
    UDP_PREFIX,
    ip_protocol_and_dport,
    ip_source,
    probe,
    protected_pair,
)

from netns import Netns
from porttrap.sensors.nflog import LoggedPacket, NflogReceiver
from porttrap.testing import FakeClock

pytestmark = pytest.mark.kernel

WAIT = 20.0  # generous: waits end as soon as the packets are in
TCP, UDP = 6, 17
Start = Callable[..., tuple[NflogReceiver, list[LoggedPacket]]]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def pair(netns_factory: Callable[[], Netns], tmp_path: Path) -> tuple[Netns, Netns]:
    return protected_pair(netns_factory, tmp_path)


@pytest.fixture
def start(loop: asyncio.AbstractEventLoop) -> Iterator[Start]:
    """Starts a receiver for GROUP inside a namespace; every one is closed after the test."""
    started: list[NflogReceiver] = []

    def make(
        netns: Netns, queue_limit: int = 10000, clock: FakeClock | None = None
    ) -> tuple[NflogReceiver, list[LoggedPacket]]:
        packets: list[LoggedPacket] = []
        receiver = NflogReceiver(GROUP, packets.append, queue_limit, clock=clock)
        with netns.inside():  # the netlink socket belongs to the namespace it is made in
            receiver.start(loop)
        started.append(receiver)
        return receiver, packets

    yield make
    for receiver in started:
        receiver.close()


def run_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], what: str) -> None:
    async def wait() -> None:
        deadline = loop.time() + WAIT
        while not done():
            assert loop.time() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    loop.run_until_complete(wait())


def run_until_quiet(loop: asyncio.AbstractEventLoop, receiver: NflogReceiver) -> None:
    """Run the loop until the receiver's counters stay still for 0.3 s."""

    async def wait() -> None:
        deadline = loop.time() + WAIT
        before = None
        while (now := (receiver.received, receiver.overruns)) != before:
            assert loop.time() < deadline, "the receiver never went quiet"
            before = now
            await asyncio.sleep(0.3)

    loop.run_until_complete(wait())


def describe(packet: LoggedPacket) -> tuple[int, str, str, int, int]:
    return (packet.family, packet.prefix, ip_source(packet.payload),
            *ip_protocol_and_dport(packet.payload))  # fmt: skip


def test_tcp_syns_and_udp_datagrams_arrive_with_prefix_family_and_source(
    loop: asyncio.AbstractEventLoop, pair: tuple[Netns, Netns], start: Start
) -> None:
    protected, scanner = pair
    receiver, packets = start(protected)
    for kind in ("tcp", "udp"):
        for target in (PROTECTED_V4, PROTECTED_V6):
            probe(scanner, kind, target)
    run_until(loop, lambda: len({describe(p) for p in packets}) >= 4, "four kinds of packet")
    assert {describe(p) for p in packets} == {
        (4, PREFIX, SCANNER_V4, TCP, 2323),
        (6, PREFIX, SCANNER_V6, TCP, 2323),
        (4, UDP_PREFIX, SCANNER_V4, UDP, 2323),
        (6, UDP_PREFIX, SCANNER_V6, UDP, 2323),
    }
    assert all(p.hook == 1 and p.timestamp is not None for p in packets)  # NF_INET_LOCAL_IN
    assert (receiver.received, receiver.malformed, receiver.ignored) == (len(packets), 0, 0)


def test_a_burst_into_a_tiny_buffer_is_counted_as_overruns_and_reading_goes_on(
    loop: asyncio.AbstractEventLoop,
    pair: tuple[Netns, Netns],
    start: Start,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="porttrap")
    protected, scanner = pair
    clock = FakeClock()
    receiver, packets = start(protected, queue_limit=1, clock=clock)

    def burst(count: int) -> None:
        """Datagrams sent while the loop stands still, so the kernel must drop most."""
        probe(scanner, "udp", PROTECTED_V4, count=count)
        run_until_quiet(loop, receiver)

    burst(2000)
    assert receiver.overruns >= 1
    assert 0 < receiver.received < 2000
    assert receiver.received == len(packets)
    assert {describe(p) for p in packets} == {(4, UDP_PREFIX, SCANNER_V4, UDP, 2323)}

    def syns_reach(count: int) -> Callable[[], bool]:
        return lambda: sum(p.family == 6 for p in packets) == count

    for number in range(1, 6):  # one at a time, the loop reading: none is lost
        probe(scanner, "tcp", PROTECTED_V6)
        run_until(loop, syns_reach(number), "a TCP SYN")

    first_overruns = receiver.overruns
    burst(300)
    assert receiver.overruns > first_overruns
    clock.advance(60)
    burst(300)
    levels = [r.levelno for r in caplog.records if "event=nflog-overrun" in r.getMessage()]
    assert levels.count(logging.WARNING) == 2  # the first, then one a minute later
    assert len(levels) == receiver.overruns


def test_a_group_bound_by_someone_else_is_refused_with_the_reason(
    pair: tuple[Netns, Netns], start: Start
) -> None:
    protected, _ = pair
    first, _ = start(protected)
    with pytest.raises(OSError, match=r"cannot bind NFLOG group 7: .*another process"):
        start(protected)
    first.close()
    start(protected)  # free again once the first socket is closed
