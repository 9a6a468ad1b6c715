"""The watch's nft commands (firewall/watch_rules.py, pure): the recent clients and peers of the
host, the gateways, and the marks on datagrams to connect-mode UDP traps; how the nftables
backend makes it with every table given a SensorState, keeps the gateways, and what the other
backends and the fake do with it."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

import pytest

from porttrap.config.schema import KernelSensor, TrapMode
from porttrap.errors import FirewallError
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.firewall.ruleset import Ruleset
from porttrap.firewall.sensor_rules import SensorRules
from porttrap.firewall.watch_rules import WatchRules
from porttrap.model import IPAddress, Proto
from porttrap.sensorspec import MARK_CLIENT, MARK_MASK, MARK_PEER, SensorSpec, SensorState
from porttrap.testing import FakeClock, MemoryFirewall

TCP, UDP = Proto.TCP, Proto.UDP
CONNECT, STEALTH, ADVANCED = TrapMode.CONNECT, TrapMode.STEALTH, TrapMode.ADVANCED
T = "inet porttrap"
GATEWAYS = ("192.0.2.254", "2001:db8::fffe", "fe80::1")


def spec(
    tcp: TrapMode = CONNECT,
    udp: TrapMode = CONNECT,
    *,
    udp_ports: frozenset[int] = frozenset({161, 162, 69}),
    udp_at: tuple[tuple[str, int], ...] = (),
    **kernel: Any,
) -> SensorSpec:
    return SensorSpec(
        modes={TCP: tcp, UDP: udp},
        ports={TCP: frozenset({23}), UDP: udp_ports},
        at={UDP: udp_at},
        exclude={},
        allow=(),
        kernel=KernelSensor(**kernel),
    )


def addresses(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(text) for text in texts]


def create(given: SensorSpec, gateways: Sequence[str] = ()) -> list[str]:
    return WatchRules("porttrap", given).create(addresses(*gateways))


def in_chain(commands: list[str], chain: str) -> list[str]:
    head = f"add rule {T} {chain} "
    return [c.removeprefix(head) for c in commands if c.startswith(head)]


# --- the marks ---


def test_the_marks_are_two_bits_above_the_low_16() -> None:
    assert (MARK_CLIENT, MARK_PEER, MARK_MASK) == (0x10000, 0x20000, 0x30000)
    assert MARK_CLIENT & MARK_PEER == 0
    assert MARK_MASK & 0xFFFF == 0


# --- create ---


def test_connect_mode_udp_traps_get_the_whole_watch() -> None:
    commands = create(spec(), GATEWAYS)
    assert commands == [
        f"add set {T} clients_v4 {{ type ipv4_addr; flags dynamic,timeout; timeout 3600s; "
        "size 65536; }",
        f"add set {T} peers_v4 {{ type ipv4_addr; flags dynamic,timeout; timeout 3600s; "
        "size 65536; }",
        f"add set {T} gateways_v4 {{ type ipv4_addr; flags interval; }}",
        f"add element {T} gateways_v4 {{ 192.0.2.254 }}",
        f"add set {T} clients_v6 {{ type ipv6_addr; flags dynamic,timeout; timeout 3600s; "
        "size 65536; }",
        f"add set {T} peers_v6 {{ type ipv6_addr; flags dynamic,timeout; timeout 3600s; "
        "size 65536; }",
        f"add set {T} gateways_v6 {{ type ipv6_addr; flags interval; }}",
        f"add element {T} gateways_v6 {{ 2001:db8::fffe, fe80::1 }}",
        f"add set {T} connect_udp {{ type inet_service; flags interval; }}",
        f"add element {T} connect_udp {{ 69, 161-162 }}",
        f"add chain {T} watch_in {{ type filter hook input priority 300; policy accept; }}",
        f"add chain {T} watch_out {{ type filter hook output priority 0; policy accept; }}",
        f"add chain {T} watch_mark",
        f'add rule {T} watch_in iif "lo" return',
        f"add rule {T} watch_in ct state established ct direction original ct status assured "
        "update @clients_v4 { ip saddr }",
        f"add rule {T} watch_in ct state established ct direction original ct status assured "
        "update @clients_v6 { ip6 saddr }",
        f"add rule {T} watch_in udp dport @connect_udp goto watch_mark",
        f'add rule {T} watch_out oif "lo" return',
        f"add rule {T} watch_out ct direction original update @peers_v4 {{ ip daddr }}",
        f"add rule {T} watch_out ct direction original update @peers_v6 {{ ip6 daddr }}",
        f"add rule {T} watch_mark meta mark set meta mark & 0xfffcffff",
        f"add rule {T} watch_mark ip saddr @clients_v4 meta mark set meta mark | 0x00010000",
        f"add rule {T} watch_mark ip6 saddr @clients_v6 meta mark set meta mark | 0x00010000",
        f"add rule {T} watch_mark ip saddr 169.254.0.0/16 meta mark set meta mark | 0x00020000",
        f"add rule {T} watch_mark ip6 saddr fe80::/10 meta mark set meta mark | 0x00020000",
        f"add rule {T} watch_mark ip saddr @gateways_v4 meta mark set meta mark | 0x00020000",
        f"add rule {T} watch_mark ip6 saddr @gateways_v6 meta mark set meta mark | 0x00020000",
        f"add rule {T} watch_mark ip saddr @peers_v4 meta mark set meta mark | 0x00020000",
        f"add rule {T} watch_mark ip6 saddr @peers_v6 meta mark set meta mark | 0x00020000",
    ]


def test_client_time_and_size_give_the_sets_theirs() -> None:
    commands = create(spec(client_time=90.5, client_size=2048))
    assert (
        f"add set {T} peers_v6 {{ type ipv6_addr; flags dynamic,timeout; timeout 91s; size 2048; }}"
    ) in commands


@pytest.mark.parametrize(
    ("given", "ports"),
    [
        (spec(udp=STEALTH), None),  # the kernel sensor watches UDP: no socket reads a mark
        (spec(udp=ADVANCED), None),
        (spec(udp_ports=frozenset()), None),  # udp = []
        (spec(udp_ports=frozenset({7}), udp_at=(("2001:db8::1", 9),)), "7, 9"),
    ],
)
def test_only_connect_mode_udp_traps_are_marked(given: SensorSpec, ports: str | None) -> None:
    commands = create(given)
    elements = [c for c in commands if c.startswith(f"add element {T} connect_udp")]
    goto = in_chain(commands, "watch_in")[-1] == "udp dport @connect_udp goto watch_mark"
    assert f"add set {T} connect_udp {{ type inet_service; flags interval; }}" in commands
    if ports is None:
        assert (elements, goto) == ([], False)
    else:
        assert (elements, goto) == ([f"add element {T} connect_udp {{ {ports} }}"], True)


def test_client_time_zero_tracks_no_client_and_no_peer() -> None:
    commands = create(spec(client_time=0))
    assert in_chain(commands, "watch_in") == [
        'iif "lo" return',
        "udp dport @connect_udp goto watch_mark",
    ]
    assert in_chain(commands, "watch_out") == ['oif "lo" return']
    assert [c for c in commands if "@clients_" in c or "@peers_" in c] == []
    assert len(in_chain(commands, "watch_mark")) == 5  # cleared; link-local and gateways
    assert (
        f"add set {T} clients_v4 {{ type ipv4_addr; flags dynamic,timeout; timeout 1s; "
        in (commands[0])
    )


def test_gateways_lose_their_ipv6_scope_and_duplicates() -> None:
    scoped = [ipaddress.ip_address("fe80::1%eth0"), ipaddress.ip_address("fe80::1%eth1")]
    commands = WatchRules("porttrap", spec()).create(scoped)
    assert [c for c in commands if "add element" in c and "gateways" in c] == [
        f"add element {T} gateways_v6 {{ fe80::1 }}"
    ]


def test_the_sensor_and_the_watch_share_one_idea_of_clients_and_peers() -> None:
    watch = WatchRules("porttrap", spec(tcp=STEALTH))
    probe = in_chain(SensorRules("porttrap", spec(tcp=STEALTH)).create({}), "probe")
    assert probe[3:9] == [f"{match} goto report_peer" for match in watch.peer_matches()]
    assert probe[9:11] == [f"{match} goto report_client" for match in watch.client_matches()]


# --- set_gateways ---


def test_set_gateways_adds_and_deletes_per_family_sorted() -> None:
    rules = WatchRules("porttrap", spec())
    added = addresses("198.51.100.1", "192.0.2.1", "2001:db8::1")
    assert rules.set_gateways(added, addresses("203.0.113.1")) == [
        f"add element {T} gateways_v4 {{ 192.0.2.1, 198.51.100.1 }}",
        f"add element {T} gateways_v6 {{ 2001:db8::1 }}",
        f"delete element {T} gateways_v4 {{ 203.0.113.1 }}",
    ]
    assert rules.set_gateways([], []) == []


# --- the nftables backend ---


class RecordingNft(Nft):
    """Stands in for libnftables: keeps each batch, or refuses it when `refusing`."""

    def __init__(self) -> None:  # no libnftables here
        self.batches: list[list[str]] = []
        self.refusing = False

    def run(self, commands: Sequence[str]) -> None:
        if self.refusing:
            raise FirewallError("nftables refused the batch (simulated)")
        self.batches.append(list(commands))


class NoObjects(NftObjects):
    def __init__(self) -> None:  # no socket here
        pass

    def shape(self, table: str) -> str:
        return "as written"


def backend_with(state: SensorState | None) -> tuple[NftablesBackend, RecordingNft]:
    nft = RecordingNft()
    backend = NftablesBackend(nft=nft, objects=NoObjects())
    backend.setup([], 0.0, state)
    return backend, nft


def test_connect_mode_setup_makes_the_watch_and_no_sensor() -> None:
    given = spec()
    backend, nft = backend_with(SensorState(given, {}, gateways=frozenset(addresses("fe80::1"))))
    table = Ruleset("porttrap").replace({}, 0.0)
    assert nft.batches == [table + WatchRules("porttrap", given).create(addresses("fe80::1"))]
    with pytest.raises(FirewallError, match="holds no kernel sensor"):
        backend.rotate("b")
    with pytest.raises(FirewallError, match="holds no kernel sensor"):
        backend.serve({TCP: frozenset({22})})


def test_set_gateways_sends_only_the_difference() -> None:
    start = frozenset(addresses("192.0.2.254", "fe80::1"))
    backend, nft = backend_with(SensorState(spec(tcp=STEALTH), {}, gateways=start))
    nft.batches.clear()
    backend.set_gateways(addresses("192.0.2.254", "fe80::1%eth0"))  # the same, scope aside
    backend.set_gateways(addresses("192.0.2.253", "fe80::1"))
    backend.set_gateways(addresses("192.0.2.253", "fe80::1"))
    backend.set_gateways([])
    assert nft.batches == [
        [
            f"add element {T} gateways_v4 {{ 192.0.2.253 }}",
            f"delete element {T} gateways_v4 {{ 192.0.2.254 }}",
        ],
        [
            f"delete element {T} gateways_v4 {{ 192.0.2.253 }}",
            f"delete element {T} gateways_v6 {{ fe80::1 }}",
        ],
    ]


def test_set_gateways_after_a_rebuild_diffs_against_the_new_table() -> None:
    backend, nft = backend_with(SensorState(spec(), {}))
    backend.set_gateways(addresses("192.0.2.1"))
    backend.setup([], 0.0, SensorState(spec(), {}, gateways=frozenset(addresses("192.0.2.2"))))
    nft.batches.clear()
    backend.set_gateways(addresses("192.0.2.1"))
    assert nft.batches == [
        [
            f"add element {T} gateways_v4 {{ 192.0.2.1 }}",
            f"delete element {T} gateways_v4 {{ 192.0.2.2 }}",
        ]
    ]


def test_a_refused_set_gateways_keeps_what_the_table_held() -> None:
    start = frozenset(addresses("192.0.2.1"))
    backend, nft = backend_with(SensorState(spec(), {}, gateways=start))
    nft.refusing = True
    with pytest.raises(FirewallError, match="refused"):
        backend.set_gateways(addresses("192.0.2.2"))
    nft.refusing = False
    backend.set_gateways(addresses("192.0.2.2"))
    assert nft.batches[-1] == [
        f"add element {T} gateways_v4 {{ 192.0.2.2 }}",
        f"delete element {T} gateways_v4 {{ 192.0.2.1 }}",
    ]


@pytest.mark.parametrize("how", ["no state", "teardown"])
def test_set_gateways_without_the_watch_is_refused(how: str) -> None:
    backend, _ = backend_with(None if how == "no state" else SensorState(spec(), {}))
    if how == "teardown":
        backend.teardown()
    with pytest.raises(FirewallError, match="holds no watch"):
        backend.set_gateways(addresses("192.0.2.1"))


# --- the other backends and the fake ---


class Recorder:
    """Stands in for the ipset backend's program runner: every program answers nothing."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        self.argvs.append(list(argv))
        return ""


def test_the_ipset_backend_takes_a_connect_mode_state_and_refuses_the_sensor() -> None:
    backend = IpsetBackend(runner=Recorder())
    backend.setup([], 0.0, SensorState(spec(), {}))
    with pytest.raises(FirewallError, match="needs nftables"):
        backend.setup([], 0.0, SensorState(spec(udp=STEALTH), {}))


def test_the_memory_firewall_keeps_the_gateways_of_the_watch() -> None:
    firewall = MemoryFirewall(FakeClock(0.0))
    firewall.setup([], 0.0)
    with pytest.raises(FirewallError, match="no watch"):
        firewall.set_gateways(addresses("192.0.2.1"))
    firewall.setup([], 0.0, SensorState(spec(), {}, gateways=frozenset(addresses("fe80::1"))))
    assert firewall.gateways == frozenset(addresses("fe80::1"))
    firewall.set_gateways(addresses("192.0.2.1"))
    assert firewall.gateways == frozenset(addresses("192.0.2.1"))
    with pytest.raises(FirewallError, match="no kernel sensor"):
        firewall.rotate("b")  # connect mode: the watch, no sensor
