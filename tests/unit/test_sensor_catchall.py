"""The catch-all trap's pure parts: SO_ORIGINAL_DST's answer, and where a connection is
reported when conntrack names its original destination or cannot. The kernel's redirect is in
tests/integration/test_catchall_netns.py."""

from __future__ import annotations

import errno
import socket
import struct
import sys
from ipaddress import ip_address
from typing import cast

import pytest

from porttrap.model import Proto
from porttrap.sensors.catchall import (
    IP6T_SO_ORIGINAL_DST,
    SO_ORIGINAL_DST,
    RedirectedSocket,
    original_destination,
    read_original_destination,
)
from porttrap.sensors.sockets import Destination
from porttrap.testing import FakeClock


def sockaddr_in(address: str, port: int) -> bytes:
    """As the kernel fills it: sa_family in host order, then port and address in network order."""
    family = socket.AF_INET.to_bytes(2, sys.byteorder)
    return family + struct.pack("!H4s", port, ip_address(address).packed) + bytes(8)


def sockaddr_in6(address: str, port: int) -> bytes:
    family = socket.AF_INET6.to_bytes(2, sys.byteorder)
    return family + struct.pack("!HI16sI", port, 0, ip_address(address).packed, 0)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (sockaddr_in("192.0.2.1", 2323), ("192.0.2.1", 2323)),
        (sockaddr_in6("2001:db8::1", 65535), ("2001:db8::1", 65535)),
        (sockaddr_in("192.0.2.1", 2323)[:7], None),  # truncated
        (sockaddr_in6("2001:db8::1", 1)[:23], None),
        (socket.AF_UNIX.to_bytes(2, sys.byteorder) + bytes(14), None),
        (b"\x02", None),
        (b"", None),
    ],
)
def test_original_destination(raw: bytes, parsed: tuple[str, int] | None) -> None:
    expected = None if parsed is None else (ip_address(parsed[0]), parsed[1])
    assert original_destination(raw) == expected


class Conn:
    """An accepted connection whose getsockopt answers `answer` (bytes, or an errno)."""

    def __init__(self, family: int, answer: bytes | int) -> None:
        self.family = family
        self.answer = answer
        self.asked: list[tuple[int, int, int]] = []

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked.append((level, option, size))
        if isinstance(self.answer, int):
            raise OSError(self.answer, "refused")
        return self.answer


def test_the_original_destination_is_asked_per_family() -> None:
    v4 = Conn(socket.AF_INET, sockaddr_in("192.0.2.1", 2323))
    v6 = Conn(socket.AF_INET6, sockaddr_in6("2001:db8::1", 2323))
    assert read_original_destination(cast(socket.socket, v4)) == (ip_address("192.0.2.1"), 2323)
    assert read_original_destination(cast(socket.socket, v6)) == (ip_address("2001:db8::1"), 2323)
    assert v4.asked == [(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)]
    assert v6.asked == [(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)]


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOPROTOOPT])
def test_no_conntrack_entry_is_no_original_destination(code: int) -> None:
    assert read_original_destination(cast(socket.socket, Conn(socket.AF_INET, code))) is None
    assert read_original_destination(cast(socket.socket, Conn(socket.AF_UNIX, b""))) is None


def redirected(port: int = 65023) -> RedirectedSocket:
    return RedirectedSocket(
        cast(socket.socket, None), proto=Proto.TCP, bound=ip_address("0.0.0.0"), port=port,
        emit=lambda hit: None, clock=FakeClock(),
    )  # fmt: skip


def test_a_redirected_connection_is_a_client_s_on_the_port_it_was_aimed_at() -> None:
    conn = Conn(socket.AF_INET, sockaddr_in("198.51.100.1", 2323))
    where = redirected().destination(cast(socket.socket, conn), ip_address("192.0.2.1"))
    assert where == Destination(ip_address("198.51.100.1"), 2323, client=True)


def test_without_an_original_destination_the_hit_is_on_the_catch_all_port() -> None:
    conn = Conn(socket.AF_INET6, errno.ENOENT)
    where = redirected().destination(cast(socket.socket, conn), ip_address("2001:db8::1"))
    assert where == Destination(ip_address("2001:db8::1"), 65023, client=True)
