"""NFQUEUE datagrams as the kernel sends them, built by hand for the reader's unit tests
(tests/unit/test_nfqueue_parse.py, test_daemon_hold.py)."""

from __future__ import annotations

import asyncio
import socket
import struct

from porttrap.sensors.nfqueue import NFQNL_MSG_PACKET

# 192.0.2.2:40000 -> 192.0.2.1:8080, SYN
IPV4_SYN = bytes.fromhex(
    "45000028000100004006f6cbc0000202c00002019c401f90000003e8000000005002200074b50000"
)


def message(kind: int, body: bytes, length: int | None = None) -> bytes:
    size = 16 + len(body)
    header = struct.pack("=IHHII", size if length is None else length, kind, 0, 0, 0)
    return header + body + b"\0" * (-size % 4)


def attribute(kind: int, value: bytes) -> bytes:
    size = 4 + len(value)
    return struct.pack("=HH", size, kind) + value + b"\0" * (-size % 4)


def queued(packet_id: int, hw_protocol: int = 0x0800, payload: bytes = IPV4_SYN) -> bytes:
    header = attribute(1, struct.pack("!IHB", packet_id, hw_protocol, 1))
    body = bytes([socket.AF_INET, 0, 0, 7]) + header + attribute(10, payload)
    return message(NFQNL_MSG_PACKET, body)


class Kernel:
    """The far end of the reader's socket: sends datagrams, reads the verdicts."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.loop = sock, loop

    def send(self, data: bytes) -> None:
        self.sock.send(data)
        self.loop.run_until_complete(asyncio.sleep(0))  # one turn: the reader reads
        self.loop.run_until_complete(asyncio.sleep(0))

    def verdicts(self) -> list[tuple[int, int]]:
        """(verdict, packet id) of each verdict sent so far."""
        found: list[tuple[int, int]] = []
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return found
            found.append(struct.unpack("!II", data[-8:]))
