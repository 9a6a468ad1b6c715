"""Record NFQUEUE datagrams from a real kernel for tests/unit/test_nfqueue_parse.py.

Run as root from the repository root:  .venv/bin/python tests/data/nfqueue/record_nfqueue.py

It makes two network namespaces (tests/integration/nfqueue_env.py; both deleted at the end,
also on failure), sends a crafted SYN from one to the queued port of the other, and writes
each datagram the kernel sent as NAME.bin with its parse beside it as NAME.expected.json; and
the kernel's refusal of a verdict for an unknown packet id (verdict-refused). A parse is
written only after it matches what was sent (family, source address, port, SYN), so a parser
bug cannot slip into the expected files. The samples here were recorded on Linux 6.18.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent.parent / "integration")]

from crafted import send  # noqa: E402
from nfqueue_env import (  # noqa: E402
    PORT,
    PROTECTED_V4,
    PROTECTED_V6,
    QUEUE,
    protected_pair,
    syn,
)

from netns import Netns  # noqa: E402
from porttrap.sensors.classify import classify  # noqa: E402
from porttrap.sensors.nfqueue import (  # noqa: E402
    QueuedPacket,
    open_queue_socket,
    parse_batch,
    verdict_message,
)

UNKNOWN_ID = 0x7FFFFFF0


def as_json(packet: QueuedPacket) -> dict[str, object]:
    return {
        "packet_id": packet.packet_id,
        "family": packet.family,
        "hook": packet.hook,
        "timestamp": packet.timestamp,
        "payload": packet.payload.hex(),
    }


def record_syn(sock: socket.socket, scanner: Netns, name: str, target: str) -> None:
    send(scanner, [syn(target)])
    data = sock.recv(65536)
    packets = parse_batch(data).packets
    assert len(packets) == 1, (name, packets)
    probe = classify(packets[0].payload, packets[0].family)
    assert probe is not None, packets
    assert (str(probe.source), probe.destination_port, probe.kind) == (
        syn(target).source, PORT, "syn"), probe  # fmt: skip
    sock.send(verdict_message(QUEUE, packets[0].packet_id, accept=False))
    write(name, data, [as_json(p) for p in packets])


def record_refusal(sock: socket.socket) -> None:
    sock.send(verdict_message(QUEUE, UNKNOWN_ID, accept=True, seq=99))
    data = sock.recv(65536)
    batch = parse_batch(data)
    assert batch.errors == [2] and not batch.packets, batch  # ENOENT
    write("verdict-refused", data, {"errors": batch.errors})


def write(name: str, data: bytes, expected: object) -> None:
    (HERE / f"{name}.bin").write_bytes(data)
    (HERE / f"{name}.expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"recorded {name}: {len(data)} bytes")


def main() -> None:
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns.create())
        return made[-1]

    try:
        with tempfile.TemporaryDirectory() as scratch:
            protected, scanner = protected_pair(make, Path(scratch))
            with protected.inside():
                sock, _ = open_queue_socket(QUEUE, 16, True, 65536)
            sock.setblocking(True)
            sock.settimeout(10)
            record_syn(sock, scanner, "tcp4-syn", PROTECTED_V4)
            record_syn(sock, scanner, "tcp6-syn", PROTECTED_V6)
            record_refusal(sock)
            sock.close()
    finally:
        for netns in made:
            netns.delete()


if __name__ == "__main__":
    main()
