"""Packets the kernel logs with nftables `log group N` (NFLOG), received over netlink.

A rule such as `tcp dport 23 log prefix "porttrap:" group 7 drop` hands a copy of each matching
packet to nfnetlink_log, which sends it to the one netlink socket bound to group 7 in that
network namespace. `parse_messages` is the pure half (recorded kernel messages test it, see
tests/data/nflog/); `NflogReceiver` binds the socket and reads it from an asyncio loop.

Only COPY_RANGE bytes of each packet are copied: the IP and TCP/UDP headers are all a scan
sensor needs. The kernel batches messages (QTHRESH of them, or after TIMEOUT) and drops them
when the socket buffer is full; recv then fails once with ENOBUFS, counted as an overrun.
Numbers from include/uapi/linux/netfilter/nfnetlink{,_log}.h and linux/netlink.h.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from porttrap.clock import Clock, SystemClock
from porttrap.log import LOGGER, event, fields
from porttrap.netlink import (
    NFGENMSG,
    NLM_F_ACK,
    NLM_F_REQUEST,
    attribute,
    attributes,
    errno_text,
    message,
    split,
)
from porttrap.sensors.netlink_reader import (
    ERROR_PAUSE,
    LoopReader,
    open_bound,
    request,
)

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | 0
NFULNL_MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | 1
NFULA_PACKET_HDR, NFULA_TIMESTAMP, NFULA_PAYLOAD, NFULA_PREFIX = 1, 3, 9, 10
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 4, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_PF_BIND, NFULNL_CFG_CMD_PF_UNBIND = 1, 3, 4
NFULNL_COPY_PACKET = 2

COPY_RANGE = 128  # bytes of each packet: IPv6 + TCP headers with options fit
QTHRESH = 32  # messages the kernel gathers into one datagram ...
TIMEOUT = 1  # ... or sends after this many 1/100 s
BYTES_PER_MESSAGE = 512  # of SO_RCVBUF; full batches measured ~105 (the kernel doubles it)
WARN_EVERY = 60.0  # seconds between WARNING-level overrun events; DEBUG in between

_PACKET_HDR = struct.Struct("!HBx")  # hw_protocol, hook
_TIMESTAMP = struct.Struct("!QQ")  # sec, usec
_ETHERTYPES = {0x0800: 4, 0x86DD: 6}

PacketHandler = Callable[["LoggedPacket"], None]


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    """One logged packet. `payload` starts at the IP header (COPY_RANGE bytes at most)."""

    family: int  # 4 or 6
    prefix: str  # the rule's log prefix, "" when it has none
    payload: bytes
    hook: int = 0  # netfilter hook: 0 prerouting, 1 input, 2 forward, 3 output, 4 postrouting
    timestamp: float | None = None  # seconds since the epoch, when the kernel stamped it


@dataclass(frozen=True, slots=True)
class Batch:
    """What one datagram held: packets, messages too broken to read, and non-IP packets."""

    packets: list[LoggedPacket] = field(default_factory=list)
    malformed: int = 0
    ignored: int = 0


# -- parsing (pure) ------------------------------------------------------------------------------


def parse_messages(data: bytes) -> list[LoggedPacket]:
    """The IPv4/IPv6 packets in one netlink datagram; anything malformed is skipped."""
    return parse_batch(data).packets


def parse_batch(data: bytes) -> Batch:
    """Like `parse_messages`, and also counts what was skipped. Never raises on bad bytes."""
    messages, malformed = split(data)
    packets: list[LoggedPacket] = []
    ignored = 0
    for kind, _, body in messages:
        if kind != NFULNL_MSG_PACKET:
            continue  # acks, NLMSG_DONE ...: nothing logged
        packet = _packet(body)
        if packet is None:
            malformed += 1
        elif packet.family == 0:
            ignored += 1
        else:
            packets.append(packet)
    return Batch(packets, malformed, ignored)


def _packet(body: bytes) -> LoggedPacket | None:
    """An NFULNL_MSG_PACKET body; None when malformed, family 0 when not IPv4/IPv6."""
    found = attributes(body, NFGENMSG.size) if len(body) >= NFGENMSG.size else None
    header = found.get(NFULA_PACKET_HDR, b"") if found is not None else b""
    if found is None or len(header) < _PACKET_HDR.size:
        return None
    hw_protocol, hook = _PACKET_HDR.unpack_from(header)
    prefix = found.get(NFULA_PREFIX, b"").split(b"\0", 1)[0]
    return LoggedPacket(
        family=_ETHERTYPES.get(hw_protocol, 0),
        prefix=prefix.decode("utf-8", "replace"),
        payload=found.get(NFULA_PAYLOAD, b""),
        hook=hook,
        timestamp=_timestamp(found.get(NFULA_TIMESTAMP)),
    )


def _timestamp(value: bytes | None) -> float | None:
    if value is None or len(value) < _TIMESTAMP.size:
        return None
    seconds, micros = _TIMESTAMP.unpack_from(value)
    return int(seconds) + int(micros) / 1e6


# -- configuration messages ----------------------------------------------------------------------


def config_message(seq: int, family: int, res_id: int, attributes: bytes) -> bytes:
    """An NFULNL_MSG_CONFIG request asking for an ack."""
    body = NFGENMSG.pack(family, 0, res_id) + attributes
    flags = NLM_F_REQUEST | NLM_F_ACK
    return message(NFULNL_MSG_CONFIG, flags, seq, body)


def _bind_attributes() -> bytes:
    """Bind the group, copy COPY_RANGE bytes of each packet, flush at QTHRESH or TIMEOUT."""
    return b"".join(
        (
            attribute(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])),
            attribute(NFULA_CFG_MODE, struct.pack("!IBx", COPY_RANGE, NFULNL_COPY_PACKET)),
            attribute(NFULA_CFG_TIMEOUT, struct.pack("!I", TIMEOUT)),
            attribute(NFULA_CFG_QTHRESH, struct.pack("!I", QTHRESH)),
        )
    )


_BIND_HINTS = {
    errno.EPERM: "it needs CAP_NET_ADMIN, or another process (ulogd2?) has bound the group",
    errno.EBUSY: "another process (ulogd2? a second porttrap?) has bound the group",
}


def bind_failure(group: int, code: int) -> OSError:
    """Why the kernel refused to bind `group`, in words a person can act on."""
    hint = _BIND_HINTS.get(code)
    why = errno_text(code) + (f": {hint}" if hint else "")
    return OSError(code, f"cannot bind NFLOG group {group}: {why}")


def open_nflog_socket(group: int, rcvbuf: int) -> tuple[socket.socket, list[bytes]]:
    """A non-blocking netlink socket bound to NFLOG `group` in this thread's network namespace,
    and the datagrams that came before the kernel's acks (packets logged already)."""
    return open_bound(rcvbuf, lambda sock: _configure(sock, group))


def _configure(sock: socket.socket, group: int) -> list[bytes]:
    """Unbind and bind the IPv4/IPv6 loggers (needed before Linux 3.17, a no-op since), then
    bind the group; the datagrams read that were not acks. OSError if the group is refused."""
    early: list[bytes] = []
    requests = [
        (family, 0, attribute(NFULA_CFG_CMD, bytes([command])))
        for family in (socket.AF_INET, socket.AF_INET6)
        for command in (NFULNL_CFG_CMD_PF_UNBIND, NFULNL_CFG_CMD_PF_BIND)
    ]
    requests.append((socket.AF_UNSPEC, group, _bind_attributes()))
    for seq, (family, res_id, attrs) in enumerate(requests, 1):
        code = request(sock, config_message(seq, family, res_id, attrs), seq, early)
        if code and seq == len(requests):
            raise bind_failure(group, code)
        if code:  # a PF_(UN)BIND refused: harmless, only old kernels need them
            event("nflog-pf-bind", logging.DEBUG, family=family, errno=errno_text(code))
    return early


# -- the receiver at work ------------------------------------------------------------------------


class NflogReceiver(LoopReader):
    """Calls `on_packet` from the event loop for each IPv4/IPv6 packet logged to `group`.

    The socket lives in the network namespace of the thread that calls `start`. It holds about
    `queue_limit` messages; the kernel drops what does not fit and says so (`overruns`).
    `on_packet` must be cheap (queue the packet); an exception from it is logged and ignored.
    """

    def __init__(
        self,
        group: int,
        on_packet: PacketHandler,
        queue_limit: int = 10000,
        *,
        clock: Clock | None = None,
    ) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"NFLOG group {group} is out of range: use 0 to 65535")
        if queue_limit < 1:
            raise ValueError(f"queue_limit {queue_limit} must be at least 1")
        super().__init__()
        self.group = group
        self._on_packet = on_packet
        self._rcvbuf = queue_limit * BYTES_PER_MESSAGE
        self._clock = clock if clock is not None else SystemClock()
        self._last_warning: float | None = None
        self.received = 0  # packets handed to on_packet
        self.malformed = 0  # messages or datagram tails too broken to read
        self.ignored = 0  # logged packets that are not IPv4/IPv6 (an arp or netdev rule)
        self.overruns = 0  # times the kernel reported dropping messages (each may be many)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the group and register the reader; packets logged while binding are handed
        to `on_packet` before it returns. Raises OSError when the group cannot be bound."""
        if self._sock is not None:
            raise RuntimeError("NflogReceiver.start called twice")
        sock, early = open_nflog_socket(self.group, self._rcvbuf)
        self._attach(sock, loop)
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        event("nflog-bound", group=self.group, rcvbuf=rcvbuf)
        for data in early:
            self._handle(data)

    def _handle(self, data: bytes) -> None:
        batch = parse_batch(data)
        self.malformed += batch.malformed
        self.ignored += batch.ignored
        if batch.malformed:
            event("nflog-malformed", logging.DEBUG, group=self.group, count=batch.malformed)
        for packet in batch.packets:
            self.received += 1
            try:
                self._on_packet(packet)
            except Exception:
                LOGGER.exception(fields("nflog-handler-failed", group=self.group))

    def _error_line(self) -> str:
        return fields("nflog-error", group=self.group, pause=ERROR_PAUSE)

    def _overrun(self) -> None:
        """The kernel dropped messages: count, warn at most once per WARN_EVERY, go on."""
        self.overruns += 1
        now = self._clock.monotonic()
        level = logging.DEBUG
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY:
            level, self._last_warning = logging.WARNING, now
        hint = "logged packets were dropped: raise queue_limit or rate-limit the log rule"
        event("nflog-overrun", level, group=self.group, overruns=self.overruns, hint=hint)
