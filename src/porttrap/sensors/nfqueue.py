"""Packets the kernel queues with nftables `queue num N bypass` (NFQUEUE), read over netlink,
each waiting in the kernel for porttrap's verdict (accept or drop). The hold's sensor
(docs/hold.md): a new source's first SYN to a served port waits here.

`parse_batch` and the message builders are the pure half (tests/unit/test_nfqueue_parse.py);
`NfqueueReader` binds the queue and reads it from an asyncio loop, and `verdict` answers a
packet by its id. Only COPY_RANGE bytes of each packet are copied (the IP and TCP headers).

It never takes a service down: the queue is configured with NFQA_CFG_F_FAIL_OPEN, so when it
holds `maxlen` packets, or the socket's buffer is full, the kernel accepts what does not fit
(instead of dropping it); the rule's `bypass` accepts everything while no reader is bound
(porttrap stopped, or this socket closed). Packets still queued when the queue is unbound
are dropped by the kernel (nfqnl_flush), so the daemon answers those it holds before
`close`; a killed daemon's held SYNs are lost and the clients send them again (after 1 s).
Numbers from
include/uapi/linux/netfilter/nfnetlink_queue.h and linux/netfilter.h.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from porttrap.log import LOGGER, event, fields
from porttrap.model import IPAddress, unmap
from porttrap.netlink import (
    NFGENMSG,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    attribute,
    attributes,
    errno_text,
    error_code,
    message,
    split,
)
from porttrap.sensors.classify import classify
from porttrap.sensors.netlink_reader import (
    ERROR_PAUSE,
    LoopReader,
    open_bound,
    request,
)

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8 | 0
NFQNL_MSG_VERDICT = NFNL_SUBSYS_QUEUE << 8 | 1
NFQNL_MSG_CONFIG = NFNL_SUBSYS_QUEUE << 8 | 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_TIMESTAMP, NFQA_PAYLOAD, NFQA_CAP_LEN = 1, 2, 4, 10, 13
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META, NFQNL_COPY_PACKET = 1, 2
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NF_DROP, NF_ACCEPT, NF_REPEAT = 0, 1, 4

COPY_RANGE = 128  # bytes of each packet: IPv6 + TCP headers with options fit
BYTES_PER_MESSAGE = 512  # of SO_RCVBUF per queued packet (a message is ~200 bytes)

_PACKET_HDR = struct.Struct("!IHB")  # packet_id, hw_protocol, hook (packed)
_VERDICT_HDR = struct.Struct("!II")  # verdict, packet_id
_CFG_CMD = struct.Struct("!BxH")  # command, pad, pf
_CFG_PARAMS = struct.Struct("!IB")  # copy_range, copy_mode (packed)
_U32 = struct.Struct("!I")
_TIMESTAMP = struct.Struct("!QQ")  # sec, usec
_ETHERTYPES = {0x0800: 4, 0x86DD: 6}

PacketHandler = Callable[["QueuedPacket"], None]


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    """One packet waiting for a verdict. `payload` starts at the IP header (COPY_RANGE bytes
    at most); `packet_id` is what the verdict names."""

    packet_id: int
    family: int  # 4 or 6; 0: neither (the reader accepts such a packet at once)
    payload: bytes
    hook: int = 0  # netfilter hook: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting
    timestamp: float | None = None  # seconds since the epoch, when the kernel stamped it


@dataclass(frozen=True, slots=True)
class QueueBatch:
    """What one datagram held: packets, messages too broken to read, and errnos the kernel
    sent back (a refused verdict: the packet id was unknown)."""

    packets: list[QueuedPacket] = field(default_factory=list)
    malformed: int = 0
    errors: list[int] = field(default_factory=list)


# -- parsing (pure) ------------------------------------------------------------------------------


def parse_batch(data: bytes) -> QueueBatch:
    """The queued packets in one netlink datagram. Never raises on bad bytes."""
    messages, malformed = split(data)
    packets: list[QueuedPacket] = []
    errors: list[int] = []
    for kind, _, body in messages:
        if kind == NLMSG_ERROR:
            code = error_code(body)
            if code:
                errors.append(code)
            continue
        if kind != NFQNL_MSG_PACKET:
            continue
        packet = _packet(body)
        if packet is None:
            malformed += 1
        else:
            packets.append(packet)
    return QueueBatch(packets, malformed, errors)


def _packet(body: bytes) -> QueuedPacket | None:
    """An NFQNL_MSG_PACKET body; None when malformed (no packet id to answer)."""
    found = attributes(body, NFGENMSG.size) if len(body) >= NFGENMSG.size else None
    header = found.get(NFQA_PACKET_HDR, b"") if found is not None else b""
    if found is None or len(header) < _PACKET_HDR.size:
        return None
    packet_id, hw_protocol, hook = _PACKET_HDR.unpack_from(header)
    return QueuedPacket(
        packet_id=packet_id,
        family=_ETHERTYPES.get(hw_protocol, 0),
        payload=found.get(NFQA_PAYLOAD, b""),
        hook=hook,
        timestamp=_timestamp(found.get(NFQA_TIMESTAMP)),
    )


def syn_of(packet: QueuedPacket) -> tuple[IPAddress, int] | None:
    """The source and the destination port of a queued TCP SYN (what the hold needs); None
    when the packet is anything else, or unreadable: such a packet is not held."""
    probe = classify(packet.payload, packet.family)
    if probe is None or probe.kind != "syn":
        return None
    return unmap(probe.source), probe.destination_port


def _timestamp(value: bytes | None) -> float | None:
    if value is None or len(value) < _TIMESTAMP.size:
        return None
    seconds, micros = _TIMESTAMP.unpack_from(value)
    return int(seconds) + int(micros) / 1e6


# -- messages to the kernel (pure) ---------------------------------------------------------------


def verdict_message(
    queue: int, packet_id: int, accept: bool, seq: int = 0, repeat: bool = False
) -> bytes:
    """NF_ACCEPT or NF_DROP for one packet; with `repeat`, NF_REPEAT instead of NF_ACCEPT: the
    packet goes through the rules of its hook's chain once more (the hold's last check: a
    source the kernel blocked meanwhile is dropped there). No ack is asked: the kernel answers
    only a refusal (NLMSG_ERROR), which the reader counts."""
    verdict = (NF_REPEAT if repeat else NF_ACCEPT) if accept else NF_DROP
    body = NFGENMSG.pack(socket.AF_UNSPEC, 0, queue)
    body += attribute(NFQA_VERDICT_HDR, _VERDICT_HDR.pack(verdict, packet_id))
    return message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, seq, body)


def config_message(seq: int, queue: int, attrs: bytes) -> bytes:
    """An NFQNL_MSG_CONFIG request for `queue`, asking for an ack."""
    body = NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    return message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def bind_attributes() -> bytes:
    return attribute(NFQA_CFG_CMD, _CFG_CMD.pack(NFQNL_CFG_CMD_BIND, socket.AF_UNSPEC))


def params_attributes(maxlen: int, fail_open: bool, copy_range: int = COPY_RANGE) -> bytes:
    """Copy `copy_range` bytes of each packet (0: metadata only), hold at most `maxlen`
    packets, and accept what does not fit when `fail_open` (else the kernel drops it)."""
    mode = NFQNL_COPY_PACKET if copy_range else NFQNL_COPY_META
    flags = NFQA_CFG_F_FAIL_OPEN if fail_open else 0
    return b"".join(
        (
            attribute(NFQA_CFG_PARAMS, _CFG_PARAMS.pack(copy_range, mode)),
            attribute(NFQA_CFG_QUEUE_MAXLEN, _U32.pack(maxlen)),
            attribute(NFQA_CFG_MASK, _U32.pack(NFQA_CFG_F_FAIL_OPEN)),
            attribute(NFQA_CFG_FLAGS, _U32.pack(flags)),
        )
    )


_BIND_HINTS = {
    errno.EPERM: "it needs CAP_NET_ADMIN, or another process (a second porttrap?) has bound "
    "the queue: give [kernel] a queue number no other program uses",
    errno.EOPNOTSUPP: "this kernel lacks the fail-open flag (Linux 3.6 or later has it)",
}


def bind_failure(queue: int, code: int) -> OSError:
    """Why the kernel refused to bind or configure `queue`, in words a person can act on."""
    hint = _BIND_HINTS.get(code)
    why = errno_text(code) + (f": {hint}" if hint else "")
    return OSError(code, f"cannot bind NFQUEUE {queue}: {why}")


# -- the socket ----------------------------------------------------------------------------------


def open_queue_socket(
    queue: int, maxlen: int, fail_open: bool, rcvbuf: int
) -> tuple[socket.socket, list[bytes]]:
    """A non-blocking netlink socket bound to NFQUEUE `queue` in this thread's network
    namespace, and the datagrams that came before the kernel's acks (packets queued already)."""

    def configure(sock: socket.socket) -> list[bytes]:
        early: list[bytes] = []
        for seq, attrs in enumerate((bind_attributes(), params_attributes(maxlen, fail_open)), 1):
            code = request(sock, config_message(seq, queue, attrs), seq, early)
            if code:
                raise bind_failure(queue, code)
        return early

    return open_bound(rcvbuf, configure)


# -- the reader at work --------------------------------------------------------------------------


class NfqueueReader(LoopReader):
    """Calls `on_packet` from the event loop for each IPv4/IPv6 packet queued to `queue`; the
    packet waits in the kernel until `verdict(packet_id, accept)` answers it.

    The socket lives in the network namespace of the thread that calls `start`. The kernel
    holds at most `maxlen` packets; with `fail_open` it accepts what does not fit (counted by
    the kernel, not here: a socket overrun is counted as `overruns`). `on_packet` must be
    cheap; an exception from it is logged and the packet accepted, so no packet is stranded.
    `close` unbinds (the rule's `bypass` then accepts all new packets); the kernel drops the
    packets still queued, so answer them first (the hold's shell accepts those it holds).
    """

    def __init__(
        self, queue: int, on_packet: PacketHandler, maxlen: int = 1024, fail_open: bool = True
    ) -> None:
        if not 0 <= queue <= 0xFFFF:
            raise ValueError(f"NFQUEUE number {queue} is out of range: use 0 to 65535")
        if maxlen < 1:
            raise ValueError(f"maxlen {maxlen} must be at least 1")
        super().__init__()
        self.queue = queue
        self.maxlen = maxlen
        self.fail_open = fail_open
        self._on_packet = on_packet
        self.received = 0  # packets handed to on_packet
        self.malformed = 0  # messages too broken to read (their packets wait: see docs)
        self.accepted = 0  # verdicts sent, by kind
        self.dropped = 0
        self.refused = 0  # verdicts the kernel refused (an unknown packet id), or failed to send
        self.overruns = 0  # times the socket's buffer overflowed (the kernel failed open)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the queue and register the reader; packets queued while binding are handed
        to `on_packet` before it returns. Raises OSError when the queue cannot be bound."""
        if self._sock is not None:
            raise RuntimeError("NfqueueReader.start called twice")
        rcvbuf = self.maxlen * BYTES_PER_MESSAGE
        sock, early = open_queue_socket(self.queue, self.maxlen, self.fail_open, rcvbuf)
        self._attach(sock, loop)
        event("nfqueue-bound", queue=self.queue, maxlen=self.maxlen, fail_open=self.fail_open)
        for data in early:
            self._handle(data)

    def verdict(self, packet_id: int, accept: bool, repeat: bool = False) -> bool:
        """Accept or drop a queued packet (`repeat`: accept by sending it through its chain
        again); False when it could not be sent (the socket is closed, or the kernel would not
        take it: the packet then waits until the queue is unbound, when the kernel drops it)."""
        if self._sock is None:
            self.refused += 1
            return False
        try:
            self._sock.send(verdict_message(self.queue, packet_id, accept, repeat=repeat))
        except OSError as exc:
            self.refused += 1
            event("nfqueue-verdict-failed", logging.WARNING, queue=self.queue,
                  packet=packet_id, errno=errno_text(exc.errno or 0))  # fmt: skip
            return False
        if accept:
            self.accepted += 1
        else:
            self.dropped += 1
        return True

    def _error_line(self) -> str:
        return fields("nfqueue-error", queue=self.queue, pause=ERROR_PAUSE)

    def _overrun(self) -> None:
        self.overruns += 1
        event("nfqueue-overrun", logging.DEBUG, queue=self.queue, overruns=self.overruns)

    def _handle(self, data: bytes) -> None:
        batch = parse_batch(data)
        self.malformed += batch.malformed
        self.refused += len(batch.errors)
        for code in batch.errors:
            event("nfqueue-verdict-refused", logging.DEBUG, queue=self.queue,
                  errno=errno_text(code))  # fmt: skip
        for packet in batch.packets:
            self._deliver(packet)

    def _deliver(self, packet: QueuedPacket) -> None:
        if packet.family == 0:
            self.verdict(packet.packet_id, accept=True)  # not IP: not ours to hold
            return
        self.received += 1
        try:
            self._on_packet(packet)
        except Exception:
            LOGGER.exception(fields("nfqueue-handler-failed", queue=self.queue))
            self.verdict(packet.packet_id, accept=True)
