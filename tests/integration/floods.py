"""Forged floods: Ethernet frames built up front (any source address, checksums included) and
sent from a test namespace with one AF_PACKET socket, thousands a second. Scapy builds a few
hundred packets a second; a flood of thousands of forged sources needs this. No routing, no
neighbour lookup: the frames go out of one interface to the MAC address given.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct

from netns import Netns

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
TCP, UDP = 6, 17
SYN = 0x02
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
PAYLOAD = b"probe"


def mac_of(ns: Netns, device: str) -> bytes:
    found = json.loads(ns.run(["ip", "-j", "link", "show", "dev", device]))
    return bytes.fromhex(found[0]["address"].replace(":", ""))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(
    macs: tuple[bytes, bytes], source: str, target: str, proto: int, ports: tuple[int, int]
) -> bytes:
    """One Ethernet frame (`macs`: destination, source) holding a TCP SYN without options or
    a UDP datagram carrying PAYLOAD, from `source` to `target`, IPv4 or IPv6."""
    src, dst = ipaddress.ip_address(source).packed, ipaddress.ip_address(target).packed
    if proto == TCP:
        segment = _TCP.pack(ports[0], ports[1], 1000, 0, 5 << 4, SYN, 64240, 0, 0)
        at = 16
    else:
        segment = _UDP.pack(ports[0], ports[1], _UDP.size + len(PAYLOAD), 0) + PAYLOAD
        at = 6
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(segment))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(segment), proto)
    total = _checksum(pseudo + segment) or 0xFFFF  # UDP: 0 means "no checksum"
    segment = segment[:at] + struct.pack("!H", total) + segment[at + 2 :]
    if len(src) == 4:
        header = _IP4.pack(0x45, 0, 20 + len(segment), 0, 0x4000, 64, proto, 0, src, dst)
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        ethertype = ETH_P_IP
    else:
        header = struct.pack("!IHBB", 6 << 28, len(segment), proto, 64) + src + dst
        ethertype = ETH_P_IPV6
    return macs[0] + macs[1] + struct.pack("!H", ethertype) + header + segment


class Sender:
    """An AF_PACKET socket in `ns` that sends whole frames out of `device` to the interface
    `to` at the other end of its link (in `peer`)."""

    def __init__(self, ns: Netns, device: str, peer: Netns, to: str) -> None:
        self.macs = (mac_of(peer, to), mac_of(ns, device))
        with ns.inside():
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.bind((device, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

    def frame(self, source: str, target: str, proto: int, ports: tuple[int, int]) -> bytes:
        return frame(self.macs, source, target, proto, ports)

    def send(self, frames: list[bytes]) -> int:
        """Send every frame once; returns how many the kernel refused (a full queue)."""
        refused = 0
        for data in frames:
            try:
                self.sock.send(data)
            except OSError:
                refused += 1
        return refused

    def close(self) -> None:
        self.sock.close()
