"""SOCK_DIAG dump parsing against dumps recorded from a real kernel (tests/data/sockdiag/, made
by its record_dumps.py), each beside its expected parse; then broken input, which must never
raise."""

from __future__ import annotations

import errno
import json
import socket
import struct
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porttrap.model import Proto
from porttrap.netlink import NLMSG_DONE, NLMSG_ERROR
from porttrap.sensors.listeners import (
    ALL_STATES,
    SOCK_DIAG_BY_FAMILY,
    TCP_CLOSE,
    TCP_LISTEN,
    Listener,
    Reply,
    parse_dump,
    parse_reply,
    request,
    served_ports,
)

DATA = Path(__file__).parent.parent / "data" / "sockdiag"
SAMPLES = sorted(path.stem for path in DATA.glob("*.bin"))
TCP_ESTABLISHED = 1


def sample(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def expected(name: str) -> tuple[Proto, list[dict[str, Any]]]:
    parse = json.loads((DATA / f"{name}.expected.json").read_text())
    return Proto(parse["proto"]), parse["listeners"]


def as_json(listener: Listener) -> dict[str, Any]:
    return {"port": listener.port, "address": str(listener.address), "ifindex": listener.ifindex}


def message(kind: int, body: bytes, seq: int = 0, length: int | None = None) -> bytes:
    """One netlink message; `length` overrides the header's length field."""
    size = 16 + len(body)
    header = struct.pack("=IHHII", size if length is None else length, kind, 0x2, seq, 0)
    return header + body + b"\0" * (-size % 4)


def diag(
    *,
    family: int = socket.AF_INET,
    state: int = TCP_LISTEN,
    sport: int = 8080,
    dport: int = 0,
    src: str = "192.0.2.1",
    ifindex: int = 0,
) -> bytes:
    """An inet_diag_msg body: family, state, timer, retrans, sockid, expires..inode."""
    raw = ip_address(src).packed.ljust(16, b"\0")
    sockid = struct.pack("!HH16s16s", sport, dport, raw, bytes(16)) + struct.pack("=I8x", ifindex)
    return struct.pack("=BBBB", family, state, 0, 0) + sockid + bytes(20)


def done(code: int = 0) -> bytes:
    return message(NLMSG_DONE, struct.pack("=i", code))


def test_the_samples_cover_both_protocols_families_and_all_states() -> None:
    assert SAMPLES == [
        "tcp4",
        "tcp4-all-states",
        "tcp6",
        "tcp6-all-states",
        "udp4",
        "udp4-all-states",
        "udp6",
        "udp6-all-states",
    ]


@pytest.mark.parametrize("name", SAMPLES)
def test_recorded_dumps_parse_as_expected(name: str) -> None:
    proto, listeners = expected(name)
    reply = parse_reply(sample(name), proto)
    assert [as_json(listener) for listener in reply.listeners] == listeners
    assert {listener.proto for listener in reply.listeners} == {proto}
    assert (reply.malformed, reply.done, reply.error) == (0, True, 0)
    assert parse_dump(sample(name), proto) == reply.listeners


@pytest.mark.parametrize("name", [name for name in SAMPLES if "all-states" not in name])
def test_clients_and_connections_in_a_dump_of_all_states_are_left_out(name: str) -> None:
    proto, _ = expected(name)
    assert parse_dump(sample(f"{name}-all-states"), proto) == parse_dump(sample(name), proto)


def test_the_ports_served_in_the_recorded_namespace() -> None:
    """record_dumps.py's sockets: not the connected UDP clients' ports, nor the TCP clients'
    or the socket bound to 8082 that never listened."""
    listeners = [item for name in SAMPLES for item in parse_dump(sample(name), expected(name)[0])]
    assert served_ports(listeners) == {
        Proto.TCP: frozenset({8080, 8081, 8443, 8444}),
        Proto.UDP: frozenset({5353, 5354, 5355}),
    }


def test_served_ports_ignore_addresses_and_interfaces() -> None:
    listeners = [
        Listener(Proto.TCP, 22, IPv4Address("192.0.2.1")),
        Listener(Proto.TCP, 22, IPv6Address("::")),
        Listener(Proto.UDP, 53, IPv4Address("127.0.0.1"), ifindex=1),
    ]
    assert served_ports(listeners) == {Proto.TCP: frozenset({22}), Proto.UDP: frozenset({53})}
    assert served_ports([]) == {Proto.TCP: frozenset(), Proto.UDP: frozenset()}


@pytest.mark.parametrize("name", ["tcp4-all-states", "udp6-all-states"])
def test_a_dump_cut_anywhere_gives_the_listeners_in_the_whole_messages_before_the_cut(
    name: str,
) -> None:
    proto, _ = expected(name)
    data = sample(name)
    ends = _message_ends(data)
    for cut in range(len(data)):
        whole = max((end for end in (0, *ends) if end <= cut), default=0)
        reply = parse_reply(data[:cut], proto)
        assert reply.listeners == parse_dump(data[:whole], proto), cut
        assert reply.malformed == (0 if cut == whole else 1), cut
        assert not reply.done, cut  # NLMSG_DONE is the last message


def _message_ends(data: bytes) -> list[int]:
    ends, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("=I", data, offset)
        offset += (length + 3) & ~3
        ends.append(min(offset, len(data)))
    return ends


@pytest.mark.parametrize(
    ("proto", "body", "served"),
    [
        (Proto.TCP, diag(state=TCP_LISTEN), True),
        (Proto.TCP, diag(state=TCP_CLOSE), False),  # bound, not listening
        (Proto.TCP, diag(state=TCP_ESTABLISHED, dport=40000), False),
        (Proto.UDP, diag(state=TCP_CLOSE), True),
        (Proto.UDP, diag(state=TCP_ESTABLISHED, dport=53), False),  # connected client
        (Proto.UDP, diag(state=TCP_CLOSE, dport=53), False),  # a peer: not a server
        (Proto.UDP, diag(state=TCP_LISTEN), False),  # UDP never listens
    ],
)
def test_which_sockets_serve_a_port(proto: Proto, body: bytes, served: bool) -> None:
    listeners = parse_dump(message(SOCK_DIAG_BY_FAMILY, body), proto)
    assert listeners == ([Listener(proto, 8080, IPv4Address("192.0.2.1"))] if served else [])


def test_addresses_and_interfaces_as_bound() -> None:
    data = message(SOCK_DIAG_BY_FAMILY, diag(family=socket.AF_INET6, src="2001:db8::1", ifindex=3))
    data += message(SOCK_DIAG_BY_FAMILY, diag(src="0.0.0.0", sport=443))
    assert parse_dump(data, Proto.TCP) == [
        Listener(Proto.TCP, 8080, IPv6Address("2001:db8::1"), 3),
        Listener(Proto.TCP, 443, IPv4Address("0.0.0.0")),
    ]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x02\x03", "shorter than a netlink header"),
        (message(SOCK_DIAG_BY_FAMILY, diag(), length=0), "zero length"),
        (message(SOCK_DIAG_BY_FAMILY, diag(), length=15), "length below the header"),
        (message(SOCK_DIAG_BY_FAMILY, diag(), length=4096), "length past the end"),
        (message(SOCK_DIAG_BY_FAMILY, diag()[:71]), "shorter than inet_diag_msg"),
        (message(SOCK_DIAG_BY_FAMILY, diag(family=socket.AF_UNIX)), "not IPv4/IPv6"),
        (message(NLMSG_DONE, b"\0\0"), "DONE without its int"),
    ],
)
def test_malformed_input_is_skipped_and_counted(data: bytes, why: str) -> None:
    reply = parse_reply(data, Proto.TCP)
    assert (reply.listeners, reply.malformed) == ([], 1), why


def test_a_good_message_after_a_broken_one_still_parses() -> None:
    data = message(SOCK_DIAG_BY_FAMILY, diag()[:40]) + message(SOCK_DIAG_BY_FAMILY, diag())
    reply = parse_reply(data, Proto.TCP)
    assert (len(reply.listeners), reply.malformed) == (1, 1)


def test_done_and_errors_end_the_dump_with_their_errno() -> None:
    assert parse_reply(done(), Proto.TCP) == Reply([], 0, done=True, error=0)
    assert parse_reply(done(-errno.EINTR), Proto.TCP).error == errno.EINTR
    refused = message(NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + bytes(16))
    assert parse_reply(refused, Proto.UDP) == Reply([], 0, done=True, error=errno.EPERM)


def test_messages_for_another_request_are_left_out() -> None:
    data = message(SOCK_DIAG_BY_FAMILY, diag(), seq=4) + message(NLMSG_DONE, bytes(4), seq=4)
    assert parse_reply(data, Proto.TCP, seq=5) == Reply()
    assert len(parse_reply(data, Proto.TCP, seq=4).listeners) == 1


@given(st.binary(max_size=512), st.sampled_from(Proto))
def test_random_bytes_never_raise(data: bytes, proto: Proto) -> None:
    parse_reply(data, proto)


@given(st.sampled_from(SAMPLES), st.integers(0, 1000), st.integers(0, 255))
def test_a_recorded_dump_with_one_byte_changed_never_raises(
    name: str, where: int, value: int
) -> None:
    data = bytearray(sample(name))
    data[where % len(data)] = value
    parse_reply(bytes(data), expected(name)[0])


@given(st.binary(min_size=72, max_size=200), st.sampled_from(Proto))
def test_any_diag_body_in_a_sound_frame_never_raises(body: bytes, proto: Proto) -> None:
    reply = parse_reply(message(SOCK_DIAG_BY_FAMILY, body) + done(), proto)
    assert reply.done
    assert all(0 <= listener.port <= 0xFFFF for listener in reply.listeners)


def test_the_dump_request_on_the_wire() -> None:
    tcp = request(9, socket.AF_INET6, Proto.TCP)
    assert tcp[:24].hex(" ", 4) == (
        "48000000 14000103 09000000 00000000"  # length 72, SOCK_DIAG_BY_FAMILY, REQUEST|DUMP
        " 0a060000 00040000"  # AF_INET6, IPPROTO_TCP, no extensions; states 1 << TCP_LISTEN
    )
    assert tcp[24:] == bytes(48)  # inet_diag_sockid: any
    udp = request(1, socket.AF_INET, Proto.UDP)
    assert udp[16:24].hex() == "0211000080000000"  # AF_INET, IPPROTO_UDP; 1 << TCP_CLOSE
    assert request(1, socket.AF_INET, Proto.UDP, ALL_STATES)[20:24] == b"\xff" * 4
