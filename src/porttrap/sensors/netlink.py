"""Netlink message framing shared by the sensors that talk to the kernel (nflog, listeners).

Only the envelope lives here: the netlink header, its alignment, and splitting a datagram into
messages without trusting its lengths. Each protocol parses its own bodies.
Numbers from include/uapi/linux/netlink.h.
"""

from __future__ import annotations

import struct

NLMSG_ERROR = 2  # body: int errno (negative; 0 for an ack), then the request's header
NLMSG_DONE = 3  # the end of a dump
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, portid (host order)
ERRNO = struct.Struct("=i")

Message = tuple[int, int, bytes]  # (type, seq, body)


def align(length: int) -> int:
    """Netlink messages and attributes start on 4-byte boundaries."""
    return (length + 3) & ~3


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message to send; the kernel fills in our port id."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def split(data: bytes) -> tuple[list[Message], int]:
    """(type, seq, body) of each netlink message; 1 more if bytes at the end frame none."""
    messages: list[Message] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSGHDR.size:
            return messages, 1
        length, kind, _, seq, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            return messages, 1  # a bad length leaves nothing after it to trust
        messages.append((kind, seq, data[offset + NLMSGHDR.size : offset + length]))
        offset += align(length)
    return messages, 0
