"""Record NFLOG datagrams from a real kernel for tests/unit/test_nflog_parse.py.

Run as root from the repository root:  .venv/bin/python tests/data/nflog/record.py

It makes two network namespaces (tests/integration/nflog_env.py; both deleted at the end, also
on failure), probes the protected one from the other, and writes each datagram the kernel sent
as NAME.bin with its parse beside it as NAME.expected.json. A parse is written only after it
matches what was sent (family, prefix, source address, protocol, port), so a parser bug
cannot slip into the expected files. The samples here were recorded on Linux 6.18.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent.parent / "integration")]

from nflog_env import (  # noqa: E402
    BARE_PORT,
    GROUP,
    PORT,
    PREFIX,
    PROTECTED_V4,
    PROTECTED_V6,
    SCANNER_V4,
    SCANNER_V6,
    UDP_PREFIX,
    ip_protocol_and_dport,
    ip_source,
    probe,
    protected_pair,
)

from netns import Netns  # noqa: E402
from porttrap.sensors.nflog import open_nflog_socket, parse_messages  # noqa: E402

TCP, UDP = 6, 17


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # "tcp" or "udp"
    target: str
    source: str
    prefix: str
    port: int = PORT
    count: int = 1  # probes sent; all must arrive in the one datagram recorded

    @property
    def family(self) -> int:
        return 6 if ":" in self.target else 4


SAMPLES = [
    Sample("tcp4-syn", "tcp", PROTECTED_V4, SCANNER_V4, PREFIX),
    Sample("tcp6-syn", "tcp", PROTECTED_V6, SCANNER_V6, PREFIX),
    Sample("udp4", "udp", PROTECTED_V4, SCANNER_V4, UDP_PREFIX),
    Sample("udp6", "udp", PROTECTED_V6, SCANNER_V6, UDP_PREFIX),
    Sample("tcp4-no-prefix", "tcp", PROTECTED_V4, SCANNER_V4, "", port=BARE_PORT),
    Sample("udp4-batch-of-5", "udp", PROTECTED_V4, SCANNER_V4, UDP_PREFIX, count=5),
]


def record(sock: socket.socket, scanner: Netns, sample: Sample) -> None:
    probe(scanner, sample.kind, sample.target, sample.port, sample.count)
    data = sock.recv(65536)
    packets = parse_messages(data)
    assert len(packets) == sample.count, (sample.name, packets)
    protocol = TCP if sample.kind == "tcp" else UDP
    for packet in packets:
        assert (packet.family, packet.prefix) == (sample.family, sample.prefix), packet
        assert ip_source(packet.payload) == sample.source, packet
        assert ip_protocol_and_dport(packet.payload) == (protocol, sample.port), packet
    expected = [
        {
            "family": p.family,
            "prefix": p.prefix,
            "hook": p.hook,
            "timestamp": p.timestamp,
            "payload": p.payload.hex(),
        }
        for p in packets
    ]
    (HERE / f"{sample.name}.bin").write_bytes(data)
    (HERE / f"{sample.name}.expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(f"{sample.name}: {len(data)} bytes, {len(packets)} packet(s)")


def main() -> None:
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns.create())
        return made[-1]

    try:
        with tempfile.TemporaryDirectory() as tmp:
            protected, scanner = protected_pair(make, Path(tmp))
        with protected.inside():
            sock, early = open_nflog_socket(GROUP, 1 << 20)
        assert not early, early
        with sock:
            sock.settimeout(5)
            for sample in SAMPLES:
                record(sock, scanner, sample)
    finally:
        for netns in reversed(made):
            netns.delete()


if __name__ == "__main__":
    main()
