"""The SSH sessions sensor's pure half: dumps recorded from a real kernel (tests/data/sessions/,
made by its record_sessions.py) beside their expected parse, broken input, and the bytecode
filter, run by a port of the kernel's own interpreter and audit (net/ipv4/inet_diag.c)."""

from __future__ import annotations

import json
import socket
import struct
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porttrap.netlink import NLMSG_DONE, NLMSG_ERROR, split
from porttrap.sensors.listeners import SOCK_DIAG_BY_FAMILY, TCP_LISTEN
from porttrap.sensors.sessions import (
    INET_DIAG_BC_JMP,
    INET_DIAG_BC_S_GE,
    INET_DIAG_BC_S_LE,
    INET_DIAG_REQ_BYTECODE,
    MAX_EXACT_PORTS,
    TCP_ESTABLISHED,
    TCPDIAG_GETSOCK,
    Reply,
    bytecode,
    parse_reply,
    request,
)

DATA = Path(__file__).parent.parent / "data" / "sessions"
SAMPLES = sorted(path.stem for path in DATA.glob("*.bin"))
OP = struct.Struct("=BBH")


def sample(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def expected(name: str) -> dict[str, Any]:
    parse: dict[str, Any] = json.loads((DATA / f"{name}.expected.json").read_text())
    return parse


def message(kind: int, body: bytes, seq: int = 0) -> bytes:
    size = 16 + len(body)
    return struct.pack("=IHHII", size, kind, 0x2, seq, 0) + body + b"\0" * (-size % 4)


def diag(
    *,
    family: int = socket.AF_INET,
    state: int = TCP_ESTABLISHED,
    sport: int = 22,
    dst: str = "192.0.2.7",
) -> bytes:
    """An inet_diag_msg body of a connection from `dst` to local port `sport`."""
    src = ip_address("192.0.2.1" if family == socket.AF_INET else "2001:db8::1").packed
    raw = ip_address(dst).packed
    sockid = struct.pack("!HH16s16s", sport, 40000, src.ljust(16, b"\0"), raw.ljust(16, b"\0"))
    return struct.pack("=BBBB", family, state, 0, 0) + sockid + bytes(12 + 20)  # if, cookie, ..


def peers(data: bytes, ports: tuple[int, ...] = (22,)) -> set[str]:
    return {str(peer) for peer in parse_reply(data, ports).peers}


# -- recorded dumps ------------------------------------------------------------------------------


def test_the_samples_are_the_dump_with_and_without_the_filter() -> None:
    assert SAMPLES == ["sessions", "sessions-unfiltered"]


@pytest.mark.parametrize("name", SAMPLES)
def test_recorded_dumps_parse_as_expected(name: str) -> None:
    parse = expected(name)
    reply = parse_reply(sample(name), parse["ports"])
    assert sorted(str(peer) for peer in reply.peers) == parse["peers"]
    assert (reply.malformed, reply.done, reply.error) == (0, True, 0)


def test_one_dump_holds_both_families() -> None:
    families = {body[0] for _, _, body in split(sample("sessions"))[0]} - {0}
    assert families == {socket.AF_INET, socket.AF_INET6}


def test_the_unfiltered_dump_holds_other_connections_that_python_leaves_out() -> None:
    """record_sessions.py's web connections (8080) and the clients' own ends: in the dump of
    every ESTABLISHED socket, never among the peers."""
    unfiltered = sample("sessions-unfiltered")
    assert len(unfiltered) > 2 * len(sample("sessions"))
    assert peers(unfiltered, (22, 2222)) == peers(sample("sessions"), (22, 2222))
    assert peers(unfiltered, (8080,)) == {"192.0.2.10", "2001:db8::10"}


def test_an_ipv4_session_on_a_dual_stack_listener_is_unmapped() -> None:
    assert peers(sample("sessions"), (2222,)) == {"192.0.2.9"}
    assert peers(sample("sessions"), (22,)) == {"192.0.2.7", "192.0.2.8", "2001:db8::7"}


# -- built and broken input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (diag(), {"192.0.2.7"}),
        (diag(state=TCP_LISTEN), set()),
        (diag(state=8), set()),  # CLOSE_WAIT: the session is ending
        (diag(sport=2222), set()),  # not an SSH port
        (diag(family=socket.AF_INET6, dst="2001:db8::7"), {"2001:db8::7"}),
        (diag(family=socket.AF_INET6, dst="::ffff:192.0.2.9"), {"192.0.2.9"}),
    ],
)
def test_which_sockets_are_sessions(body: bytes, found: set[str]) -> None:
    assert peers(message(TCPDIAG_GETSOCK, body)) == found
    assert peers(message(SOCK_DIAG_BY_FAMILY, body)) == found  # the newer request's answers


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x02\x03", "shorter than a netlink header"),
        (message(SOCK_DIAG_BY_FAMILY, diag()[:71]), "shorter than inet_diag_msg"),
        (message(SOCK_DIAG_BY_FAMILY, diag(family=socket.AF_UNIX)), "not IPv4/IPv6"),
        (message(NLMSG_DONE, b"\0\0"), "DONE without its int"),
    ],
)
def test_malformed_input_is_skipped_and_counted(data: bytes, why: str) -> None:
    reply = parse_reply(data, (22,))
    assert (reply.peers, reply.malformed) == (frozenset(), 1), why


def test_done_errors_and_other_requests() -> None:
    refused = message(NLMSG_ERROR, struct.pack("=i", -1) + bytes(16))
    assert parse_reply(refused, (22,)) == Reply(done=True, error=1)
    data = message(SOCK_DIAG_BY_FAMILY, diag(), seq=4)
    assert parse_reply(data, (22,), seq=5) == Reply()
    assert parse_reply(data, (22,), seq=4).peers == {ip_address("192.0.2.7")}


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_reply(data, (22,))


@given(st.sampled_from(SAMPLES), st.integers(0, 1000), st.integers(0, 255))
def test_a_recorded_dump_with_one_byte_changed_never_raises(
    name: str, where: int, value: int
) -> None:
    data = bytearray(sample(name))
    data[where % len(data)] = value
    parse_reply(bytes(data), (22, 2222))


# -- the bytecode filter -------------------------------------------------------------------------


def kernel_audit(program: bytes) -> bool:
    """inet_diag_bc_audit for the ops porttrap uses: every op reached by "yes" jumps, each
    jump aligned and inside the program (or 4 bytes past it: refused), a port after S_GE/LE."""
    length = remaining = len(program)
    offset = 0
    while remaining > 0:
        code, yes, no = OP.unpack_from(program, offset)
        minimum = OP.size
        if code in (INET_DIAG_BC_S_GE, INET_DIAG_BC_S_LE):
            minimum += OP.size
            if remaining < minimum:
                return False
        elif code != INET_DIAG_BC_JMP:
            return False
        if no < minimum or no > remaining + 4 or no & 3:
            return False
        if no < remaining and not _reached(program, length - remaining + no):
            return False
        if yes < minimum or yes > remaining + 4 or yes & 3:
            return False
        offset += yes
        remaining -= yes
    return True


def _reached(program: bytes, target: int) -> bool:
    """valid_cc: `target` is an op boundary on the chain of "yes" jumps from the start."""
    offset = 0
    while offset <= len(program):
        if offset == target:
            return True
        if offset > target or offset == len(program):
            return False
        yes = program[offset + 1]
        if yes < 4 or yes & 3:
            return False
        offset += yes
    return False


def kernel_run(program: bytes, sport: int) -> bool:
    """inet_diag_bc_run: accepted when the jumps end exactly at the end of the program."""
    remaining, offset = len(program), 0
    while remaining > 0:
        code, yes, no = OP.unpack_from(program, offset)
        port = OP.unpack_from(program, offset + OP.size)[2] if code != INET_DIAG_BC_JMP else 0
        passed = {
            INET_DIAG_BC_JMP: False,
            INET_DIAG_BC_S_GE: sport >= port,
            INET_DIAG_BC_S_LE: sport <= port,
        }[code]
        step = yes if passed else no
        offset += step
        remaining -= step
    return remaining == 0


@given(st.sets(st.integers(1, 65535), min_size=1, max_size=8), st.integers(0, 65535))
def test_the_filter_passes_the_kernels_audit_and_accepts_exactly_the_ports(
    ports: set[int], sport: int
) -> None:
    program = bytecode(ports)
    assert kernel_audit(program)
    for probe in (sport, *ports, *(p + 1 for p in ports if p < 65535), *(p - 1 for p in ports)):
        assert kernel_run(program, probe) == (probe in ports), probe


def test_past_max_exact_ports_the_filter_is_their_range() -> None:
    ports = set(range(1000, 1130, 2))  # 65 ports, 1000 to 1128
    assert len(ports) == MAX_EXACT_PORTS + 1
    program = bytecode(ports)
    assert len(program) == 16 and kernel_audit(program)
    assert [kernel_run(program, p) for p in (999, 1000, 1001, 1128, 1129)] == [
        False, True, True, True, False,
    ]  # fmt: skip
    assert parse_reply(message(SOCK_DIAG_BY_FAMILY, diag(sport=1001)), ports).peers == set()


def test_the_filter_of_no_port_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one port"):
        bytecode([])


def test_the_dump_request_on_the_wire() -> None:
    data = request(3, (22,))
    assert data[:20].hex(" ", 4) == (
        "60000000 12000103 03000000 00000000"  # length 96, TCPDIAG_GETSOCK, REQUEST|DUMP
        " 00000000"  # no family (both), no extensions
    )
    assert data[20:68] == bytes(48)  # inet_diag_sockid: any
    assert data[68:76].hex(" ", 4) == "02000000 00000000"  # 1 << TCP_ESTABLISHED; dbs
    assert struct.unpack_from("=HH", data, 76) == (20, INET_DIAG_REQ_BYTECODE)
    assert data[80:] == bytecode([22])
    assert request(3, None) == data[:76].replace(b"\x60", b"\x4c", 1)  # no filter: 76 bytes
