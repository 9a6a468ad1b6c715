"""PORT_BANNER (`[traps] banner`): a connect-mode TCP trap sends it, then closes; without one it
sends nothing; a banner that cannot be sent at once is given up, and the hit counts anyway.
Trap sockets on 127.0.0.1 high ports (no root needed)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from ports import free_ports
from porttrap.config.schema import Trap
from porttrap.model import Hit, Proto
from porttrap.sensors.sockets import SocketTraps, send_banner
from porttrap.testing import FakeClock

BANNER = b"SSH-2.0-OpenSSH_9.2\r\n"
WAIT = 20.0


def free_port() -> int:
    (port,) = free_ports(1)
    return port


def read_all(port: int) -> bytes:
    """Connect to the trap and read until it closes (blocking: run in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as client:
        received = b""
        while chunk := client.recv(4096):
            received += chunk
        return received


async def connect_and_read(banner: bytes) -> tuple[bytes, Hit]:
    port = free_port()
    hits: asyncio.Queue[Hit] = asyncio.Queue()
    traps = SocketTraps([Trap(Proto.TCP, port)], hits.put_nowait, FakeClock(), banner)
    traps.start(asyncio.get_running_loop())
    try:
        received = await asyncio.wait_for(asyncio.to_thread(read_all, port), WAIT)
        hit = await asyncio.wait_for(hits.get(), WAIT)
    finally:
        traps.close()
    return received, hit


def test_a_trap_with_a_banner_sends_it_then_closes() -> None:
    received, hit = asyncio.run(connect_and_read(BANNER))
    assert received == BANNER
    assert (hit.kind, str(hit.source)) == ("connect", "127.0.0.1")


def test_a_trap_without_a_banner_sends_nothing() -> None:
    received, hit = asyncio.run(connect_and_read(b""))
    assert received == b""
    assert hit.kind == "connect"


def test_a_banner_of_1024_bytes_arrives_whole() -> None:
    banner = bytes(range(256)) * 4
    received, _ = asyncio.run(connect_and_read(banner))
    assert received == banner


def test_a_banner_that_would_block_is_given_up_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """The send never waits: with the peer's buffer full it gives up (and says so at debug)."""
    caplog.set_level(logging.DEBUG, logger="porttrap")
    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(True)  # as an accepted connection is: only the flags keep it from waiting
        while True:
            try:
                ours.send(b"x" * 65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        send_banner(ours, BANNER)
    assert "event=trap-banner-skipped errno=EAGAIN" in caplog.text
