"""Safe against a forger (issue 12), in a real kernel inside network namespaces: the watch learns
the host's clients (any protocol) and peers (the destinations of its own flows), marks the
datagrams to connect-mode UDP traps, the sensor reports peers' probes on a path of their own and
never blocks them, and a recent client's SYN to a TCP trap reaches the catch-all port, where the
listener reads the trap it aimed at. See tests/integration/guard_env.py for the namespaces."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from crafted import Probe, answers, send
from daemon_env import open_socket, tcp_works
from guard_env import (
    CLIENT4,
    CLIENT6,
    ECHO_PORT,
    HOST4,
    HOST6,
    HOST_LL,
    LAN_LL,
    LAN_TCP_PORT,
    LAN_UDP_PORT,
    OTHER4,
    SO_RCVMARK,
    STRANGER4,
    STRANGER6,
    TABLE,
    TCP_PEER4,
    TCP_PEER6,
    TRAP,
    UDP_PEER4,
    Guard,
    guard_env,
    mark_of,
    trap_socket,
)

from netns import Netns
from porttrap.model import Proto, unmap
from porttrap.sensors.kernel import hit_of
from porttrap.sensors.nflog import LoggedPacket, NflogReceiver
from porttrap.sensorspec import COUNTERS, MARK_CLIENT, MARK_MASK, MARK_PEER
from waiting import PATIENCE, holds_for, wait_until

pytestmark = pytest.mark.kernel

GROUP = 7055
CATCH_ALL = 65023
SO_ORIGINAL_DST = 80  # SOL_IP; IP6T_SO_ORIGINAL_DST is the same number at SOL_IPV6
CONNECT = f'[traps]\ntcp = ["{TRAP}"]\nudp = ["{TRAP}", "69"]\n'
STEALTH = f"""
[traps]
mode = "stealth"
tcp = ["{TRAP}", "2324"]
udp = ["{TRAP}"]
[kernel]
nflog_group = {GROUP}
"""
CONFIGS = {
    "connect": CONNECT,
    "connect-no-udp": f'[traps]\ntcp = ["{TRAP}"]\nudp = []\n',
    "connect-client-time-0": CONNECT + '[kernel]\nclient_time = "0s"\n',
    "stealth": STEALTH,
    "stealth-catch-all-off": STEALTH + "client_trap_port = 0\n",
    "stealth-client-time-0": STEALTH + 'client_time = "0s"\n',
    "tcp-advanced-udp-connect": '[traps]\nmode = { tcp = "advanced" }\nudp = ["161"]\n',
    "udp-stealth-tcp-connect": '[traps]\nmode = { udp = "stealth", tcp = "connect" }\n',
    "both-advanced-block-off": '[traps]\nmode = "advanced"\n[kernel]\nblock = false\n',
}
CHAINS = {  # name: (type, hook, priority) of each base chain of the watch and the redirect
    "watch_in": ("filter", "input", 300),
    "watch_out": ("filter", "output", 0),
    "syn_redirect": ("nat", "prerouting", -100),
}


@pytest.fixture
def guard(netns_factory: Callable[[], Netns]) -> Iterator[Guard]:
    with guard_env(netns_factory) as env:
        yield env


def base_chains(guard: Guard) -> dict[str, tuple[str, str, int]]:
    listed = json.loads(guard.nft("-j", "list", "table", "inet", TABLE))
    chains = [item["chain"] for item in listed["nftables"] if "chain" in item]
    return {c["name"]: (c["type"], c["hook"], c["prio"]) for c in chains if "hook" in c}


# --- every combination loads ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_combination_loads_with_the_watch_in_one_transaction_and_tears_down(
    guard: Guard, name: str
) -> None:
    state = guard.setup(CONFIGS[name], gateways=(ipaddress.ip_address("192.0.2.254"),))
    listing = guard.nft("list", "table", "inet", TABLE)
    chains = base_chains(guard)
    assert {k: v for k, v in chains.items() if k in CHAINS} == {
        k: v for k, v in CHAINS.items() if k != "syn_redirect" or state.spec.redirect
    }
    tcp_in_the_kernel = ("stealth", "tcp-advanced-udp-connect", "both-advanced-block-off")
    assert state.spec.redirect is (name in tcp_in_the_kernel)
    assert guard.elements("gateways_v4") == ["192.0.2.254"]
    assert ("chain input {" in listing) is bool(state.spec.protos)
    guard.backend.setup([], 0.0, state)  # a rebuild: the same again
    assert guard.nft("list", "table", "inet", TABLE) == listing
    if state.spec.protos:
        assert guard.counters() == dict.fromkeys(COUNTERS, 0)
    guard.backend.teardown()
    assert guard.nft("list", "tables") == ""


# --- clients and peers ------------------------------------------------------------------


def test_assured_flows_of_any_protocol_make_clients_and_unanswered_ones_do_not(
    guard: Guard,
) -> None:
    guard.setup(CONNECT)
    guard.udp_exchange(guard.lan, CLIENT4, HOST4, ECHO_PORT, rounds=2)  # a UDP stream
    guard.udp_exchange(guard.lan, STRANGER4, HOST4, ECHO_PORT, rounds=1)  # one answer only
    guard.become_client(CLIENT6)  # a TCP connection
    assert guard.elements("clients_v4") == [CLIENT4]
    assert guard.elements("clients_v6") == [CLIENT6]
    assert guard.elements("peers_v4") == guard.elements("peers_v6") == []  # they came to us


def test_a_syn_scanner_answered_by_an_open_port_is_no_client(guard: Guard) -> None:
    guard.setup(CONNECT)
    # SYN, SYN-ACK, then the scanner's kernel sends RST: `established`, never `assured`
    assert answers(guard.lan, [Probe(STRANGER4, HOST4, 8080, "syn")], timeout=PATIENCE) == ["SA"]
    holds_for(lambda: guard.elements("clients_v4") == [], 0.5, "no client")


def test_the_destinations_of_the_hosts_own_flows_are_peers(guard: Guard) -> None:
    guard.setup(CONNECT)
    assert tcp_works(guard.host, HOST4, TCP_PEER4, LAN_TCP_PORT)
    assert tcp_works(guard.host, HOST6, TCP_PEER6, LAN_TCP_PORT)
    guard.udp_exchange(guard.host, HOST4, UDP_PEER4, LAN_UDP_PORT, rounds=1)
    assert sorted(guard.elements("peers_v4")) == [TCP_PEER4, UDP_PEER4]
    assert guard.elements("peers_v6") == [TCP_PEER6]
    assert guard.elements("clients_v4") == []  # the LAN's answers are no clients' flows


def test_client_time_zero_tracks_nobody(guard: Guard) -> None:
    guard.setup(CONFIGS["connect-client-time-0"])
    guard.become_client(CLIENT4)
    assert tcp_works(guard.host, HOST4, TCP_PEER4, LAN_TCP_PORT)
    assert guard.elements("clients_v4") == guard.elements("peers_v4") == []


# --- the marks of connect-mode UDP traps -------------------------------------------------


def test_connect_mode_udp_datagrams_carry_the_client_and_peer_bits(guard: Guard) -> None:
    guard.setup(CONNECT)
    trap = trap_socket(guard)
    guard.become_client(CLIENT4)
    guard.become_client(CLIENT6)
    assert tcp_works(guard.host, HOST4, TCP_PEER4, LAN_TCP_PORT)  # the host talked to it
    assert mark_of(guard, trap, CLIENT4) == MARK_CLIENT
    assert mark_of(guard, trap, CLIENT6, HOST6) == MARK_CLIENT
    assert mark_of(guard, trap, TCP_PEER4) == MARK_PEER
    assert mark_of(guard, trap, LAN_LL, HOST_LL) == MARK_PEER  # link-local
    assert mark_of(guard, trap, STRANGER4) == 0
    assert mark_of(guard, trap, STRANGER6, HOST6) == 0
    guard.backend.set_gateways([ipaddress.ip_address(STRANGER4)])  # now a gateway: a peer
    assert mark_of(guard, trap, STRANGER4) == MARK_PEER
    guard.backend.set_gateways([])
    assert mark_of(guard, trap, STRANGER4) == 0


def test_the_mark_keeps_other_bits_and_clears_porttraps_set_by_others(guard: Guard) -> None:
    """Another table marks every datagram to the trap, porttrap's bits included: they are not
    taken for porttrap's verdict, and the others stay."""
    guard.setup(CONNECT)
    guard.nft("add", "table", "inet", "other")
    guard.nft("add", "chain", "inet", "other", "pre",
              "{ type filter hook prerouting priority 0; policy accept; }")  # fmt: skip
    guard.nft("add", "rule", "inet", "other", "pre", "udp", "dport", str(TRAP),
              "meta", "mark", "set", "0x00030005")  # fmt: skip
    trap = trap_socket(guard)
    guard.become_client(CLIENT4)
    assert mark_of(guard, trap, STRANGER4) == 0x5
    assert mark_of(guard, trap, CLIENT4) == 0x5 | MARK_CLIENT


def test_only_connect_mode_udp_trap_ports_are_marked(guard: Guard) -> None:
    guard.setup(CONNECT)
    guard.become_client(CLIENT4)
    with guard.host.inside():
        other = guard.keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    other.setsockopt(socket.SOL_SOCKET, SO_RCVMARK, 1)
    other.bind((HOST4, 7777))  # not a trap
    other.settimeout(5)
    with open_socket(guard.lan, CLIENT4, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"x", (HOST4, 7777))
    _, ancillary, _, _ = other.recvmsg(100, socket.CMSG_SPACE(4))
    assert [int.from_bytes(raw[:4], sys.byteorder) for _, _, raw in ancillary] == [0]
    assert guard.elements("connect_udp") == ["69", str(TRAP)]
    assert MARK_MASK == MARK_CLIENT | MARK_PEER


# --- stealth mode: the peer report path ------------------------------------------------


class Reports:
    """The NFLOG reports of the host's sensor, read on an event loop of the test's."""

    def __init__(self, guard: Guard) -> None:
        self.loop = asyncio.new_event_loop()
        self.packets: list[LoggedPacket] = []
        self.receiver = NflogReceiver(GROUP, self.packets.append)
        with guard.host.inside():
            self.receiver.start(self.loop)

    def wait_for(self, count: int) -> list[Any]:
        async def wait() -> None:
            deadline = self.loop.time() + PATIENCE
            while len(self.packets) < count:
                assert self.loop.time() < deadline, f"{len(self.packets)} of {count} reports"
                await asyncio.sleep(0.01)

        self.loop.run_until_complete(wait())
        return [(p.prefix, hit_of(p, 0.0)) for p in self.packets]

    def settle(self, seconds: float = 0.5) -> list[LoggedPacket]:
        """Read for `seconds` (a window in which nothing should come): what the kernel
        reported meanwhile."""

        async def read() -> None:
            end = self.loop.time() + seconds
            while self.loop.time() < end:
                await asyncio.sleep(0.01)

        self.loop.run_until_complete(read())
        return self.packets

    def close(self) -> None:
        self.receiver.close()
        self.loop.close()


@pytest.fixture
def reports(guard: Guard) -> Iterator[Reports]:
    found = Reports(guard)
    yield found
    found.close()


def blocked(guard: Guard, address: str) -> bool:
    version = 6 if ":" in address else 4
    return any(guard.in_set(f"block_{g}_v{version}", address) for g in "ab")


def test_a_peers_probes_are_reported_on_the_peer_path_and_never_blocked(
    guard: Guard, reports: Reports
) -> None:
    gateway = ipaddress.ip_address(OTHER4)
    guard.setup(STEALTH, gateways=(gateway,))
    assert tcp_works(guard.host, HOST4, TCP_PEER4, LAN_TCP_PORT)  # a destination of the host
    peers = [TCP_PEER4, OTHER4]
    probes = [Probe(source, HOST4, TRAP, kind) for source in peers for kind in ("syn", "udp")]
    probes += [Probe(LAN_LL, HOST_LL, TRAP, "syn"), Probe(STRANGER4, HOST4, TRAP, "syn")]
    send(guard.lan, probes)
    seen = {(str(hit.source), hit.proto): (prefix, hit.peer) for prefix, hit in
            reports.wait_for(len(probes))}  # fmt: skip
    for source in peers:
        for proto in Proto:
            assert seen[(source, proto)] == ("porttrap:peer", True)
        assert not blocked(guard, source)
    assert seen[(LAN_LL, Proto.TCP)] == ("porttrap:peer", True)
    assert not blocked(guard, LAN_LL)
    assert seen[(STRANGER4, Proto.TCP)] == ("porttrap:new", False)
    assert blocked(guard, STRANGER4)


def test_a_gateway_that_goes_away_is_blocked_again(guard: Guard, reports: Reports) -> None:
    guard.setup(STEALTH, gateways=(ipaddress.ip_address(OTHER4),))
    guard.backend.set_gateways([])
    send(guard.lan, [Probe(OTHER4, HOST4, TRAP, "syn")])
    assert [prefix for prefix, _ in reports.wait_for(1)] == ["porttrap:new"]
    assert blocked(guard, OTHER4)


# --- stealth mode: a client's SYN to a trap reaches the catch-all port ----------------------


def catch_all(guard: Guard) -> socket.socket:
    """The daemon's listener on the catch-all port, as another engineer writes it."""
    with guard.host.inside():
        listener = guard.keep(socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("::", CATCH_ALL))
    listener.listen(16)
    listener.settimeout(5)
    return listener


def original_destination(conn: socket.socket) -> tuple[str, int]:
    """Where the redirected SYN was going: SO_ORIGINAL_DST (IPv4, also on a dual-stack
    socket's IPv4-mapped connection) or IP6T_SO_ORIGINAL_DST (IPv6)."""
    peer = ipaddress.ip_address(conn.getpeername()[0])
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is None:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, address = struct.unpack_from("!H", raw, 2)[0], raw[8:24]
        return str(ipaddress.IPv6Address(address)), port
    raw = conn.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
    return str(ipaddress.IPv4Address(raw[4:8])), struct.unpack_from("!H", raw, 2)[0]


@pytest.mark.parametrize(("client", "target"), [(CLIENT4, HOST4), (CLIENT6, HOST6)])
def test_a_clients_syn_to_a_trap_is_redirected_and_the_listener_reads_the_trap(
    guard: Guard, reports: Reports, client: str, target: str
) -> None:
    guard.setup(STEALTH)
    listener = catch_all(guard)
    guard.become_client(client)
    with open_socket(guard.lan, client, socket.SOCK_STREAM) as scanner:
        scanner.settimeout(5)
        scanner.connect((target, TRAP))  # the handshake completes: with the catch-all port
        conn, peer = listener.accept()
        guard.keep(conn)
        conn.sendall(b"hi")
        assert scanner.recv(2) == b"hi"
    assert str(unmap(ipaddress.ip_address(peer[0]))) == client
    assert original_destination(conn) == (target, TRAP)
    assert guard.counters()["redirected"] == 1
    assert reports.settle() == []  # the listener reports it, verified; the kernel does not
    assert not blocked(guard, client)


def test_a_strangers_syn_is_not_redirected_but_dropped_and_blocked(
    guard: Guard, reports: Reports
) -> None:
    guard.setup(STEALTH)
    catch_all(guard)
    assert answers(guard.lan, [Probe(STRANGER4, HOST4, TRAP, "syn")], timeout=1) == [None]
    assert [prefix for prefix, _ in reports.wait_for(1)] == ["porttrap:new"]
    assert blocked(guard, STRANGER4)
    assert guard.counters()["redirected"] == 0
    assert not tcp_works(guard.lan, STRANGER6, HOST6, TRAP)  # the IPv6 one as well


@pytest.mark.parametrize(("source", "target"), [(STRANGER4, HOST4), (CLIENT6, HOST6)])
def test_the_catch_all_port_answers_no_direct_connection(
    guard: Guard, source: str, target: str
) -> None:
    """Only redirected SYNs reach the listener: a scan (even a client's) finds the port shut,
    as filtered as a trap, so it tells nothing of porttrap."""
    guard.setup(STEALTH)
    catch_all(guard)
    if source == CLIENT6:
        guard.become_client(source)
    assert answers(guard.lan, [Probe(source, target, CATCH_ALL, "syn")], timeout=1) == [None]


def test_forged_syns_in_a_clients_name_are_redirected_a_few_a_second_at_most(
    guard: Guard, reports: Reports
) -> None:
    """Each redirected SYN sends our SYN-ACK to the real client: a forger's backscatter is
    bounded per client by the limit (burst 5, then 1 a second); the rest are reported as the
    client's probes. The client's kernel answers each SYN-ACK with a RST (no retransmits)."""
    guard.setup(STEALTH)
    catch_all(guard)
    guard.become_client(CLIENT4)
    count_synacks(guard.lan)
    forged = [Probe(CLIENT4, HOST4, TRAP, "syn", sport=41000 + n) for n in range(40)]
    # the limit's tokens accrue from the first SYN to the last one the kernel counts: from
    # before the sending until they are all counted, however late the kernel gets to them
    started = time.monotonic()  # noqa: TID251 - test timing
    send(guard.lan, forged)
    wait_until(lambda: sum(_redirects(guard)) == len(forged), PATIENCE, "every SYN counted")
    elapsed = time.monotonic() - started  # noqa: TID251
    redirected, over = _redirects(guard)
    assert 5 <= redirected <= 5 + int(elapsed) + 1, (redirected, elapsed)
    assert over == len(forged) - redirected
    reported = reports.wait_for(1)
    assert {prefix for prefix, _ in reported} == {"porttrap:client"}
    wait_until(lambda: synacks(guard.lan) >= redirected, PATIENCE, "the SYN-ACKs arrived")
    # the backscatter, measured at the client: no retransmission (it would come after 1 s)
    holds_for(lambda: synacks(guard.lan) == redirected, 1.5, "no SYN-ACK retransmitted")
    assert not blocked(guard, CLIENT4)


def test_without_the_catch_all_port_a_clients_syn_is_reported_as_a_clients(
    guard: Guard, reports: Reports
) -> None:
    guard.setup(CONFIGS["stealth-catch-all-off"])
    guard.become_client(CLIENT4)
    assert not tcp_works(guard.lan, CLIENT4, HOST4, TRAP, timeout=0.5)
    assert [prefix for prefix, _ in reports.wait_for(1)] == ["porttrap:client"]
    assert not blocked(guard, CLIENT4)


def _redirects(guard: Guard) -> tuple[int, int]:
    counters = guard.counters()
    return counters["redirected"], counters["over_redirect"]


def count_synacks(lan: Netns) -> None:
    """A counter, in the LAN, of the SYN-ACKs from the host's trap port."""
    for command in (
        "add table inet count",
        "add counter inet count synacks",
        "add chain inet count in { type filter hook input priority 0; policy accept; }",
        f"add rule inet count in ip daddr {CLIENT4} tcp sport {TRAP} "
        'tcp flags & (syn | ack) == syn | ack counter name "synacks"',
    ):
        lan.run(["nft", *command.split()])


def synacks(lan: Netns) -> int:
    listed = json.loads(lan.run(["nft", "-j", "list", "counter", "inet", "count", "synacks"]))
    found = next(item["counter"] for item in listed["nftables"] if "counter" in item)
    return int(found["packets"])
