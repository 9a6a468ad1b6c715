"""What kind of scan one packet is: raw IP bytes (as the kernel logs them) in, a `Probe` out.

Groundwork for the kernel sensor, which sees stealth scans that never complete a handshake and
so never reach the socket traps. Pure: no sockets, no clock; bad bytes give None, never raise.

The classes are nmap's scan types, read from the TCP flags with ECE and CWR ignored (they only
advertise ECN; nmap's own SYN probes may carry them). `Probe.flags` keeps every flag.

    kind      flags        sent by
    syn       S            nmap -sS (and the first packet of a -sT connect scan: the same SYN)
    fin       F            nmap -sF
    null      (none)       nmap -sN
    xmas      FPU          nmap -sX
    ack       A            nmap -sA, and nmap -sW: a window scan sends the very same bare ACK
                           and differs only in how nmap reads the RST that comes back, so one
                           packet cannot tell them apart and `window` is never reported
    maimon    FA           nmap -sM
    other     the rest     e.g. SA, R, custom --scanflags
    udp       -            nmap -sU (any UDP datagram)

A bare ACK or FIN+ACK is also what a stray packet of a real connection looks like (say after
conntrack forgot it): deciding what is a scan is the caller's business, not this module's.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Final, NamedTuple

from porttrap.model import IPAddress, Proto

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_FLAG_LETTERS: Final = "FSRPAUEC"  # one per bit, lowest first: 0x29 is "FPU"
_ECN: Final = ECE | CWR

KIND_BY_FLAGS: Final[dict[int, str]] = {
    SYN: "syn",
    FIN: "fin",
    0: "null",
    FIN | PSH | URG: "xmas",
    ACK: "ack",  # also nmap -sW (window): indistinguishable by one packet
    FIN | ACK: "maimon",
}
OTHER: Final = "other"
UDP_KIND: Final = "udp"

# Both spellings: the values differ (AF_INET is 2, AF_INET6 10 on Linux), so neither is mistaken.
_VERSION_OF_FAMILY: Final = {socket.AF_INET: 4, socket.AF_INET6: 6, 4: 4, 6: 6}
_TCP, _UDP = 6, 17
_TCP_HEADER, _UDP_HEADER = 20, 8  # the fixed part each needs before we read it
_IPV4_HEADER, _IPV6_HEADER = 20, 40
_IPV4_OFFSET_MASK: Final = 0x1FFF  # fragment offset, in 8-byte units; non-zero: no L4 header

_HOP_BY_HOP, _ROUTING, _FRAGMENT, _AH, _DEST_OPTIONS = 0, 43, 44, 51, 60
_GENERIC_EXTENSIONS: Final = frozenset({_HOP_BY_HOP, _ROUTING, _DEST_OPTIONS})
_EXTENSIONS: Final = _GENERIC_EXTENSIONS | {_FRAGMENT, _AH}
_MAX_EXTENSIONS: Final = 8  # legitimate packets carry a few; a long chain is an attack on parsers


@dataclass(frozen=True, slots=True)
class Probe:
    """One packet aimed at this host, classified. `kind` is what `Hit.kind` will carry."""

    source: IPAddress
    destination: IPAddress
    source_port: int
    destination_port: int
    proto: Proto
    kind: str
    flags: str  # TCP flags as letters in bit order ("S", "FPU", "SEC"); "" for none and for UDP


class _Located(NamedTuple):
    """The network layer read: addresses, the L4 protocol number and the bytes after."""

    source: IPAddress
    destination: IPAddress
    protocol: int
    segment: bytes


def classify(payload: bytes, family: int) -> Probe | None:
    """The probe `payload` (an IPv4 or IPv6 packet, per `family`) makes, or None when it is not
    TCP/UDP, is a later fragment, or is too short or malformed. `family` is socket.AF_INET or
    AF_INET6, or the IP version 4 or 6 (as nflog.LoggedPacket carries it); anything else: None."""
    version = _VERSION_OF_FAMILY.get(family)
    if version == 4:
        located = _locate_ipv4(payload)
    elif version == 6:
        located = _locate_ipv6(payload)
    else:
        return None
    if located is None:
        return None
    if located.protocol == _TCP:
        return _tcp_probe(located)
    if located.protocol == _UDP:
        return _udp_probe(located)
    return None


def tcp_kind(flags: int) -> str:
    """The scan class of a TCP flags byte, ECE and CWR ignored."""
    return KIND_BY_FLAGS.get(flags & ~_ECN & 0xFF, OTHER)


def flag_letters(flags: int) -> str:
    """A TCP flags byte as letters, lowest bit first: 0x29 -> "FPU"."""
    return "".join(letter for bit, letter in enumerate(_FLAG_LETTERS) if flags & (1 << bit))


def _tcp_probe(located: _Located) -> Probe | None:
    segment = located.segment
    if len(segment) < _TCP_HEADER:
        return None
    source_port, destination_port = struct.unpack_from("!HH", segment)
    flags = segment[13]
    return Probe(
        located.source,
        located.destination,
        source_port,
        destination_port,
        Proto.TCP,
        tcp_kind(flags),
        flag_letters(flags),
    )


def _udp_probe(located: _Located) -> Probe | None:
    segment = located.segment
    if len(segment) < _UDP_HEADER:
        return None
    source_port, destination_port = struct.unpack_from("!HH", segment)
    return Probe(
        located.source, located.destination, source_port, destination_port, Proto.UDP, UDP_KIND, ""
    )


def _locate_ipv4(packet: bytes) -> _Located | None:
    """Honours IHL (options) and Total Length; None for later fragments and broken headers."""
    if len(packet) < _IPV4_HEADER or packet[0] >> 4 != 4:
        return None
    header_length = (packet[0] & 0x0F) * 4
    total_length, fragment = struct.unpack_from("!H2xH", packet, 2)
    if header_length < _IPV4_HEADER or header_length > len(packet):
        return None
    if total_length < header_length or fragment & _IPV4_OFFSET_MASK:
        return None
    # Total Length beyond what we hold: a capture cut short (NFLOG copy range); use what we have.
    end = min(total_length, len(packet))
    source, destination = IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
    return _Located(source, destination, packet[9], packet[header_length:end])


def _locate_ipv6(packet: bytes) -> _Located | None:
    """Walks the extension headers to the upper layer; None for later fragments and broken ones."""
    if len(packet) < _IPV6_HEADER or packet[0] >> 4 != 6:
        return None
    (payload_length,) = struct.unpack_from("!H", packet, 4)
    # Zero is a jumbogram (RFC 2675), whose length sits in a hop-by-hop option: take all we hold.
    end = len(packet) if payload_length == 0 else min(_IPV6_HEADER + payload_length, len(packet))
    walked = _walk_extensions(packet[_IPV6_HEADER:end], packet[6])
    if walked is None:
        return None
    protocol, segment = walked
    source, destination = IPv6Address(packet[8:24]), IPv6Address(packet[24:40])
    return _Located(source, destination, protocol, segment)


def _walk_extensions(data: bytes, next_header: int) -> tuple[int, bytes] | None:
    """Skips up to _MAX_EXTENSIONS extension headers: (upper-layer protocol, its bytes)."""
    offset = 0
    for _ in range(_MAX_EXTENSIONS + 1):
        if next_header not in _EXTENSIONS:
            return next_header, data[offset:]
        skipped = _extension_length(data, offset, next_header)
        if skipped is None:
            return None
        next_header = data[offset]
        offset += skipped
    return None


def _extension_length(data: bytes, offset: int, kind: int) -> int | None:
    """The length of the extension header at `offset`; None when it is cut short, or is a
    fragment header of a later fragment (which holds no upper-layer header to read)."""
    if kind == _FRAGMENT:
        if len(data) < offset + 8:
            return None
        (offset_and_flags,) = struct.unpack_from("!H", data, offset + 2)
        return None if offset_and_flags >> 3 else 8
    if len(data) < offset + 2:
        return None
    units = data[offset + 1]
    # AH counts 4-octet units minus 2 (RFC 4302); the others 8-octet units minus 1 (RFC 8200).
    length = (units + 2) * 4 if kind == _AH else (units + 1) * 8
    return length if len(data) >= offset + length else None
