"""NfqueueReader against a real kernel: a scanner namespace sends a crafted SYN (scapy) to a
served port of a protected namespace, where a test table queues SYNs to QUEUE with `bypass`.
The reader's event loop runs here in the test process; the scapy sender runs in a thread
(it is a child process in the scanner namespace), so the loop reads and answers meanwhile."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crafted import Probe, answers
from nfqueue_env import (
    PORT,
    PROTECTED_V4,
    PROTECTED_V6,
    QUEUE,
    SCANNER_V4,
    SCANNER_V6,
    protected_pair,
    syn,
)

from netns import Netns
from porttrap.sensors.classify import classify
from porttrap.sensors.nfqueue import NfqueueReader, QueuedPacket

pytestmark = pytest.mark.kernel

PATIENCE = 10.0  # how long a SYN-ACK may take (ends as soon as it comes)
SILENCE = 1.5  # how long "no answer" is waited for


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def pair(netns_factory: Callable[[], Netns], tmp_path: Path) -> Iterator[tuple[Netns, Netns]]:
    """(protected, scanner): the queue rule and a listener on PORT in `protected`."""
    protected, scanner = protected_pair(netns_factory, tmp_path)
    with protected.inside():
        server = socket.create_server(("", PORT), family=socket.AF_INET6, dualstack_ipv6=True)
    yield protected, scanner
    server.close()


def start(
    loop: asyncio.AbstractEventLoop,
    netns: Netns,
    answer: Callable[[QueuedPacket], bool | None],
    maxlen: int = 16,
    fail_open: bool = True,
) -> tuple[NfqueueReader, list[QueuedPacket]]:
    """A reader for QUEUE in `netns` that answers each packet at once with `answer` (None:
    no answer, the packet stays queued)."""
    packets: list[QueuedPacket] = []

    def on_packet(packet: QueuedPacket) -> None:
        packets.append(packet)
        verdict = answer(packet)
        if verdict is not None:
            reader.verdict(packet.packet_id, verdict)

    reader = NfqueueReader(QUEUE, on_packet, maxlen=maxlen, fail_open=fail_open)
    with netns.inside():
        reader.start(loop)
    return reader, packets


def reply(loop: asyncio.AbstractEventLoop, scanner: Netns, target: str, wait: float) -> str | None:
    """The flags of the answer to one crafted SYN, the loop reading the queue meanwhile."""
    future = loop.run_in_executor(None, answers, scanner, [syn(target)], wait)
    return loop.run_until_complete(future)[0]


@pytest.mark.parametrize("target", [PROTECTED_V4, PROTECTED_V6])
def test_an_accepted_syn_is_answered_with_a_syn_ack(
    loop: asyncio.AbstractEventLoop, pair: tuple[Netns, Netns], target: str
) -> None:
    protected, scanner = pair
    reader, packets = start(loop, protected, lambda _: True)
    try:
        assert reply(loop, scanner, target, PATIENCE) == "SA"
    finally:
        reader.close()
    assert len(packets) == 1
    probe = classify(packets[0].payload, packets[0].family)
    assert probe is not None
    source = SCANNER_V6 if ":" in target else SCANNER_V4
    assert (str(probe.source), probe.destination_port, probe.kind) == (source, PORT, "syn")
    assert packets[0].hook == 1  # NF_INET_LOCAL_IN
    assert (reader.received, reader.accepted, reader.dropped, reader.refused) == (1, 1, 0, 0)


@pytest.mark.parametrize("target", [PROTECTED_V4, PROTECTED_V6])
def test_a_dropped_syn_gets_no_answer(
    loop: asyncio.AbstractEventLoop, pair: tuple[Netns, Netns], target: str
) -> None:
    protected, scanner = pair
    reader, packets = start(loop, protected, lambda _: False)
    try:
        assert reply(loop, scanner, target, SILENCE) is None
    finally:
        reader.close()
    assert len(packets) == 1
    assert (reader.received, reader.accepted, reader.dropped) == (1, 0, 1)


def test_without_a_reader_the_bypass_lets_syns_through(
    loop: asyncio.AbstractEventLoop, pair: tuple[Netns, Netns]
) -> None:
    protected, scanner = pair
    reader, packets = start(loop, protected, lambda _: False)
    reader.close()  # unbound: the rule's bypass accepts
    assert reply(loop, scanner, PROTECTED_V4, PATIENCE) == "SA"
    assert packets == []


@pytest.mark.parametrize("fail_open", [True, False])
def test_a_full_queue_lets_the_next_syn_through_only_when_failing_open(
    loop: asyncio.AbstractEventLoop, pair: tuple[Netns, Netns], fail_open: bool
) -> None:
    protected, scanner = pair
    reader, packets = start(loop, protected, lambda _: None, maxlen=1, fail_open=fail_open)
    try:
        assert reply(loop, scanner, PROTECTED_V4, SILENCE) is None  # held, never answered
        second = Probe(SCANNER_V4, PROTECTED_V4, PORT, "syn", sport=40001)  # the queue is full
        wait = PATIENCE if fail_open else SILENCE
        future = loop.run_in_executor(None, answers, scanner, [second], wait)
        assert loop.run_until_complete(future) == (["SA"] if fail_open else [None])
    finally:
        reader.close()
    assert len(packets) == 1


def test_a_verdict_for_an_unknown_packet_is_refused_and_counted(
    loop: asyncio.AbstractEventLoop, pair: tuple[Netns, Netns]
) -> None:
    protected, scanner = pair
    reader, _ = start(loop, protected, lambda _: True)
    try:
        assert reader.verdict(123456, accept=True)  # sent; the kernel answers ENOENT
        assert reply(loop, scanner, PROTECTED_V4, PATIENCE) == "SA"  # the loop reads meanwhile

        async def refused() -> None:
            while reader.refused < 1:
                await asyncio.sleep(0.01)

        loop.run_until_complete(asyncio.wait_for(refused(), PATIENCE))
    finally:
        reader.close()
    assert reader.refused == 1


def test_a_second_reader_of_the_same_queue_is_refused_with_a_hint(
    loop: asyncio.AbstractEventLoop, pair: tuple[Netns, Netns]
) -> None:
    protected, _ = pair
    first, _ = start(loop, protected, lambda _: True)
    try:
        with pytest.raises(OSError, match=r"cannot bind NFQUEUE 7: EPERM .*queue number"):
            start(loop, protected, lambda _: True)
    finally:
        first.close()
