"""Fuzzing what the kernel sends over netlink: NFLOG reports (and the packets in them, down to
the hit they make), sock_diag dumps (listeners, SSH sessions), route dumps and nf_tables
replies. The inputs are the recorded datagrams of tests/data/{nflog,sockdiag,sessions,
rtnetlink}, mutated a message, a header, an attribute at a time, and plain random bytes.

Each parser's promise: it returns its result, counting what was malformed, and never raises
(nf_tables replies: a FirewallError for an error the kernel answered, nothing else); never
hangs; allocates little. Budget and a longer campaign: see fuzzing.py."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from fuzzing import budget, call, mutated_bytes, mutated_datagram
from hypothesis import given
from hypothesis import strategies as st

from porttrap import netlink
from porttrap.errors import FirewallError
from porttrap.firewall import objects
from porttrap.model import Hit, Proto
from porttrap.sensors import listeners, nflog, routes, sessions
from porttrap.sensors.classify import Probe, classify
from porttrap.sensors.kernel import hit_of

DATA = Path(__file__).parent.parent / "data"
NLMSG = [netlink.NLMSG_ERROR, netlink.NLMSG_DONE]


def recorded(folder: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((DATA / folder).glob("*.bin"))]


def datagrams(
    folder: str, fixed: int, kinds: list[int], types: list[int]
) -> st.SearchStrategy[bytes]:
    """Mutated recorded datagrams, mostly; some random bytes."""
    mutated = mutated_datagram(recorded(folder), fixed, kinds, types)
    return st.one_of(mutated, mutated, mutated, st.binary(max_size=300))


def most_messages(data: bytes) -> int:
    """No parse can find more than one thing per netlink header's worth of bytes."""
    return len(data) // netlink.NLMSGHDR.size + 1


# -- NFLOG ---------------------------------------------------------------------------------------

NFLOG_KINDS = [
    nflog.NFULA_PACKET_HDR,
    nflog.NFULA_TIMESTAMP,
    nflog.NFULA_PAYLOAD,
    nflog.NFULA_PREFIX,
]


def nflog_property(data: bytes) -> None:
    batch = call(lambda: nflog.parse_batch(data))
    assert len(batch.packets) + batch.malformed + batch.ignored <= most_messages(data)
    for packet in batch.packets:
        assert packet.family in (4, 6)
        probe = call(lambda: classify(packet.payload, packet.family))  # noqa: B023
        assert probe is None or isinstance(probe, Probe)
        hit = call(lambda: hit_of(packet, 1.7e9))  # noqa: B023
        assert hit is None or isinstance(hit, Hit)
        assert hit is None or (0 <= hit.port <= 65535 and 0 <= hit.source_port <= 65535)


@budget(800)
@given(datagrams("nflog", netlink.NFGENMSG.size, NFLOG_KINDS, [nflog.NFULNL_MSG_PACKET, *NLMSG]))
def test_nflog_datagrams_parse_or_count_as_malformed(data: bytes) -> None:
    nflog_property(data)


@st.composite
def ip_packets(draw: st.DrawFn) -> tuple[bytes, int]:
    """The IP packets of the recorded NFLOG reports, mutated (headers, lengths, extension
    chains), with the family they were reported as or another."""
    payloads = [
        (packet.payload, packet.family)
        for sample in recorded("nflog")
        for packet in nflog.parse_messages(sample)
    ]
    payload, family = draw(st.sampled_from(payloads))
    family = draw(st.sampled_from([family, family, 4, 6, 2, 10, 0, 99]))
    return draw(mutated_bytes(payload, max_size=200)), family


@budget(800)
@given(ip_packets())
def test_logged_packets_classify_or_give_none(packet: tuple[bytes, int]) -> None:
    payload, family = packet
    probe = call(lambda: classify(payload, family))
    assert probe is None or probe.proto in Proto


# -- sock_diag -----------------------------------------------------------------------------------

DIAG_SIZE = 72  # inet_diag_msg
DIAG_KINDS = list(range(1, 12))  # INET_DIAG_MEMINFO ... : parsed by no one, carried by all


def listeners_property(data: bytes) -> None:
    for proto in Proto:
        reply = call(lambda: listeners.parse_reply(data, proto))  # noqa: B023
        assert len(reply.listeners) + reply.malformed <= most_messages(data)
        assert all(0 <= each.port <= 65535 for each in reply.listeners)
        assert reply.error >= 0
        call(lambda: listeners.served_ports(reply.listeners))  # noqa: B023


@budget(600)
@given(datagrams("sockdiag", DIAG_SIZE, DIAG_KINDS, [listeners.SOCK_DIAG_BY_FAMILY, *NLMSG]))
def test_sock_diag_dumps_of_listeners_parse_or_count_as_malformed(data: bytes) -> None:
    listeners_property(data)


def sessions_property(data: bytes) -> None:
    reply = call(lambda: sessions.parse_reply(data, [22, 2222]))
    assert len(reply.peers) + reply.malformed <= most_messages(data)
    assert reply.error >= 0


@budget(600)
@given(
    datagrams(
        "sessions",
        DIAG_SIZE,
        DIAG_KINDS,
        [sessions.TCPDIAG_GETSOCK, listeners.SOCK_DIAG_BY_FAMILY, *NLMSG],
    )
)
def test_sock_diag_dumps_of_sessions_parse_or_count_as_malformed(data: bytes) -> None:
    sessions_property(data)


# -- routes --------------------------------------------------------------------------------------

ROUTE_KINDS = [routes.RTA_GATEWAY, routes.RTA_MULTIPATH, routes.RTA_TABLE, routes.RTA_VIA]


def routes_property(data: bytes) -> None:
    reply = call(lambda: routes.parse_reply(data))
    assert reply.error >= 0
    assert len(reply.gateways) <= len(data)


@budget(600)
@given(
    datagrams(
        "rtnetlink", struct.calcsize("=BBBBBBBBI"), ROUTE_KINDS, [routes.RTM_NEWROUTE, *NLMSG]
    )
)
def test_route_dumps_parse_or_count_as_malformed(data: bytes) -> None:
    routes_property(data)


# -- nf_tables replies ---------------------------------------------------------------------------

NEWOBJ = objects.NFNL_SUBSYS_NFTABLES << 8 | 20
NEWTABLE = objects.NFNL_SUBSYS_NFTABLES << 8 | objects.NFT_MSG_NEWTABLE
TABLE = "porttrap"


def _counter(name: str, packets: int) -> bytes:
    data = netlink.attribute(objects.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets))
    body = netlink.NFGENMSG.pack(objects.NFPROTO_INET, 0, 0)
    body += netlink.attribute(objects.NFTA_OBJ_TABLE, TABLE.encode() + b"\0")
    body += netlink.attribute(objects.NFTA_OBJ_NAME, name.encode() + b"\0")
    body += netlink.attribute(objects.NFTA_OBJ_DATA | 0x8000, data)
    return netlink.message(NEWOBJ, 0, 1, body)


# As the kernel answers: counter objects, then the end of the dump; a table; an error.
NFT_SAMPLES = [
    _counter("hits_tcp", 7)
    + _counter("drops", 0)
    + netlink.message(netlink.NLMSG_DONE, 0, 1, bytes(4)),
    netlink.message(
        NEWTABLE, 0, 1, netlink.NFGENMSG.pack(1, 0, 0) + netlink.attribute(1, b"porttrap\0")
    ),
    netlink.message(netlink.NLMSG_ERROR, 0, 1, struct.pack("=i", -2) + bytes(16)),
]
NFT_KINDS = [
    objects.NFTA_OBJ_TABLE,
    objects.NFTA_OBJ_NAME,
    objects.NFTA_OBJ_DATA,
    objects.NFTA_COUNTER_PACKETS,
]


def nft_property(data: bytes) -> None:
    try:
        found, _ = call(lambda: objects.parse_counters(data, TABLE, 1))
    except FirewallError as err:
        assert str(err)
    else:
        assert all(isinstance(name, str) and count >= 0 for name, count in found.items())
    try:
        call(lambda: objects.parse_table_reply(data, TABLE, 1))
    except FirewallError as err:
        assert str(err)


@budget(600)
@given(
    st.one_of(
        *[mutated_datagram(NFT_SAMPLES, 4, NFT_KINDS, [NEWOBJ, NEWTABLE, *NLMSG])] * 3,
        st.binary(max_size=200),
    )
)
def test_nf_tables_replies_parse_or_raise_a_firewall_error(data: bytes) -> None:
    nft_property(data)


PROPERTIES: dict[str, Callable[[bytes], None]] = {
    "nflog": nflog_property,
    "sockdiag": listeners_property,
    "sessions": sessions_property,
    "rtnetlink": routes_property,
    "nft-objects": nft_property,
}
