"""RTM_GETROUTE dump parsing against dumps recorded from a real kernel (tests/data/rtnetlink/,
made by its record_routes.py), each beside its expected parse; then built and broken input, which
must never raise."""

from __future__ import annotations

import errno
import json
import socket
import struct
from ipaddress import ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porttrap.netlink import NLMSG_DONE, NLMSG_ERROR, attribute
from porttrap.sensors.routes import (
    RT_TABLE_LOCAL,
    RTA_GATEWAY,
    RTA_MULTIPATH,
    RTA_TABLE,
    RTA_VIA,
    RTM_NEWROUTE,
    Reply,
    parse_reply,
    request,
)

DATA = Path(__file__).parent.parent / "data" / "rtnetlink"
SAMPLES = sorted(path.stem for path in DATA.glob("*.bin"))
MAIN = 254  # RT_TABLE_MAIN


def sample(name: str) -> bytes:
    return (DATA / f"{name}.bin").read_bytes()


def expected(name: str) -> list[str]:
    parse: dict[str, list[str]] = json.loads((DATA / f"{name}.expected.json").read_text())
    return parse["gateways"]


def message(kind: int, body: bytes, seq: int = 0) -> bytes:
    size = 16 + len(body)
    return struct.pack("=IHHII", size, kind, 0x2, seq, 0) + body + b"\0" * (-size % 4)


def route(
    family: int = socket.AF_INET, table: int = MAIN, attrs: bytes = b"", seq: int = 0
) -> bytes:
    """An RTM_NEWROUTE message: rtmsg (a unicast route of `table`), then `attrs`."""
    rtmsg = struct.pack("=BBBBBBBBI", family, 24, 0, 0, table, 3, 0, 1, 0)
    return message(RTM_NEWROUTE, rtmsg + attrs, seq)


def gateway(text: str) -> bytes:
    return attribute(RTA_GATEWAY, ip_address(text).packed)


def via(family: int, text: str) -> bytes:
    return attribute(RTA_VIA, struct.pack("=H", family) + ip_address(text).packed)


def nexthop(attrs: bytes, length: int | None = None) -> bytes:
    """A struct rtnexthop and its attributes; `length` overrides rtnh_len."""
    size = 8 + len(attrs)
    return struct.pack("=HBBi", size if length is None else length, 0, 0, 2) + attrs


def gateways(data: bytes) -> set[str]:
    return {str(address) for address in parse_reply(data).gateways}


def test_the_samples_cover_both_families_and_a_dump_of_several_datagrams() -> None:
    assert SAMPLES == ["route4", "route6", "route6-many"]


@pytest.mark.parametrize("name", SAMPLES)
def test_recorded_dumps_parse_as_expected(name: str) -> None:
    reply = parse_reply(sample(name))
    assert sorted(reply.gateways, key=lambda a: (a.version, a)) == [
        ip_address(text) for text in expected(name)
    ]
    assert (reply.malformed, reply.done, reply.error) == (0, True, 0)


def test_the_recorded_gateways_of_table_local_are_in_the_dump_but_left_out() -> None:
    """record_routes.py adds 192.0.2.99 via 192.0.2.249 and 2001:db8:3::1 via 2001:db8::f9 to table
    local: the kernel dumps them, the parse must not count them."""
    for name, address in (("route4", "192.0.2.249"), ("route6", "2001:db8::f9")):
        assert attribute(RTA_GATEWAY, ip_address(address).packed) in sample(name)
        assert address not in gateways(sample(name))


def test_the_recorded_multipath_via_and_nexthop_object_routes_give_their_gateways() -> None:
    v4, v6 = gateways(sample("route4")), gateways(sample("route6"))
    assert {"192.0.2.251", "192.0.2.252"} <= v4  # multipath
    assert "fe80::2" in v4  # an IPv4 route via an IPv6 next hop (RTA_VIA)
    assert "192.0.2.248" in v4  # a route on nexthop object 1
    assert {"192.0.2.250", "192.0.2.247"} <= v4  # tables 100 and 1000
    assert {"2001:db8::fa", "2001:db8::fb", "fe80::1"} <= v6


def test_gateway_via_and_multipath_of_built_routes() -> None:
    hops = nexthop(gateway("192.0.2.1")) + nexthop(via(socket.AF_INET6, "fe80::9"))
    data = route(attrs=gateway("192.0.2.254")) + route(attrs=attribute(RTA_MULTIPATH, hops))
    data += route(socket.AF_INET6, attrs=gateway("2001:db8::1"))
    data += route(attrs=b"")  # a route on the link: no gateway
    assert gateways(data) == {"192.0.2.254", "192.0.2.1", "fe80::9", "2001:db8::1"}


def test_ipv4_mapped_gateways_are_unmapped() -> None:
    assert gateways(route(socket.AF_INET6, attrs=gateway("::ffff:192.0.2.7"))) == {"192.0.2.7"}


@pytest.mark.parametrize(
    ("table", "rta_table", "kept"),
    [
        (MAIN, None, True),
        (RT_TABLE_LOCAL, None, False),
        (252, RT_TABLE_LOCAL, False),  # RTA_TABLE is the truth: rtm_table is only 8 bits
        (252, 1000, True),
        (RT_TABLE_LOCAL, MAIN, True),
    ],
)
def test_table_local_is_left_out(table: int, rta_table: int | None, kept: bool) -> None:
    attrs = gateway("192.0.2.254")
    if rta_table is not None:
        attrs += attribute(RTA_TABLE, struct.pack("=I", rta_table))
    assert gateways(route(table=table, attrs=attrs)) == ({"192.0.2.254"} if kept else set())


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01\x02\x03", "shorter than a netlink header"),
        (message(RTM_NEWROUTE, bytes(11)), "shorter than rtmsg"),
        (route(attrs=struct.pack("=HH", 64, RTA_GATEWAY)), "attribute past the end"),
        (route(attrs=attribute(RTA_GATEWAY, bytes(5))), "gateway of the wrong size"),
        (route(socket.AF_INET6, attrs=gateway("192.0.2.1")), "IPv4 gateway of an IPv6 route"),
        (route(attrs=attribute(RTA_VIA, b"\x02")), "RTA_VIA without its family"),
        (route(attrs=attribute(RTA_VIA, struct.pack("=H", 99) + bytes(4))), "unknown family"),
        (route(attrs=attribute(RTA_MULTIPATH, nexthop(b"", length=4))), "rtnh_len too short"),
        (route(attrs=attribute(RTA_MULTIPATH, nexthop(b"", length=99))), "rtnh_len too long"),
        (message(NLMSG_DONE, b"\0\0"), "DONE without its int"),
    ],
)
def test_malformed_input_is_skipped_and_counted(data: bytes, why: str) -> None:
    reply = parse_reply(data)
    assert (reply.gateways, reply.malformed) == (frozenset(), 1), why


def test_a_broken_next_hop_does_not_hide_the_good_ones_before_it() -> None:
    hops = nexthop(gateway("192.0.2.1")) + nexthop(struct.pack("=HH", 99, RTA_GATEWAY))
    reply = parse_reply(route(attrs=attribute(RTA_MULTIPATH, hops)))
    assert ({str(a) for a in reply.gateways}, reply.malformed) == ({"192.0.2.1"}, 1)


def test_done_and_errors_end_the_dump_with_their_errno() -> None:
    assert parse_reply(message(NLMSG_DONE, bytes(4))) == Reply(done=True)
    refused = message(NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + bytes(16))
    assert parse_reply(refused) == Reply(done=True, error=errno.EPERM)


def test_messages_for_another_request_are_left_out() -> None:
    data = route(attrs=gateway("192.0.2.254"), seq=4) + message(NLMSG_DONE, bytes(4), seq=4)
    assert parse_reply(data, seq=5) == Reply()
    assert parse_reply(data, seq=4).gateways == {ip_address("192.0.2.254")}


@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data: bytes) -> None:
    parse_reply(data)


@given(st.sampled_from(SAMPLES), st.integers(0, 50_000), st.integers(0, 255))
def test_a_recorded_dump_with_one_byte_changed_never_raises(
    name: str, where: int, value: int
) -> None:
    data = bytearray(sample(name))
    data[where % len(data)] = value
    parse_reply(bytes(data))


@given(st.binary(max_size=200), st.sampled_from([socket.AF_INET, socket.AF_INET6, 0]))
def test_any_route_body_in_a_sound_frame_never_raises(attrs: bytes, family: int) -> None:
    assert parse_reply(route(family, attrs=attrs) + message(NLMSG_DONE, bytes(4))).done


def test_the_dump_request_on_the_wire() -> None:
    data = request(7, socket.AF_INET6)
    assert data.hex(" ", 4) == (
        "1c000000 1a000103 07000000 00000000"  # length 28, RTM_GETROUTE, REQUEST|DUMP, seq 7
        " 0a000000 00000000 00000000"  # rtmsg: AF_INET6, every table, type and flag
    )
