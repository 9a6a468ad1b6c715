"""NFQUEUE messages: datagrams recorded from a real kernel (tests/data/nfqueue/, made by
record_nfqueue.py), each beside its expected parse; the requests and verdicts on the wire,
byte by byte; broken input, which must never raise; and the reader over a socketpair standing
in for the netlink socket (its kernel half is tests/integration/test_nfqueue.py)."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfqueue_frames import Kernel, attribute, message, queued
from porttrap.netlink import NLMSG_ERROR
from porttrap.sensors import nfqueue
from porttrap.sensors.nfqueue import (
    NFQNL_MSG_PACKET,
    NfqueueReader,
    QueuedPacket,
    bind_attributes,
    bind_failure,
    config_message,
    params_attributes,
    parse_batch,
    syn_of,
    verdict_message,
)

DATA = Path(__file__).parent.parent / "data" / "nfqueue"
SAMPLES = sorted(path.stem for path in DATA.glob("*.bin"))


def sample(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def as_json(packet: QueuedPacket) -> dict[str, object]:
    return {
        "packet_id": packet.packet_id,
        "family": packet.family,
        "hook": packet.hook,
        "timestamp": packet.timestamp,
        "payload": packet.payload.hex(),
    }


# -- parsing -------------------------------------------------------------------------------------


def test_the_samples_cover_both_families_and_a_refused_verdict() -> None:
    assert SAMPLES == ["tcp4-syn", "tcp6-syn", "verdict-refused"]


@pytest.mark.parametrize("name", ["tcp4-syn", "tcp6-syn"])
def test_recorded_packets_parse_as_expected(name: str) -> None:
    expected = json.loads((DATA / f"{name}.expected.json").read_text())
    batch = parse_batch(sample(name))
    assert [as_json(p) for p in batch.packets] == expected
    assert (batch.malformed, batch.errors) == (0, [])


def test_the_hold_reads_source_and_port_of_a_queued_syn_and_nothing_else() -> None:
    [v4] = parse_batch(sample("tcp4-syn")).packets
    [v6] = parse_batch(sample("tcp6-syn")).packets
    assert syn_of(v4) == (ip_address("192.0.2.2"), 8080)
    assert syn_of(v6) == (ip_address("2001:db8::2"), 8080)
    syn_ack = bytearray(v4.payload)
    syn_ack[33] = 0x12  # the TCP flags: SYN+ACK
    assert syn_of(replace(v4, payload=bytes(syn_ack))) is None
    assert syn_of(replace(v4, payload=v4.payload[:30])) is None


def test_a_recorded_refusal_gives_its_errno() -> None:
    batch = parse_batch(sample("verdict-refused"))
    assert (batch.packets, batch.malformed, batch.errors) == ([], 0, [errno.ENOENT])


def test_an_ack_is_not_an_error() -> None:
    assert parse_batch(message(NLMSG_ERROR, bytes(20))).errors == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (queued(1)[:-4], "cut short"),
        (message(NFQNL_MSG_PACKET, b"\x02\x00"), "no room for nfgenmsg"),
        (message(NFQNL_MSG_PACKET, bytes(4)), "no packet header"),
        (message(NFQNL_MSG_PACKET, bytes(4) + attribute(1, bytes(6))), "short packet header"),
        (message(NFQNL_MSG_PACKET, bytes(4), length=4096), "length past the end"),
    ],
)
def test_malformed_input_is_skipped_and_counted(data: bytes, why: str) -> None:
    batch = parse_batch(data)
    assert (batch.packets, batch.malformed) == ([], 1), why


def test_a_non_ip_packet_keeps_its_id_with_family_0() -> None:
    [packet] = parse_batch(queued(5, hw_protocol=0x0806, payload=b"arp")).packets
    assert (packet.packet_id, packet.family, packet.payload) == (5, 0, b"arp")


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_batch(data)


@given(st.sampled_from(SAMPLES), st.integers(0, 1000), st.integers(0, 255))
def test_a_recorded_datagram_with_one_byte_changed_never_raises(
    name: str, where: int, value: int
) -> None:
    data = bytearray(sample(name))
    data[where % len(data)] = value
    parse_batch(bytes(data))


# -- messages on the wire ------------------------------------------------------------------------


def test_an_accept_verdict_on_the_wire() -> None:
    assert verdict_message(7, 0x01020304, accept=True).hex(" ", 4) == (
        "20000000 01030100 00000000 00000000"  # length 32, QUEUE verdict, REQUEST, seq 0
        " 00000007"  # nfgenmsg: AF_UNSPEC, version 0, queue 7 in network order
        " 0c000200 00000001 01020304"  # NFQA_VERDICT_HDR: NF_ACCEPT, packet id
    )


def test_a_repeat_verdict_says_nf_repeat_and_a_drop_stays_a_drop() -> None:
    assert verdict_message(7, 1, accept=True, repeat=True)[-8:] == bytes.fromhex("0000000400000001")
    assert verdict_message(7, 1, accept=False, repeat=True)[-8:] == bytes.fromhex(
        "0000000000000001"
    )


def test_a_drop_verdict_says_nf_drop() -> None:
    assert verdict_message(7, 9, accept=False)[-8:] == struct.pack("!II", 0, 9)


def test_the_bind_request_on_the_wire() -> None:
    assert config_message(1, 7, bind_attributes()).hex(" ", 4) == (
        "1c000000 02030500 01000000 00000000"  # length 28, QUEUE config, REQUEST|ACK, seq 1
        " 00000007"
        " 08000100 01000000"  # NFQA_CFG_CMD: BIND, pad, pf AF_UNSPEC
    )


def test_the_parameters_copy_128_bytes_bound_the_queue_and_fail_open() -> None:
    assert params_attributes(1024, fail_open=True).hex(" ", 4) == (
        "09000200 00000080 02000000"  # NFQA_CFG_PARAMS: copy_range 128, COPY_PACKET (padded)
        " 08000300 00000400"  # NFQA_CFG_QUEUE_MAXLEN 1024
        " 08000400 00000001"  # NFQA_CFG_MASK: FAIL_OPEN
        " 08000500 00000001"  # NFQA_CFG_FLAGS: FAIL_OPEN set
    )


def test_fail_closed_clears_the_flag_and_copy_range_0_copies_metadata_only() -> None:
    wire = params_attributes(16, fail_open=False, copy_range=0)
    assert wire[4:9] == struct.pack("!IB", 0, 1)  # NFQNL_COPY_META
    assert wire[-4:] == bytes(4)


def test_bind_failures_name_the_errno_and_say_what_to_do() -> None:
    assert bind_failure(7, errno.EPERM).strerror == (
        "cannot bind NFQUEUE 7: EPERM (Operation not permitted): it needs CAP_NET_ADMIN, or "
        "another process (a second porttrap?) has bound the queue: give [kernel] a queue "
        "number no other program uses"
    )


@pytest.mark.parametrize(("queue", "maxlen"), [(-1, 10), (65536, 10), (7, 0)])
def test_reader_refuses_a_bad_queue_or_maxlen(queue: int, maxlen: int) -> None:
    with pytest.raises(ValueError, match=r"NFQUEUE number|maxlen"):
        NfqueueReader(queue, lambda _: None, maxlen)


# -- the reader over a socketpair ----------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield mine, theirs
    mine.close()
    theirs.close()


@pytest.fixture
def start(
    loop: asyncio.AbstractEventLoop,
    monkeypatch: pytest.MonkeyPatch,
    pair: tuple[socket.socket, socket.socket],
) -> Callable[[NfqueueReader], Kernel]:
    """Starts a reader on one end of `pair` (packet 1 waits in it); the test is the kernel."""
    mine, theirs = pair
    mine.setblocking(False)
    monkeypatch.setattr(nfqueue, "open_queue_socket", lambda *_: (mine, [queued(1)]))

    def begin(reader: NfqueueReader) -> Kernel:
        reader.start(loop)
        return Kernel(theirs, loop)

    return begin


def test_packets_reach_the_handler_and_verdicts_reach_the_kernel(
    start: Callable[[NfqueueReader], Kernel],
) -> None:
    seen: list[int] = []
    reader = NfqueueReader(7, lambda packet: seen.append(packet.packet_id))
    kernel = start(reader)  # packet 1 came while binding
    kernel.send(queued(2) + queued(3))
    assert seen == [1, 2, 3]
    assert reader.verdict(2, accept=True) and reader.verdict(3, accept=False)
    assert kernel.verdicts() == [(1, 2), (0, 3)]
    assert (reader.received, reader.accepted, reader.dropped) == (3, 1, 1)
    reader.close()
    assert not reader.verdict(1, accept=True)  # closed: nothing to send it on
    assert reader.refused == 1


def test_a_non_ip_packet_and_a_failing_handler_get_accepted_at_once(
    start: Callable[[NfqueueReader], Kernel],
) -> None:
    def failing(_: QueuedPacket) -> None:
        raise RuntimeError("bug")

    reader = NfqueueReader(7, failing)
    kernel = start(reader)
    kernel.send(queued(2, hw_protocol=0x0806))
    assert kernel.verdicts() == [(1, 1), (1, 2)]  # accepted: no packet is stranded
    assert (reader.received, reader.accepted) == (1, 2)
    reader.close()


def test_refusals_the_kernel_sends_back_are_counted(
    start: Callable[[NfqueueReader], Kernel],
) -> None:
    reader = NfqueueReader(7, lambda _: None)
    kernel = start(reader)
    kernel.send(sample("verdict-refused"))
    assert reader.refused == 1
    reader.close()
