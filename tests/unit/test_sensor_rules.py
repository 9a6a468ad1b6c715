"""The kernel sensor's nft commands (firewall/sensor_rules.py, pure) and how the nftables
backend, their one writer, runs them, with a recording stand-in for libnftables: which commands
each setting brings or leaves out, rotation, served ports, and the spec read from a config."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from porttrap.config.loader import load_text
from porttrap.config.schema import KernelSensor, TrapMode
from porttrap.core.core import Core
from porttrap.errors import FirewallError
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.firewall.ruleset import Ruleset
from porttrap.firewall.sensor_rules import SensorRules, port_ranges
from porttrap.firewall.watch_rules import WatchRules
from porttrap.model import Proto
from porttrap.sensorspec import COUNTERS, SensorSpec, SensorState, spec_from_config

TCP, UDP = Proto.TCP, Proto.UDP
CONNECT, STEALTH, ADVANCED = TrapMode.CONNECT, TrapMode.STEALTH, TrapMode.ADVANCED
TABLE = "porttrap"
T = f"inet {TABLE}"
NOTHING: dict[Proto, frozenset[int]] = {}
QUIET = 'counter name "quiet" drop'


class RecordingNft(Nft):
    """Stands in for libnftables: keeps each batch `run` gets."""

    def __init__(self) -> None:  # no libnftables here
        self.batches: list[list[str]] = []

    def run(self, commands: Sequence[str]) -> None:
        self.batches.append(list(commands))


class CountersOf(NftObjects):
    """Stands in for the netlink reader: every table has `counts`; keeps the tables asked."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:  # no socket here
        self.counts = dict(counts or {})
        self.asked: list[str] = []

    def counters(self, table: str) -> dict[str, int]:
        self.asked.append(table)
        return dict(self.counts)

    def shape(self, table: str) -> str:
        return "as written"


def spec(
    tcp: TrapMode = CONNECT,
    udp: TrapMode = CONNECT,
    *,
    ports: dict[Proto, frozenset[int]] | None = None,
    at: Mapping[Proto, tuple[tuple[str, int], ...]] | None = None,
    exclude: dict[Proto, frozenset[int]] | None = None,
    allow: tuple[str, ...] = (),
    **kernel: Any,
) -> SensorSpec:
    """A spec with traps on 23 and 2323 (TCP) and 161 (UDP) unless told otherwise."""
    return SensorSpec(
        modes={TCP: tcp, UDP: udp},
        ports=ports or {TCP: frozenset({23, 2323}), UDP: frozenset({161})},
        at=at or {},
        exclude=exclude or {},
        allow=tuple(ipaddress.ip_network(a) for a in allow),
        kernel=KernelSensor(**kernel),
    )


def create(given: SensorSpec, served: dict[Proto, frozenset[int]] = NOTHING) -> list[str]:
    return SensorRules("porttrap", given).create(served)


def rules_of(commands: list[str]) -> list[str]:
    return [c for c in commands if c.startswith("add rule ")]


def mentioning(commands: list[str], text: str) -> list[str]:
    return [c for c in commands if text in c]


# --- port_ranges ---


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([22, 23, 24, 80], ["22-24", "80"]),
        ([80, 24, 22, 23, 23, 81], ["22-24", "80-81"]),  # unsorted, a duplicate
        ([1, 3, 5], ["1", "3", "5"]),
        ([65535], ["65535"]),
        (range(1, 65536), ["1-65535"]),
        ([], []),
    ],
)
def test_port_ranges_joins_runs(ports: list[int], expected: list[str]) -> None:
    assert port_ranges(ports) == expected


# --- create: which protocols ---


def test_every_protocol_in_connect_mode_gives_no_sensor() -> None:
    assert create(spec()) == []
    assert SensorRules("porttrap", spec()).create({TCP: frozenset({22})}, "b") == []


def test_tcp_stealth_only_watches_tcp() -> None:
    commands = create(spec(tcp=STEALTH))
    assert f"add set {T} traps_tcp {{ type inet_service; flags interval; }}" in commands
    assert f"add element {T} traps_tcp {{ 23, 2323 }}" in commands
    assert f"add set {T} open_tcp {{ type inet_service; }}" in commands
    assert mentioning(commands, "_udp") == []
    assert mentioning(commands, "udp dport") == []
    assert len(mentioning(rules_of(commands), "goto probe")) == 1


def test_udp_advanced_only_watches_its_range_and_leaves_out_excluded_and_served() -> None:
    given = spec(
        udp=ADVANCED,
        ports={UDP: frozenset(range(1, 65536))},
        exclude={UDP: frozenset({67, 137})},
    )
    commands = create(given, {UDP: frozenset({53}), TCP: frozenset({22})})
    assert f"add element {T} traps_udp {{ 1-65535 }}" in commands
    assert f"add element {T} open_udp {{ 53, 67, 137 }}" in commands
    assert mentioning(commands, "_tcp") == []
    assert mentioning(commands, QUIET) == []  # quiet is about TCP, which sockets watch here
    [probe] = mentioning(rules_of(commands), "goto probe")
    assert probe == (
        f"add rule {T} input meta l4proto udp fib daddr type local "
        "udp dport @traps_udp udp dport != @open_udp goto probe"
    )


def test_both_protocols_each_get_their_sets_and_trap_rule() -> None:
    commands = create(spec(tcp=STEALTH, udp=ADVANCED), {TCP: frozenset({22})})
    for name in ("traps_tcp", "open_tcp", "traps_udp", "open_udp"):
        assert len(mentioning(commands, f"add set {T} {name} ")) == 1
    assert f"add element {T} open_tcp {{ 22, 65023 }}" in commands  # and the catch-all
    assert mentioning(commands, f"add element {T} open_udp") == []  # nothing served or excluded
    probes = mentioning(rules_of(commands), " input meta l4proto")
    assert [c.split()[7] for c in probes] == ["tcp", "udp", "tcp"]  # two traps, then quiet
    assert probes[-1].endswith(QUIET)


def test_tcp_trap_rules_leave_replies_alone() -> None:
    """A SYN-ACK or RST to a trap port answers the host's own packet: never a probe."""
    [probe] = mentioning(create(spec(tcp=STEALTH)), "goto probe")
    assert "tcp flags & (syn | ack) != syn | ack tcp flags & rst == 0 " in probe
    assert "tcp dport @traps_tcp tcp dport != @open_tcp" in probe


def test_objects_come_before_chains_and_chains_before_rules() -> None:
    commands = create(spec(tcp=STEALTH, udp=STEALTH))
    kinds = [" ".join(c.split()[:2]) for c in commands]
    first_chain, first_rule = kinds.index("add chain"), kinds.index("add rule")
    assert set(kinds[:first_chain]) == {"add limit", "add counter", "add set", "add element"}
    assert set(kinds[first_chain:first_rule]) == {"add chain"}
    assert set(kinds[first_rule:]) == {"add rule"}
    assert [c.split()[4] for c in mentioning(commands, "add counter")] == list(COUNTERS)
    assert f"add chain {T} input {{ type filter hook input priority -150; policy accept; }}" in (
        commands
    )


def test_every_report_path_logs_to_the_group_with_its_prefix() -> None:
    commands = create(spec(tcp=STEALTH, nflog_group=42, source_rate=5, event_rate=300))
    logs = mentioning(commands, " log prefix ")
    assert [c.split('log prefix "')[1].split('"')[0] for c in logs] == [
        "porttrap:new",
        "porttrap:repeat",
        "porttrap:client",
        "porttrap:peer",
        "porttrap:exempt",
    ]
    assert all(c.endswith("group 42 snaplen 128 drop") for c in logs)
    assert ['limit name "rate_repeat"' in c for c in logs] == [False, True, False, False, False]
    assert f"add limit {T} rate_new {{ rate 300/second burst 300 packets; }}" in commands
    assert len(mentioning(commands, "limit rate over 5/second burst 5 packets")) == 10


# --- create: kernel settings ---


def test_block_on_inserts_into_the_current_generation_and_drops_blocked_sources() -> None:
    rules = SensorRules("porttrap", spec(tcp=STEALTH))
    commands = rules.create(NOTHING, "b")
    assert mentioning(rules_of(commands), " block update ") == [
        f'add rule {T} block update @block_b_v4 {{ ip saddr }} counter name "block_b"',
        f'add rule {T} block update @block_b_v6 {{ ip6 saddr }} counter name "block_b"',
    ]
    assert len(mentioning(commands, "saddr @block_a_v4 jump blocked")) == 1
    assert len(mentioning(commands, "saddr @block_b_v6 jump blocked")) == 1
    assert f"add rule {T} probe jump block" in commands
    assert len(mentioning(commands, f"add rule {T} forward ")) == 5


def test_block_off_leaves_out_every_block_rule() -> None:
    commands = create(spec(tcp=STEALTH, udp=STEALTH, block=False))
    assert mentioning(rules_of(commands), "@block_") == []
    assert mentioning(commands, "update @block_") == []
    assert mentioning(commands, "jump blocked") == []
    assert mentioning(commands, "jump block") == []
    assert mentioning(commands, f"add rule {T} forward ") == []
    assert f"add rule {T} probe goto report_new" in commands


def test_a_blocked_source_gets_neighbour_discovery_through_and_peers_and_clients_go_on() -> None:
    """Jumped to, not gone to: a `return` goes back to the input chain, where a peer's or a
    client's trap packet goes on to the probe chain (reported as theirs) and its other packets
    pass; anyone else's trap packet is a repeat, anything else dropped."""
    blocked = mentioning(create(spec(tcp=STEALTH)), f"add rule {T} blocked ")
    assert [c.removeprefix(f"add rule {T} blocked ") for c in blocked] == [
        "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
        "nd-neighbor-advert, nd-redirect } return",
        "ip saddr 169.254.0.0/16 return",
        "ip6 saddr fe80::/10 return",
        "ip saddr @gateways_v4 return",
        "ip6 saddr @gateways_v6 return",
        "ip saddr @peers_v4 return",
        "ip6 saddr @peers_v6 return",
        "ip saddr @clients_v4 return",
        "ip6 saddr @clients_v6 return",
        "meta l4proto tcp fib daddr type local tcp flags & (syn | ack) != syn | ack "
        "tcp flags & rst == 0 tcp dport @traps_tcp tcp dport != @open_tcp goto report_repeat",
        "drop",
    ]


def test_client_time_zero_leaves_out_the_client_and_peer_rules_and_the_redirect() -> None:
    commands = create(spec(tcp=STEALTH, client_time=0))
    assert mentioning(rules_of(commands), "@clients_") == []
    assert mentioning(rules_of(commands), "@peers_") == []
    assert mentioning(commands, "goto report_client") == []
    assert mentioning(rules_of(commands), "redirect to") == []
    assert mentioning(commands, "syn_redirect") == []
    assert len(mentioning(commands, "goto report_peer")) == 4  # link-local and gateways stay
    matched = mentioning(create(spec(tcp=STEALTH)), "@clients_")
    assert [c.split()[4] for c in matched] == ["blocked"] * 2 + ["probe"] * 2 + [
        "client_redirect"
    ] * 4


def test_block_sets_have_their_time_and_size() -> None:
    given = spec(tcp=STEALTH, client_time=1800.5, client_size=99, block_time=30, block_size=7)
    commands = create(given)
    assert mentioning(commands, "add set inet porttrap clients_") == []  # the watch's
    assert (
        f"add set {T} block_a_v4 {{ type ipv4_addr; flags dynamic,timeout; timeout 30s; size 7; }}"
    ) in commands


def test_the_probe_chain_reports_peers_before_clients_and_never_blocks_them() -> None:
    probe = mentioning(create(spec(udp=STEALTH)), f"add rule {T} probe ")
    assert [c.removeprefix(f"add rule {T} probe ") for c in probe] == [
        "fib saddr type local goto report_exempt",
        "ip saddr @allow_v4 goto report_exempt",
        "ip6 saddr @allow_v6 goto report_exempt",
        "ip saddr 169.254.0.0/16 goto report_peer",
        "ip6 saddr fe80::/10 goto report_peer",
        "ip saddr @gateways_v4 goto report_peer",
        "ip6 saddr @gateways_v6 goto report_peer",
        "ip saddr @peers_v4 goto report_peer",
        "ip6 saddr @peers_v6 goto report_peer",
        "ip saddr @clients_v4 goto report_client",
        "ip6 saddr @clients_v6 goto report_client",
        "jump block",
        "goto report_new",
    ]


def test_a_clients_syn_to_a_tcp_trap_is_redirected_to_the_catch_all_port() -> None:
    at = {TCP: (("2001:db8::1", 2324),)}
    commands = create(spec(tcp=STEALTH, at=at, client_trap_port=4444))
    assert (
        f"add chain {T} syn_redirect {{ type nat hook prerouting priority -100; "
        in (mentioning(commands, "syn_redirect {")[0])
    )
    syn = "meta l4proto tcp fib daddr type local tcp flags & (fin | syn | rst | ack) == syn"
    assert mentioning(rules_of(commands), "syn_redirect ") == [
        f"add rule {T} syn_redirect {syn} tcp dport @traps_tcp tcp dport != @open_tcp "
        "goto client_redirect",
        f"add rule {T} syn_redirect {syn} ip6 daddr . tcp dport @traps_tcp_at_v6 "
        "tcp dport != @open_tcp goto client_redirect",
    ]
    limit = "limit rate 1/second burst 5 packets"
    assert mentioning(rules_of(commands), "client_redirect ") == [
        f"add rule {T} client_redirect meta l4proto tcp ip saddr @clients_v4 update "
        f'@redirect_v4 {{ ip saddr {limit} }} counter name "redirected" redirect to :4444',
        f"add rule {T} client_redirect meta l4proto tcp ip6 saddr @clients_v6 update "
        f'@redirect_v6 {{ ip6 saddr {limit} }} counter name "redirected" redirect to :4444',
        f'add rule {T} client_redirect ip saddr @clients_v4 counter name "over_redirect"',
        f'add rule {T} client_redirect ip6 saddr @clients_v6 counter name "over_redirect"',
    ]
    assert (
        f"add set {T} redirect_v6 {{ type ipv6_addr; flags dynamic,timeout; timeout 60s; "
        "size 65536; }"
    ) in commands
    assert f"add element {T} open_tcp {{ 4444 }}" in commands  # never a trap


@pytest.mark.parametrize(
    "given",
    [
        spec(tcp=STEALTH, client_trap_port=0),  # turned off
        spec(tcp=STEALTH, client_time=0),  # no clients
        spec(udp=STEALTH),  # TCP traps are sockets: a handshake proves the source already
    ],
)
def test_no_redirect_without_clients_a_catch_all_port_or_tcp_in_the_kernel(
    given: SensorSpec,
) -> None:
    commands = create(given)
    assert mentioning(commands, "syn_redirect") == []
    assert mentioning(commands, "client_redirect") == []
    assert mentioning(commands, "redirect_v") == []
    assert mentioning(commands, "type nat") == []


@pytest.mark.parametrize(
    ("tcp", "udp", "quiet", "expected"),
    [
        (STEALTH, CONNECT, True, 1),
        (ADVANCED, ADVANCED, True, 1),
        (STEALTH, STEALTH, False, 0),
        (CONNECT, STEALTH, True, 0),  # only UDP in the kernel: TCP has sockets on its traps
        (CONNECT, ADVANCED, True, 0),
    ],
)
def test_the_quiet_rule_only_when_tcp_is_in_the_kernel_and_quiet_is_on(
    tcp: TrapMode, udp: TrapMode, quiet: bool, expected: int
) -> None:
    commands = create(spec(tcp, udp, quiet=quiet))
    quiet_rules = mentioning(commands, QUIET)
    assert len(quiet_rules) == expected
    if expected:
        assert quiet_rules == [
            f"add rule {T} input meta l4proto tcp fib daddr type local "
            "tcp flags & (fin | syn | rst | ack) != syn tcp dport != @open_tcp " + QUIET
        ]


def test_traps_on_an_address_fill_only_the_set_of_their_ip_version() -> None:
    at = {TCP: (("192.0.2.1", 2323), ("2001:db8::1", 2324), ("192.0.2.5", 8080))}
    commands = create(spec(tcp=STEALTH, at=at))
    assert f"add set {T} traps_tcp_at_v4 {{ type ipv4_addr . inet_service; }}" in commands
    assert f"add element {T} traps_tcp_at_v4 {{ 192.0.2.1 . 2323, 192.0.2.5 . 8080 }}" in commands
    assert f"add element {T} traps_tcp_at_v6 {{ 2001:db8::1 . 2324 }}" in commands
    for version, match in ((4, "ip daddr . tcp dport"), (6, "ip6 daddr . tcp dport")):
        rules = mentioning(commands, f"{match} @traps_tcp_at_v{version} tcp dport != @open_tcp")
        assert [rule.split()[4] for rule in rules] == ["input", "blocked", "syn_redirect"]


def test_traps_on_every_address_of_one_family_match_by_family() -> None:
    """No packet is sent to "::": such a trap is matched by IP family and port."""
    at = {TCP: (("::", 2323), ("0.0.0.0", 2324), ("192.0.2.1", 2325))}
    commands = create(spec(tcp=STEALTH, at=at))
    assert f"add element {T} traps_tcp_at_v4 {{ 192.0.2.1 . 2325 }}" in commands
    assert mentioning(commands, f"add element {T} traps_tcp_at_v6") == []
    assert f"add element {T} traps_tcp_any_v6 {{ 2323 }}" in commands
    assert f"add element {T} traps_tcp_any_v4 {{ 2324 }}" in commands
    for version in (4, 6):
        match = f"meta nfproto ipv{version} tcp dport @traps_tcp_any_v{version} tcp dport !="
        rules = mentioning(commands, match)
        assert [rule.split()[4] for rule in rules] == ["input", "blocked", "syn_redirect"]


def test_an_address_family_without_traps_has_an_empty_set_and_no_rule() -> None:
    commands = create(spec(tcp=STEALTH, at={TCP: (("192.0.2.1", 2323),)}))
    assert f"add set {T} traps_tcp_at_v6 {{ type ipv6_addr . inet_service; }}" in commands
    assert mentioning(commands, f"add element {T} traps_tcp_at_v6") == []
    assert mentioning(commands, "ip6 daddr . tcp dport") == []
    assert len(mentioning(commands, "ip daddr . tcp dport @traps_tcp_at_v4")) == 3


def test_no_traps_gives_empty_sets_without_element_commands() -> None:
    commands = create(spec(tcp=STEALTH, ports={TCP: frozenset()}, client_trap_port=0))
    assert f"add set {T} traps_tcp {{ type inet_service; flags interval; }}" in commands
    assert mentioning(commands, "add element") == []


def test_the_open_set_is_the_served_ports_and_the_excluded_ones() -> None:
    given = spec(tcp=ADVANCED, exclude={TCP: frozenset({113, 139})})
    served = {TCP: frozenset({22, 113, 443}), UDP: frozenset({53})}
    commands = create(given, served)
    assert mentioning(commands, f"add element {T} open_tcp") == [
        f"add element {T} open_tcp {{ 22, 113, 139, 443, 65023 }}"  # and the catch-all port
    ]
    assert given.open_ports(served, TCP) == {22, 113, 139, 443, 65023}
    assert given.open_ports(served, UDP) == {53}
    assert given.open_ports({}, TCP) == {113, 139, 65023}
    no_catch_all = spec(tcp=ADVANCED, exclude={TCP: frozenset({113})}, client_trap_port=0)
    assert no_catch_all.open_ports({}, TCP) == {113}


def test_allow_list_fills_the_allow_set_of_each_version() -> None:
    commands = create(spec(udp=STEALTH, allow=("203.0.113.0/24", "2001:db8::7/128")))
    assert f"add element {T} allow_v4 {{ 203.0.113.0/24 }}" in commands
    assert f"add element {T} allow_v6 {{ 2001:db8::7/128 }}" in commands
    assert mentioning(create(spec(udp=STEALTH)), f"add element {T} allow_") == []


def test_the_table_name_is_used_everywhere() -> None:
    commands = SensorRules("trap2", spec(tcp=STEALTH)).create(NOTHING)
    assert all(" inet trap2" in c for c in commands)


# --- changes while running ---


def test_rotate_flushes_the_generation_then_points_the_block_chain_at_it() -> None:
    assert SensorRules("porttrap", spec(tcp=STEALTH)).rotate("b") == [
        f"flush set {T} block_b_v4",
        f"flush set {T} block_b_v6",
        f"flush chain {T} block",
        f'add rule {T} block update @block_b_v4 {{ ip saddr }} counter name "block_b"',
        f'add rule {T} block update @block_b_v6 {{ ip6 saddr }} counter name "block_b"',
    ]


def test_rotate_back_to_a() -> None:
    commands = SensorRules("porttrap", spec(udp=ADVANCED)).rotate("a")
    assert commands[:2] == [f"flush set {T} block_a_v4", f"flush set {T} block_a_v6"]
    assert all("block_b" not in c for c in commands)


def test_set_open_with_nothing_changes_nothing() -> None:
    assert SensorRules("porttrap", spec(tcp=STEALTH)).set_open(TCP, [], []) == []


def test_set_open_adds_and_deletes_sorted() -> None:
    assert SensorRules("porttrap", spec(tcp=STEALTH)).set_open(TCP, [443, 80], {8080, 25}) == [
        f"add element {T} open_tcp {{ 80, 443 }}",
        f"delete element {T} open_tcp {{ 25, 8080 }}",
    ]


# --- the nftables backend, the one writer of the sensor's rules ---


def backend_with(given: SensorSpec, nft: RecordingNft, generation: str = "a") -> NftablesBackend:
    """A backend whose table was set up with the sensor of `given` (that batch forgotten)."""
    counters = CountersOf({"quiet": 4, "legacy_hits": 2, "reported": 1})
    backend = NftablesBackend(nft=nft, objects=counters)
    backend.setup([], 0.0, SensorState(given, {}, generation))
    nft.batches.clear()
    return backend


def test_serve_sends_only_the_difference_and_keeps_excluded_ports_open() -> None:
    nft = RecordingNft()
    backend = backend_with(spec(tcp=ADVANCED, udp=STEALTH, exclude={TCP: frozenset({113})}), nft)
    backend.serve({TCP: frozenset({22, 113}), UDP: frozenset({53})})
    backend.serve({TCP: frozenset({22, 443}), UDP: frozenset({53})})
    backend.serve({TCP: frozenset({22, 443}), UDP: frozenset({53})})
    assert nft.batches == [
        [f"add element {T} open_tcp {{ 22 }}", f"add element {T} open_udp {{ 53 }}"],
        [f"add element {T} open_tcp {{ 443 }}"],  # 113 stays: it is excluded
    ]


def test_serve_of_a_protocol_in_connect_mode_sends_nothing() -> None:
    nft = RecordingNft()
    backend_with(spec(udp=STEALTH), nft).serve({TCP: frozenset({22})})
    assert nft.batches == []


def test_serve_and_rotate_without_a_sensor_in_the_table_are_refused() -> None:
    backend = NftablesBackend(nft=RecordingNft(), objects=CountersOf())
    backend.setup([], 0.0)
    with pytest.raises(FirewallError, match="holds no kernel sensor"):
        backend.serve({TCP: frozenset({22})})
    with pytest.raises(FirewallError, match="holds no kernel sensor"):
        backend.rotate("b")


def test_a_table_is_built_with_the_served_ports_and_the_generation_it_is_given() -> None:
    nft = RecordingNft()
    backend = NftablesBackend(nft=nft, objects=CountersOf())
    given = spec(tcp=STEALTH)
    backend.setup([], 0.0, SensorState(given, {TCP: frozenset({22})}, "b"))
    (commands,) = nft.batches
    assert f"add element {T} open_tcp {{ 22, 65023 }}" in commands
    assert len(mentioning(commands, "update @block_b_")) == 2
    assert mentioning(commands, "update @block_a_") == []
    backend.rotate("a")
    assert nft.batches[-1] == SensorRules("porttrap", given).rotate("a")
    backend.serve({TCP: frozenset({22, 80})})  # diffs against what the table was built with
    assert nft.batches[-1] == [f"add element {T} open_tcp {{ 80 }}"]


def test_the_counters_are_the_sensors_own_in_its_table() -> None:
    """A counter someone else added to the table (legacy_hits) is not the sensor's."""
    objects = CountersOf({"block_a": 2, "over_source": 9, "legacy_hits": 5})
    backend = NftablesBackend("trap2", nft=RecordingNft(), objects=objects)
    backend.setup([], 0.0, SensorState(spec(tcp=STEALTH), {}))
    assert backend.sensor_counters() == {"block_a": 2, "over_source": 9}
    assert set(backend.sensor_counters()) <= set(COUNTERS)
    assert objects.asked == ["trap2", "trap2"]


def test_backend_setup_adds_the_sensor_to_the_table_in_the_same_batch() -> None:
    nft = RecordingNft()
    given = spec(tcp=STEALTH)
    NftablesBackend("porttrap", nft=nft, objects=CountersOf()).setup(
        [], 0.0, SensorState(given, {})
    )
    NftablesBackend("porttrap", nft=nft, objects=CountersOf()).setup([], 0.0)
    table = Ruleset("porttrap").replace({}, 0.0)
    watch = WatchRules("porttrap", given).create()
    assert nft.batches == [table + watch + SensorRules("porttrap", given).create({}), table]


# --- from the configuration ---


def test_stealth_spec_splits_port_traps_from_address_traps() -> None:
    config = load_text(
        """
        [traps]
        mode = "stealth"
        tcp = ["23", "5900-5902"]
        udp = ["161"]
        [[traps.port]]
        port = "2323"
        proto = "tcp"
        address = "192.0.2.1"
        [[traps.port]]
        port = "2323"
        proto = "tcp"
        address = "2001:db8::1"
        [allow]
        addresses = ["203.0.113.0/24"]
        [kernel]
        block_size = 2048
        """,
        None,
    )
    given = spec_from_config(config)
    assert given.modes == {TCP: STEALTH, UDP: STEALTH}
    assert given.protos == [TCP, UDP]
    assert given.ports == {TCP: {23, 5900, 5901, 5902}, UDP: {161}}
    assert given.at == {TCP: (("192.0.2.1", 2323), ("2001:db8::1", 2323)), UDP: ()}
    assert given.exclude == {TCP: frozenset(), UDP: frozenset()}
    assert given.allow == (ipaddress.ip_network("203.0.113.0/24"),)
    assert given.kernel.block_size == 2048


def test_advanced_spec_watches_the_range_minus_the_excluded_ports() -> None:
    config = load_text(
        """
        [traps]
        mode = { tcp = "advanced", udp = "connect" }
        udp = ["161"]
        [traps.advanced]
        tcp = ["1-1024"]
        exclude_tcp = ["113", "139", "445"]
        """,
        None,
    )
    given = spec_from_config(config)
    assert given.modes == {TCP: ADVANCED, UDP: CONNECT}
    assert given.protos == [TCP]
    assert given.ports[TCP] == frozenset(range(1, 1025))
    assert given.exclude[TCP] == {113, 139, 445}
    assert given.at[TCP] == ()
    commands = SensorRules("porttrap", given).create(NOTHING)
    assert f"add element {T} traps_tcp {{ 1-1024 }}" in commands
    assert f"add element {T} open_tcp {{ 113, 139, 445, 65023 }}" in commands


def test_advanced_defaults_watch_every_port_and_leave_the_usual_ones_alone() -> None:
    given = spec_from_config(load_text('[traps]\nmode = "advanced"\n', None))
    assert given.ports == {TCP: frozenset(range(1, 65536)), UDP: frozenset(range(1, 65536))}
    assert given.exclude == {TCP: {113, 139}, UDP: {67, 137, 138, 520}}


def test_connect_mode_has_no_kernel_sensor() -> None:
    assert Core(load_text('[traps]\ntcp = ["23"]\n', None), started_at=0.0).kernel is None


def test_the_sensor_is_built_in_the_configured_table() -> None:
    config = load_text('[traps]\nmode = "stealth"\n[firewall]\ntable = "trap2"\n', None)
    nft = RecordingNft()
    backend = NftablesBackend("trap2", nft=nft, objects=CountersOf())
    backend.setup([], 0.0, SensorState(spec_from_config(config), {}))
    (commands,) = nft.batches
    assert all(" inet trap2" in c for c in commands)
    assert len(mentioning(commands, "update @block_a_")) == 2


def test_the_catch_all_port_takes_redirected_syns_only() -> None:
    rules = SensorRules("porttrap", spec(tcp=STEALTH)).create({})
    direct = f"add rule {T} input tcp dport 65023 drop"
    redirected = f"add rule {T} input tcp dport 65023 ct status dnat return"
    assert rules.index(redirected) < rules.index(direct)
    assert rules.index(direct) < min(i for i, r in enumerate(rules) if "goto probe" in r)
    without = SensorRules("porttrap", spec(tcp=STEALTH, client_trap_port=0)).create({})
    assert not [r for r in without if "65023" in r]
