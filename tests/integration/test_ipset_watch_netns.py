"""The watch with the ipset backend, in a real kernel inside network namespaces, as
test_guard_netns.py proves it of nftables: ipset sets and iptables/ip6tables chains of
porttrap's own (Debian 12's iptables, iptables-nft) learn the host's clients (any protocol) and
peers (the destinations of its own flows) and mark the datagrams to connect-mode UDP traps; the
socket traps read the marks into their hits (as test_marks_netns.py proves of a hand-written
rule). And where iptables differs: the marks are set in the security table, after the filter
rules; the 5 s check notices what gets in the way and a setup puts it right; teardown removes
what it made and nothing else; iptables-legacy takes the same rules and prints them the same.
See tests/integration/guard_env.py for the namespaces."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
from crafted import Probe, answers
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
    SERVICE_PORT,
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
from porttrap.config.schema import Trap
from porttrap.firewall.exec import Exec
from porttrap.firewall.ipset import IpsetBackend
from porttrap.model import Hit, Proto
from porttrap.sensors.sockets import SocketTraps
from porttrap.sensorspec import MARK_CLIENT, MARK_PEER
from porttrap.testing import FakeClock
from waiting import PATIENCE, holds_for, wait_until

pytestmark = pytest.mark.kernel

CONNECT = f'[traps]\ntcp = ["{TRAP}"]\nudp = ["{TRAP}", "69"]\n'
CONFIGS = {
    "connect": CONNECT,
    "connect-no-udp": f'[traps]\ntcp = ["{TRAP}"]\nudp = []\n',
    "connect-client-time-0": CONNECT + '[kernel]\nclient_time = "0s"\n',
}
FAMILIES = (("iptables", "ip6tables"), ("4", "6"))
WATCH_SETS = [
    f"porttrap_{kind}_v{version}" for version in (4, 6) for kind in ("clients", "peers", "gateways")
] + ["porttrap_connect_udp"]


@pytest.fixture
def guard(netns_factory: Callable[[], Netns]) -> Iterator[Guard]:
    with guard_env(netns_factory, "ipset") as env:
        yield env


def ipset_backend(guard: Guard) -> IpsetBackend:
    assert isinstance(guard.backend, IpsetBackend)
    return guard.backend


def security(guard: Guard, iptables: str = "iptables") -> list[str]:
    return guard.host.run([iptables, "-t", "security", "-S"]).splitlines()


def sets(guard: Guard) -> list[str]:
    return guard.host.run(["ipset", "list", "-n"]).split()


def timeout_of(guard: Guard, name: str, address: str) -> int:
    [line] = [line for line in guard.ipset_members(name) if line.split()[0] == address]
    words = line.split()
    return int(words[words.index("timeout") + 1])


# --- every combination loads -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_combination_loads_in_place_rebuilds_alike_and_tears_down(
    guard: Guard, name: str
) -> None:
    backend = ipset_backend(guard)
    guard.setup(CONFIGS[name], gateways=(ipaddress.ip_address("192.0.2.254"),))
    assert sets(guard) == ["porttrap_v4", "porttrap_v6", *WATCH_SETS]
    assert guard.elements("gateways_v4") == ["192.0.2.254"]
    assert guard.elements("connect_udp") == ([] if name == "connect-no-udp" else ["69", "2323"])
    assert backend.present()  # the 5 s check reads back what setup wrote
    listings = {iptables: security(guard, iptables) for iptables in FAMILIES[0]}
    for iptables in FAMILIES[0]:
        assert listings[iptables][3:6] == ["-N porttrap_in", "-N porttrap_mark", "-N porttrap_out"]
        assert "-A INPUT -j porttrap_in" in listings[iptables]
    guard.setup(CONFIGS[name], gateways=(ipaddress.ip_address("192.0.2.254"),))  # a rebuild
    assert {iptables: security(guard, iptables) for iptables in FAMILIES[0]} == listings
    assert sets(guard) == ["porttrap_v4", "porttrap_v6", *WATCH_SETS]  # no temporary set left
    backend.teardown()
    assert sets(guard) == []
    for iptables in FAMILIES[0]:
        assert security(guard, iptables) == ["-P INPUT ACCEPT", "-P FORWARD ACCEPT",
                                             "-P OUTPUT ACCEPT"]  # fmt: skip
        assert "porttrap" not in guard.host.run([iptables, "-t", "raw", "-S"])


def test_teardown_leaves_what_others_made_and_a_bans_only_setup_drops_the_watch(
    guard: Guard,
) -> None:
    guard.host.run(["ipset", "create", "other", "hash:ip"])
    for iptables in FAMILIES[0]:
        guard.host.run([iptables, "-t", "security", "-N", "selinux"])
        guard.host.run([iptables, "-t", "security", "-A", "INPUT", "-j", "selinux"])
        guard.host.run([iptables, "-A", "INPUT", "-j", "ACCEPT"])
    before = {iptables: security(guard, iptables) for iptables in FAMILIES[0]}
    filters = {iptables: guard.host.run([iptables, "-S"]) for iptables in FAMILIES[0]}
    guard.setup(CONNECT)
    assert security(guard)[-1] != before["iptables"][-1]
    ipset_backend(guard).setup([], 0.0)  # bans only: the watch goes, the bans stay
    assert sets(guard) == ["other", "porttrap_v4", "porttrap_v6"]
    assert {iptables: security(guard, iptables) for iptables in FAMILIES[0]} == before
    guard.setup(CONNECT)
    ipset_backend(guard).teardown()
    assert sets(guard) == ["other"]
    for iptables in FAMILIES[0]:
        assert security(guard, iptables) == before[iptables]
        assert guard.host.run([iptables, "-S"]) == filters[iptables]


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
    probe = Probe(STRANGER4, HOST4, SERVICE_PORT, "syn")
    assert answers(guard.lan, [probe], timeout=PATIENCE) == ["SA"]
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


def test_every_packet_of_a_clients_flow_gives_it_its_full_time_again(guard: Guard) -> None:
    """`--exist` on the SET target refreshes the element, as nft's `update` does."""
    guard.setup(CONNECT)
    with open_socket(guard.lan, CLIENT4, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect((HOST4, SERVICE_PORT))
        assert client.recv(5) == b"hello"
        # the element's timeout runs down (the kernel shows whole seconds: 3 s of it)...
        wait_until(lambda: timeout_of(guard, "porttrap_clients_v4", CLIENT4) <= 3597,
                   PATIENCE, "3 s of the client's time gone")  # fmt: skip
        client.sendall(b"more")  # ...until the client's next packet (the server has closed)
        wait_until(lambda: timeout_of(guard, "porttrap_clients_v4", CLIENT4) >= 3598,
                   PATIENCE, "the client's full time again")  # fmt: skip


def test_a_rebuild_keeps_what_the_watch_learned(guard: Guard) -> None:
    """A setup again (after the 5 s check found something in the way) forgets no client."""
    guard.setup(CONNECT)
    guard.become_client(CLIENT4)
    guard.setup(CONNECT)
    assert guard.elements("clients_v4") == [CLIENT4]


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
    assert guard.elements("gateways_v4") == [STRANGER4]
    assert mark_of(guard, trap, STRANGER4) == MARK_PEER
    guard.backend.set_gateways([])
    assert mark_of(guard, trap, STRANGER4) == 0


def test_client_time_zero_still_marks_gateways_and_link_local_peers(guard: Guard) -> None:
    guard.setup(CONFIGS["connect-client-time-0"], gateways=(ipaddress.ip_address(OTHER4),))
    trap = trap_socket(guard)
    guard.become_client(CLIENT4)
    assert mark_of(guard, trap, CLIENT4) == 0
    assert mark_of(guard, trap, OTHER4) == MARK_PEER
    assert mark_of(guard, trap, LAN_LL, HOST_LL) == MARK_PEER


def test_the_mark_keeps_other_bits_and_clears_porttraps_set_by_others(guard: Guard) -> None:
    """Another tool marks every datagram to the trap early (mangle PREROUTING), porttrap's
    bits included: they are not taken for porttrap's verdict, and the others stay."""
    guard.setup(CONNECT)
    for iptables in FAMILIES[0]:
        guard.host.run([iptables, "-t", "mangle", "-A", "PREROUTING", "-p", "udp", "--dport",
                        str(TRAP), "-j", "MARK", "--set-mark", "0x30005"])  # fmt: skip
    trap = trap_socket(guard)
    guard.become_client(CLIENT4)
    guard.become_client(CLIENT6)
    assert mark_of(guard, trap, STRANGER4) == 0x5
    assert mark_of(guard, trap, CLIENT4) == 0x5 | MARK_CLIENT
    assert mark_of(guard, trap, CLIENT6, HOST6) == 0x5 | MARK_CLIENT


def test_the_filter_rules_never_see_porttraps_bits(guard: Guard) -> None:
    """The bits are set in the security table, after filter INPUT: a filter rule that drops
    what carries them never matches, and the client's datagram arrives marked."""
    guard.setup(CONNECT)
    for iptables in FAMILIES[0]:
        guard.host.run([iptables, "-A", "INPUT", "-m", "mark", "--mark",
                        f"{MARK_CLIENT:#x}/{MARK_CLIENT:#x}", "-j", "DROP"])  # fmt: skip
    trap = trap_socket(guard)
    guard.become_client(CLIENT4)
    guard.become_client(CLIENT6)
    assert mark_of(guard, trap, CLIENT4) == MARK_CLIENT
    assert mark_of(guard, trap, CLIENT6, HOST6) == MARK_CLIENT


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


# --- what the 5 s check notices, and a setup puts right -----------------------------------


@pytest.mark.parametrize(
    "intrusion",
    [
        ["-t", "security", "-I", "INPUT", "1", "-j", "ACCEPT"],  # ends the table before us
        ["-t", "security", "-I", "OUTPUT", "1", "-j", "ACCEPT"],
        ["-t", "security", "-F", "porttrap_mark"],
        ["-t", "security", "-D", "INPUT", "-j", "porttrap_in"],
    ],
    ids=["accept-before-input", "accept-before-output", "mark-flushed", "jump-gone"],
)
@pytest.mark.parametrize("iptables", FAMILIES[0])
def test_the_check_notices_what_gets_in_the_way_and_setup_puts_it_right(
    guard: Guard, iptables: str, intrusion: list[str]
) -> None:
    backend = ipset_backend(guard)
    guard.setup(CONNECT)
    trap = trap_socket(guard)
    client, target = (CLIENT4, HOST4) if iptables == "iptables" else (CLIENT6, HOST6)
    guard.become_client(client)
    guard.host.run([iptables, *intrusion])
    assert not backend.present()
    if "INPUT" in intrusion or "porttrap_mark" in intrusion:
        assert mark_of(guard, trap, client, target) == 0  # the bits are missing meanwhile
    guard.setup(CONNECT)  # what the daemon does when the check fails
    assert backend.present()
    assert mark_of(guard, trap, client, target) == MARK_CLIENT  # and the client is still known
    if "ACCEPT" in intrusion:  # the other rule stays, after porttrap's jump
        hook = intrusion[intrusion.index("-I") + 1]
        rules = [rule for rule in security(guard, iptables) if rule.startswith(f"-A {hook} ")]
        assert rules[1:] == [f"-A {hook} -j ACCEPT"]


# --- the socket traps read the marks into their hits ---------------------------------------


def test_udp_trap_hits_say_client_and_peer_from_the_ipset_backends_marks(guard: Guard) -> None:
    guard.setup(CONNECT, gateways=(ipaddress.ip_address(OTHER4),))
    guard.become_client(CLIENT4)
    guard.become_client(CLIENT6)
    sources = [(CLIENT4, HOST4), (CLIENT6, HOST6), (OTHER4, HOST4), (STRANGER4, HOST4),
               (STRANGER6, HOST6)]  # fmt: skip
    hits = asyncio.run(udp_hits(guard, sources))
    flags = {str(hit.source): (hit.client, hit.peer) for hit in hits}
    assert flags == {
        CLIENT4: (True, False),
        CLIENT6: (True, False),
        OTHER4: (False, True),
        STRANGER4: (False, False),
        STRANGER6: (False, False),
    }


async def udp_hits(guard: Guard, sources: list[tuple[str, str]]) -> list[Hit]:
    """The hits of porttrap's own socket traps (UDP on TRAP, every address) for one datagram
    from each (source, target), sent from the LAN."""
    queue: asyncio.Queue[Hit] = asyncio.Queue()
    sensor = SocketTraps([Trap(Proto.UDP, TRAP)], queue.put_nowait, FakeClock())
    with guard.host.inside():
        report = sensor.start(asyncio.get_running_loop())
    try:
        assert not report.skipped, report.skipped
        for source, target in sources:
            with open_socket(guard.lan, source, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"probe", (target, TRAP))
        return [await asyncio.wait_for(queue.get(), PATIENCE) for _ in sources]
    finally:
        sensor.close()


# --- iptables-legacy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Legacy:
    """Runs iptables-legacy (and its -restore) where the backend runs iptables."""

    inner: Exec

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        program, *rest = argv
        if program.startswith(("iptables", "ip6tables")):
            family, _, tail = program.partition("-")
            program = f"{family}-legacy" + (f"-{tail}" if tail else "")
        return self.inner.run([program, *rest], stdin)


@pytest.mark.skipif(shutil.which("iptables-legacy") is None, reason="no iptables-legacy")
def test_iptables_legacy_takes_the_same_watch_and_the_check_reads_it_back(guard: Guard) -> None:
    backend = IpsetBackend(TABLE, runner=Legacy(Exec(netns=guard.host.name)))
    guard.backend = backend
    guard.setup(CONNECT)
    assert backend.present()  # legacy prints the rules as iptables-nft does
    assert "porttrap" not in guard.host.run(["iptables-nft", "-t", "security", "-S"])
    trap = trap_socket(guard)
    guard.become_client(CLIENT4)
    guard.become_client(CLIENT6)
    assert mark_of(guard, trap, CLIENT4) == MARK_CLIENT
    assert mark_of(guard, trap, CLIENT6, HOST6) == MARK_CLIENT
    assert mark_of(guard, trap, LAN_LL, HOST_LL) == MARK_PEER
    assert mark_of(guard, trap, STRANGER4) == 0
    guard.host.run(["iptables-legacy", "-t", "security", "-I", "INPUT", "1", "-j", "ACCEPT"])
    assert not backend.present()
    guard.setup(CONNECT)
    assert backend.present()
    backend.teardown()
    assert sets(guard) == []
    for iptables in ("iptables-legacy", "ip6tables-legacy"):
        for table in ("raw", "security"):
            assert "porttrap" not in guard.host.run([iptables, "-t", table, "-S"])
