"""Netlink framing shared by everything that reads the kernel over netlink: the sensors
(NFLOG reports, sock_diag listeners) and the firewall's reads of nf_tables objects.

Only the envelope lives here: the netlink header, its alignment, splitting a datagram into
messages without trusting its lengths, and the type-length-value attributes of netfilter
messages. Each protocol parses its own bodies; `errno_text` words the errno a reply carries,
so that every netlink failure reads the same way.
Numbers from include/uapi/linux/{netlink,netfilter/nfnetlink}.h.
"""

from __future__ import annotations

import errno
import os
import struct

NLMSG_ERROR = 2  # body: int errno (negative; 0 for an ack), then the request's header
NLMSG_DONE = 3  # the end of a dump
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH

NETLINK_NETFILTER = 12
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, seq, portid (host order)
ERRNO = struct.Struct("=i")
NLATTR = struct.Struct("=HH")  # length, type
NFGENMSG = struct.Struct("!BBH")  # netfilter's header: family, version, res_id (network order)

Message = tuple[int, int, bytes]  # (type, seq, body)


def align(length: int) -> int:
    """Netlink messages and attributes start on 4-byte boundaries."""
    return (length + 3) & ~3


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message to send; the kernel fills in our port id."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def error_code(body: bytes) -> int | None:
    """The positive errno in an NLMSG_DONE or NLMSG_ERROR body (0: none, an ack); None: the
    body is too short to hold one."""
    if len(body) < ERRNO.size:
        return None
    return max(0, -int(ERRNO.unpack_from(body)[0]))


def errno_text(code: int) -> str:
    """An errno as a person can look it up: its name and the C library's text, e.g.
    'ENOENT (No such file or directory)'; a number without a name stays a number
    ('errno 4095 (Unknown error 4095)')."""
    return f"{errno.errorcode.get(code, f'errno {code}')} ({os.strerror(code)})"


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


def attribute(kind: int, value: bytes) -> bytes:
    """One attribute to send, padded to the next 4-byte boundary."""
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, kind) + value + b"\0" * (align(length) - length)


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes] | None:
    """Attribute type -> value from `offset` on (the first of a type wins); None when a length
    is impossible."""
    found: dict[int, bytes] = {}
    while len(data) - offset >= NLATTR.size:
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            return None
        found.setdefault(kind & NLA_TYPE_MASK, data[offset + NLATTR.size : offset + length])
        offset += align(length)
    return found
