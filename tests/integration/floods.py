"""Forged floods: Ethernet frames built up front (any source address, checksums included) and
sent from a test namespace with one AF_PACKET socket, thousands a second. Scapy builds a few
hundred packets a second; a flood of thousands of forged sources needs this. No routing, no
neighbour lookup: the frames go out of one interface to the MAC address given.
"""

from __future__ import annotations

import ipaddress
import socket

from frames import TCP_PROTO, UDP_PROTO, forged, mac_of, sender

from netns import Netns

TCP, UDP = TCP_PROTO, UDP_PROTO


class Sender:
    """An AF_PACKET socket in `ns` that sends whole frames out of `device` to the interface
    `to` at the other end of its link (in `peer`)."""

    def __init__(self, ns: Netns, device: str, peer: Netns, to: str) -> None:
        self.macs = (mac_of(peer, to), mac_of(ns, device))
        self.sock: socket.socket = sender(ns, device)

    def frame(self, source: str, target: str, proto: int, ports: tuple[int, int]) -> bytes:
        """One frame: a TCP SYN without options, or an empty UDP datagram."""
        packed = ipaddress.ip_address(source).packed
        return forged(self.macs, target, [packed], [ports], proto)[0]

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
