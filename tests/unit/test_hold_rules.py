"""The hold's kernel half (firewall/hold_rules.py, pure; docs/hold.md): the exact rules of the
chain, when they are made, the changes while running, how the nftables backend writes the
verdict rule (nft's `queue`, or the xtables target where the kernel has no nft_queue), and the
`[kernel] hold*` keys."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from porttrap import netlink
from porttrap.config.loader import load_text
from porttrap.config.schema import KernelSensor
from porttrap.errors import ConfigError, FirewallError
from porttrap.firewall import objects
from porttrap.firewall.hold_rules import HoldRules
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.firewall.sensor_rules import SensorRules
from porttrap.firewall.watch_rules import WatchRules
from porttrap.model import Proto
from porttrap.sensorspec import COUNTERS, SensorSpec, SensorState, spec_from_config

T = "inet porttrap"
HOLD = '[traps]\nmode = "advanced"\n[kernel]\nhold = "5ms"\n'
SERVED = {Proto.TCP: frozenset({22, 443}), Proto.UDP: frozenset({53})}


def spec_of(text: str) -> SensorSpec:
    return spec_from_config(load_text(text, None))


def hold_of(text: str) -> HoldRules:
    spec = spec_of(text)
    return HoldRules("porttrap", spec, WatchRules("porttrap", spec))


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, Path("t.toml"))
    return [str(problem) for problem in caught.value.problems]


# --- the rules ---


def test_the_chain_lets_known_sources_go_and_queues_the_rest_with_bypass() -> None:
    hold = hold_of(HOLD)
    commands = hold.create(frozenset({22, 443}))
    chain = [c.removeprefix(f"add rule {T} hold ") for c in commands if " hold " in c]
    assert chain == [
        "fib saddr type local return",
        "ip saddr @allow_v4 return",
        "ip6 saddr @allow_v6 return",
        "ip saddr @clients_v4 return",
        "ip6 saddr @clients_v6 return",
        'ip saddr @suspect_v4 counter name "hold_suspect" drop',  # before: the end's repeat
        'ip6 saddr @suspect_v6 counter name "hold_suspect" drop',
        "ip saddr @released_v4 return",
        "ip6 saddr @released_v6 return",
        'meta l4proto != @hold_ready counter name "hold_idle" return',
        'limit name "hold_over" counter name "hold_over" return',
        'counter name "held"',
    ]
    assert hold.queue_rule() == [f"add rule {T} hold queue num 7022 bypass"]
    not_syn = "meta l4proto tcp fib daddr type local tcp flags & (fin | syn | rst | ack) != syn"
    assert hold.input_rules() == [
        f"add rule {T} input meta nfproto ipv4 {not_syn} ct state new,invalid "
        "update @suspect_v4 { ip saddr }",
        f"add rule {T} input meta nfproto ipv6 {not_syn} ct state new,invalid "
        "update @suspect_v6 { ip6 saddr }",
        f"add rule {T} input icmp type timestamp-request update @suspect_v4 {{ ip saddr }}",
        f"add rule {T} input meta l4proto tcp fib daddr type local "
        "tcp flags & (fin | syn | rst | ack) == syn tcp dport @hold_tcp goto hold",
    ]


def test_the_sets_and_limit_follow_the_config() -> None:
    hold = hold_of(
        HOLD + 'hold_memory = "2h"\nhold_rate = 50\nhold_queue = 9\nclient_size = 2048\n'
    )
    commands = hold.create(frozenset({443, 22}))
    assert f"add limit {T} hold_over {{ rate over 50/second burst 50 packets; }}" in commands
    assert f"add element {T} hold_tcp {{ 22, 443 }}" in commands
    assert f"add set {T} hold_ready {{ type inet_proto; flags timeout; }}" in commands
    assert (
        f"add set {T} released_v6 {{ type ipv6_addr; flags dynamic,timeout; "
        "timeout 7200s; size 2048; }" in commands
    )
    assert hold.queue_rule() == [f"add rule {T} hold queue num 9 bypass"]


def test_without_client_tracking_no_rule_names_the_clients() -> None:
    commands = hold_of(HOLD + 'client_time = "0s"\n').create(frozenset({22}))
    assert not [c for c in commands if "@clients" in c]


@pytest.mark.parametrize(
    "text",
    [
        '[traps]\nmode = "stealth"\n',  # off by default outside advanced mode
        '[traps]\nmode = "advanced"\n[kernel]\nhold = "0"\n',
        '[traps]\nmode = { tcp = "connect", udp = "advanced" }\n',  # no TCP sensor
    ],
)
def test_off_means_no_hold_objects_at_all(text: str) -> None:
    hold = hold_of(text)
    assert not hold.on
    assert hold.create(frozenset({22})) + hold.input_rules() + hold.queue_rule() == []
    assert hold.set_served(frozenset(), frozenset({22})) == []
    commands = SensorRules("porttrap", spec_of(text)).create(SERVED)
    assert not [c for c in commands if "hold_tcp" in c or "released_" in c]


def test_the_sensor_makes_the_chain_before_the_input_rule_that_goes_there() -> None:
    commands = SensorRules("porttrap", spec_of(HOLD)).create(SERVED)
    made = commands.index(f"add chain {T} hold")
    goes = next(i for i, c in enumerate(commands) if c.endswith("goto hold"))
    assert made < goes
    assert f"add element {T} hold_tcp {{ 22, 443 }}" in commands  # TCP's served ports only
    assert not [c for c in commands if "queue num" in c]  # the verdict comes apart


def test_served_ports_release_and_heartbeat_while_running() -> None:
    hold = hold_of(HOLD)
    assert hold.set_served(frozenset({22, 80}), frozenset({22, 443, 8080})) == [
        f"add element {T} hold_tcp {{ 443, 8080 }}",
        f"delete element {T} hold_tcp {{ 80 }}",
    ]
    addresses = [ipaddress.ip_address(a) for a in ("2001:db8::1", "192.0.2.9", "192.0.2.1")]
    assert hold.release(addresses) == [
        f"add element {T} released_v4 {{ 192.0.2.1, 192.0.2.9 }}",
        f"add element {T} released_v6 {{ 2001:db8::1 }}",
    ]
    assert hold.ready() == [
        f"add element {T} hold_ready {{ tcp timeout 1s }}",
        f"delete element {T} hold_ready {{ tcp }}",
        f"add element {T} hold_ready {{ tcp timeout 2s }}",
    ]


def test_the_counters_are_the_sensors() -> None:
    assert {"held", "hold_over", "hold_idle"} <= set(COUNTERS)


# --- the backend ---


class KernelWithoutNftQueue(Nft):
    """libnftables on a kernel built without nft_queue: it refuses the `queue` statement."""

    def __init__(self, has_queue: bool) -> None:  # no libnftables here
        self.batches: list[list[str]] = []
        self.has_queue = has_queue

    def run(self, commands: Sequence[str]) -> None:
        if not self.has_queue and any("queue num" in c for c in commands):
            raise FirewallError(
                "nftables refused adding 1 rule: Could not process rule: No such file or directory"
            )
        self.batches.append(list(commands))


class Objects(NftObjects):
    def __init__(self, has_compat: bool = True) -> None:  # no socket here
        self.queue_rules: list[tuple[str, str, int]] = []
        self.has_compat = has_compat

    def add_queue_rule(self, table: str, chain: str, queue: int) -> None:
        if not self.has_compat:
            raise FirewallError("adding the NFQUEUE 7022 rule: EOPNOTSUPP")
        self.queue_rules.append((table, chain, queue))

    def shape(self, table: str) -> str:
        return "as written"


@pytest.mark.parametrize("has_queue", [True, False])
def test_setup_writes_the_table_then_the_verdict_rule(has_queue: bool) -> None:
    nft, found = KernelWithoutNftQueue(has_queue), Objects()
    backend = NftablesBackend("porttrap", nft=nft, objects=found)
    backend.setup([], 0.0, SensorState(spec_of(HOLD), SERVED))
    assert len(nft.batches) == (2 if has_queue else 1)
    if has_queue:
        assert nft.batches[1] == [f"add rule {T} hold queue num 7022 bypass"]
    assert found.queue_rules == ([] if has_queue else [("porttrap", "hold", 7022)])


def test_a_kernel_with_neither_queue_says_how_to_fix_it() -> None:
    nft = KernelWithoutNftQueue(has_queue=False)
    backend = NftablesBackend("porttrap", nft=nft, objects=Objects(has_compat=False))
    with pytest.raises(FirewallError) as caught:
        backend.setup([], 0.0, SensorState(spec_of(HOLD), SERVED))
    assert str(caught.value).startswith(
        "[kernel] hold needs NFQUEUE in nftables, which this kernel refused both ways"
    )
    assert str(caught.value).endswith(
        'load nft_queue (modprobe nft_queue), or set [kernel] hold = "0"'
    )
    assert "No such file or directory" in str(caught.value) and "EOPNOTSUPP" in str(caught.value)


def test_release_and_heartbeat_without_the_hold_say_why() -> None:
    backend = NftablesBackend("porttrap", nft=KernelWithoutNftQueue(True), objects=Objects())
    off = '[traps]\nmode = "advanced"\n[kernel]\nhold = "0"\n'
    backend.setup([], 0.0, SensorState(spec_of(off), SERVED))
    with pytest.raises(FirewallError, match=r'\[kernel\] hold is "0"'):
        backend.hold_ready()
    with pytest.raises(FirewallError, match="no hold rules"):
        backend.release([ipaddress.ip_address("192.0.2.1")])


# --- the xtables verdict over netlink ---


def test_the_xtables_queue_rule_is_one_batch_with_the_nfqueue_target() -> None:
    data = objects.queue_rule_request(5, "porttrap", "hold", 7022)
    messages, rest = netlink.split(data)
    assert rest == 0
    assert [kind for kind, _, _ in messages] == [0x10, 10 << 8 | 6, 0x11]
    assert {seq for _, seq, _ in messages} == {5}
    rule = netlink.attributes(messages[1][2], netlink.NFGENMSG.size) or {}
    assert rule[objects.NFTA_RULE_TABLE] == b"porttrap\0"
    assert rule[objects.NFTA_RULE_CHAIN] == b"hold\0"
    expressions = rule[objects.NFTA_RULE_EXPRESSIONS]
    assert b"target\0" in expressions and b"NFQUEUE\0" in expressions
    assert struct.pack("=HHH", 7022, 1, 1) in expressions  # queue 7022, one queue, bypass


def test_an_ack_ends_the_wait_and_an_error_says_what_failed() -> None:
    ack = netlink.message(netlink.NLMSG_ERROR, 0, 5, struct.pack("=i", 0) + b"\0" * 16)
    assert objects.parse_ack(ack, 5, "adding")
    assert not objects.parse_ack(ack, 6, "adding")  # another request's
    refused = netlink.message(netlink.NLMSG_ERROR, 0, 5, struct.pack("=i", -2) + b"\0" * 16)
    with pytest.raises(FirewallError, match=r"adding the rule: ENOENT"):
        objects.parse_ack(refused, 5, "adding the rule")


# --- the config ---


@pytest.mark.parametrize(
    ("value", "seconds"),
    [('"5ms"', 0.005), ('"0.01s"', 0.01), ('"500ms"', 0.5), ('"0"', 0.0), ("0", 0.0)],
)
def test_hold_takes_milliseconds_or_seconds_or_zero(value: str, seconds: float) -> None:
    kernel = load_text(f"[kernel]\nhold = {value}\n", None).kernel
    assert kernel.hold == seconds


def test_the_hold_is_5ms_in_advanced_mode_and_off_elsewhere_by_default() -> None:
    assert (KernelSensor().hold, KernelSensor().hold_memory) == (0.0, 3600.0)
    assert load_text('[traps]\nmode = "stealth"\n', None).kernel == KernelSensor()
    assert load_text("", None).kernel == KernelSensor(hold=0.005)  # advanced: the default


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'hold = "2s"',
            "at most 500ms (below TCP's 1 s SYN retransmission, and every new "
            'client waits it), got "2s"',
        ),
        ('hold = "5"', 'expected a hold such as "5ms" or "0.01s", or "0" for none, got "5"'),
        ("hold = 5", 'expected a hold such as "5ms"'),
        ('hold_memory = "0s"', "a duration must be more than zero"),
        ("hold_rate = 0", "expected a whole number from 1 to 1000000, got 0"),
        ("hold_queue = 70000", "expected a whole number from 0 to 65535"),
    ],
)
def test_bad_hold_values_say_what_is_expected(text: str, problem: str) -> None:
    found = problems_of(f"[kernel]\n{text}\n")
    assert len(found) == 1
    assert problem in found[0]


def test_a_hold_with_tcp_in_connect_mode_says_how_to_fix_it() -> None:
    found = problems_of('[traps]\nmode = "connect"\n[kernel]\nhold = "5ms"\n')
    assert found == [
        't.toml:4: [kernel.hold] hold = "5ms" needs TCP in stealth or advanced mode (the kernel '
        'sensor holds the SYNs), but TCP is in "connect" mode: set [traps] mode = "advanced" '
        '(or "stealth", which needs the nftables backend), or hold = "0"'
    ]


@pytest.mark.parametrize(("hold", "threshold"), [('"5ms"', " queue-threshold 1"), ('"0"', "")])
def test_with_the_hold_on_each_trap_report_is_sent_at_once(hold: str, threshold: str) -> None:
    """The trap's report must reach the daemon within the hold, not at NFLOG's flush timer."""
    text = f'[traps]\nmode = "advanced"\n[kernel]\nhold = {hold}\n'
    commands = SensorRules("porttrap", spec_of(text)).create(SERVED)
    reports = [c for c in commands if 'log prefix "porttrap:' in c]
    assert len(reports) == 5  # new, repeat, client, peer, exempt
    assert all(c.endswith(f"snaplen 128{threshold} drop") for c in reports)
