"""Hand-built Ethernet frames and an AF_PACKET capture, for the floods of the tests and the
benches (bench/ imports it from here).

The frames are built once, up front (TCP checksum included), so that sending is one `send` per
frame on an AF_PACKET socket: no routing, no neighbour lookup, any source address. The capture
reads frames with the kernel's receive timestamp (SO_TIMESTAMPNS): for a frame coming in from
a veth peer it is taken when the frame enters the namespace (netif_rx), before nftables sees it.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from netns import Netns

ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD on x86-64; SCM_TIMESTAMPNS has the same number
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
TCP_PROTO, UDP_PROTO = 6, 17


def device_of(ns: Netns, address: str) -> str:
    """The interface of `ns` that holds `address`."""
    return ns.run(["ip", "-o", "addr", "show", "to", address]).split()[1]


def mac_of(ns: Netns, device: str) -> bytes:
    found = json.loads(ns.run(["ip", "-j", "link", "show", "dev", device]))
    return bytes.fromhex(found[0]["address"].replace(":", ""))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def tcp_frame(
    macs: tuple[bytes, bytes],
    source: str,
    target: str,
    ports: tuple[int, int],
    *,
    flags: int = SYN,
    seq: int = 1000,
) -> bytes:
    """One Ethernet frame holding a TCP segment without options or payload; `macs` is
    (destination, source)."""
    src, dst = ipaddress.ip_address(source).packed, ipaddress.ip_address(target).packed
    tcp = _TCP.pack(ports[0], ports[1], seq, 0, 5 << 4, flags, 64240, 0, 0)
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        ethertype = ETH_P_IP
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(tcp), 6)
        ethertype = ETH_P_IPV6
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    if ethertype == ETH_P_IP:
        header = _IP4.pack(0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    else:
        header = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + src + dst
    return macs[0] + macs[1] + struct.pack("!H", ethertype) + header + tcp


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def forged(
    macs: tuple[bytes, bytes],
    target: str,
    sources: Sequence[bytes],
    ports: Sequence[tuple[int, int]],
    proto: int = TCP_PROTO,
) -> list[bytes]:
    """One frame per (source, (sport, dport)): a SYN as `tcp_frame` builds it, or an empty UDP
    datagram; `sources` are packed addresses of `target`'s family. Built for floods of a
    million frames: the checksums are summed from the fixed words once and from the varying
    ones (source, ports) per frame."""
    dst = ipaddress.ip_address(target).packed
    words = struct.Struct(f"!{len(dst) // 2}H")
    length = 8 if proto == UDP_PROTO else 20
    fixed = sum(words.unpack(dst)) + proto + length  # pseudo header: dst, protocol, length
    if proto == UDP_PROTO:
        fixed += length  # the UDP header's own length field
    else:
        fixed += 1000 + ((5 << 4) << 8 | SYN) + 64240  # sequence, offset and flags, window
    ethernet = macs[0] + macs[1] + struct.pack("!H", ETH_P_IPV6 if len(dst) == 16 else ETH_P_IP)
    ip6 = struct.pack("!IHBB", 6 << 28, length, proto, 64)
    ip4 = 0x4500 + 20 + length + 0x4000 + (64 << 8 | proto) + sum(words.unpack(dst))
    frames = []
    for source, (sport, dport) in zip(sources, ports, strict=True):
        mine = sum(words.unpack(source))
        check = ~_fold(fixed + mine + sport + dport) & 0xFFFF
        if proto == UDP_PROTO:
            header = _UDP.pack(sport, dport, length, check or 0xFFFF)
        else:
            header = _TCP.pack(sport, dport, 1000, 0, 5 << 4, SYN, 64240, check, 0)
        if len(dst) == 16:
            frames.append(ethernet + ip6 + source + dst + header)
        else:
            ip_check = ~_fold(ip4 + mine) & 0xFFFF
            ip = _IP4.pack(0x45, 0, 20 + length, 0, 0x4000, 64, proto, ip_check, source, dst)
            frames.append(ethernet + ip + header)
    return frames


def sender(ns: Netns, device: str) -> socket.socket:
    """An AF_PACKET socket in `ns` that sends whole frames out of `device` (receives none)."""
    with ns.inside():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((device, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return sock


@dataclass(frozen=True, slots=True)
class Seen:
    """One captured TCP segment; `at` is the kernel's timestamp in ns (CLOCK_REALTIME)."""

    at: int
    outgoing: bool
    source: str
    target: str
    sport: int
    dport: int
    flags: int


class Capture:
    """Every frame in and out of `device` in `ns`, with the kernel's timestamps."""

    def __init__(self, ns: Netns, device: str, buffer: int = 64 << 20) -> None:
        with ns.inside():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((device, 0))
        self.sock.setblocking(False)

    def drain(self) -> Iterator[Seen]:
        """The TCP segments waiting in the socket, oldest first."""
        while True:
            try:
                data, ancillary, _, address = self.sock.recvmsg(256, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            at = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    at = seconds * 1_000_000_000 + nanoseconds
            seen = parse(data, at, address[2] == PACKET_OUTGOING)
            if seen is not None:
                yield seen

    def close(self) -> None:
        self.sock.close()


class Recorder(threading.Thread):
    """Drains a capture into `frames` in the background until `stop()`: for captures that
    would overflow any socket buffer (a whole scan)."""

    def __init__(self, capture: Capture) -> None:
        super().__init__(daemon=True)
        self.capture = capture
        self.frames: list[Seen] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            select.select([self.capture.sock], [], [], 0.1)
            self.frames.extend(self.capture.drain())

    def stop(self) -> list[Seen]:
        self._done.set()
        self.join()
        self.frames.extend(self.capture.drain())
        return self.frames


def parse(frame: bytes, at: int, outgoing: bool) -> Seen | None:
    """The TCP segment in an Ethernet frame (IPv4 without options handled too), or None."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == ETH_P_IP and len(frame) >= 34 and frame[23] == 6:
        start = 14 + (frame[14] & 0x0F) * 4
        source = socket.inet_ntop(socket.AF_INET, frame[26:30])
        target = socket.inet_ntop(socket.AF_INET, frame[30:34])
    elif ethertype == ETH_P_IPV6 and len(frame) >= 54 and frame[20] == 6:
        start = 54
        source = socket.inet_ntop(socket.AF_INET6, frame[22:38])
        target = socket.inet_ntop(socket.AF_INET6, frame[38:54])
    else:
        return None
    if len(frame) < start + 14:
        return None
    sport, dport = struct.unpack_from("!HH", frame, start)
    return Seen(at, outgoing, source, target, sport, dport, frame[start + 13])
