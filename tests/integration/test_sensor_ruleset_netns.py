"""The kernel sensor's ruleset in a real kernel, inside a network namespace made for each test:
every combination of settings loads with the table in one transaction, teardown removes it all,
and the changes the daemon makes while running (served ports, block generations) take effect.
No packets here: tests/integration/test_kernel_sensor.py sends them."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from netns import Netns, in_host_netns
from porttrap.config.loader import load_text
from porttrap.core.kernel import older
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.model import Proto
from porttrap.sensorspec import COUNTERS, Ports, SensorState, spec_from_config

pytestmark = pytest.mark.kernel

NOW = 1_800_000_000.0
TABLE = "porttrap"
TCP, UDP = Proto.TCP, Proto.UDP
INPUT_CHAIN = {"type": "filter", "hook": "input", "prio": -150, "policy": "accept"}
BLOCKED = {"block_a_v4": "192.0.2.7", "block_b_v4": "198.51.100.7", "block_b_v6": "2001:db8::7"}

CONFIGS = {
    "tcp-stealth": '[traps]\nmode = { tcp = "stealth" }\ntcp = ["23", "2323-2330"]\n',
    "udp-stealth": '[traps]\nmode = { udp = "stealth" }\nudp = ["69", "161-162"]\n',
    "tcp-advanced-udp-connect": '[traps]\nmode = { tcp = "advanced", udp = "connect" }\n',
    "both-advanced": '[traps]\nmode = "advanced"\n[allow]\naddresses = ["203.0.113.0/24"]\n',
    "block-off": '[traps]\nmode = "stealth"\n[kernel]\nblock = false\n',
    "client-time-0": '[traps]\nmode = "stealth"\n[kernel]\nclient_time = "0s"\n',
    "quiet-off": '[traps]\nmode = { tcp = "advanced", udp = "connect" }\n[kernel]\nquiet = false\n',
    "traps-on-addresses": """
[traps]
mode = "stealth"
tcp = ["23"]
udp = []
[[traps.port]]
port = "2323"
proto = "tcp"
address = "192.0.2.1"
[[traps.port]]
port = "2323"
proto = "tcp"
address = "2001:db8::1"
[[traps.port]]
port = "5353"
proto = "udp"
address = "2001:db8::1"
""",
}


class CountingNft(Nft):
    """libnftables, counting the batches (each one kernel transaction)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def run(self, commands: Sequence[str]) -> None:
        self.batches += 1
        super().run(commands)


@dataclass
class Loaded:
    """The nftables backend bound to `netns`, and the sensor as the core would want it (`state`:
    what `setup` builds, kept up to date by `serve` and `rotate` as the core's would be)."""

    netns: Netns
    backend: NftablesBackend
    state: SensorState
    libnft: CountingNft

    def setup(self) -> None:
        self.backend.setup([], NOW, self.state)

    def serve(self, ports: Ports) -> None:
        self.backend.serve(ports)
        self.state = replace(self.state, served=ports)

    def rotate(self) -> str:
        generation = older(self.state.generation)
        self.backend.rotate(generation)
        self.state = replace(self.state, generation=generation)
        return generation

    def nft(self, *argv: str) -> str:
        return self.netns.run(["nft", *argv])

    def listing(self, kind: str = "table", name: str | None = None) -> str:
        return self.nft("list", kind, "inet", TABLE, *([name] if name else []))

    def chain(self, name: str) -> dict[str, Any]:
        """The chain's type, hook, priority and policy, as nft's JSON gives them."""
        listed = json.loads(self.nft("-j", "list", "chain", "inet", TABLE, name))
        found = next(item["chain"] for item in listed["nftables"] if "chain" in item)
        return {key: found[key] for key in ("type", "hook", "prio", "policy")}

    def elements(self, name: str) -> list[Any]:
        listed = json.loads(self.nft("-j", "list", "set", "inet", TABLE, name))
        found = next(item["set"] for item in listed["nftables"] if "set" in item)
        return list(found.get("elem", []))


@pytest.fixture
def load(netns_factory: Callable[[], Netns]) -> Callable[[str], Loaded]:
    """`load(config)`: a new namespace with the sensor of `config` set up (not yet loaded)."""

    def make(config: str) -> Loaded:
        netns = netns_factory()
        with netns.inside():
            assert not in_host_netns(), "refusing to bind libnftables to the host's namespace"
            nft, objects = CountingNft(), NftObjects()
        state = SensorState(spec_from_config(load_text(config, None)), {})
        backend = NftablesBackend(TABLE, nft=nft, objects=objects)
        return Loaded(netns, backend, state, nft)

    return make


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_combination_loads_in_one_transaction_and_tears_down(
    load: Callable[[str], Loaded], name: str
) -> None:
    loaded = load(CONFIGS[name])
    loaded.setup()
    # the hold's verdict rule (advanced mode holds by default) is a transaction of its own,
    # written right after the table's (docs/hold.md)
    assert loaded.libnft.batches == (2 if loaded.state.spec.hold else 1)
    listing = loaded.listing()
    assert "chain input {" in listing
    assert loaded.chain("input") == INPUT_CHAIN
    assert "chain prerouting {" in listing  # the bans, in the same table
    assert loaded.backend.sensor_counters() == dict.fromkeys(COUNTERS, 0)
    loaded.setup()  # a rebuild replaces it all, in one transaction again
    assert loaded.listing() == listing
    loaded.backend.teardown()
    assert loaded.nft("list", "tables") == ""


@pytest.mark.parametrize(
    ("name", "present", "absent"),
    [
        ("block-off", ['log prefix "porttrap:new"'], ["@block_", "jump blocked", "jump block"]),
        ("client-time-0", ["@block_a_v4"], ["@clients_v4", "report_client"]),
        ("quiet-off", ["@traps_tcp"], ['counter name "quiet"']),
        ("tcp-advanced-udp-connect", ['counter name "quiet"'], ["@traps_udp", "udp dport"]),
        ("udp-stealth", ["@traps_udp"], ['counter name "quiet"', "@traps_tcp"]),
    ],
)
def test_the_settings_show_in_the_rules(
    load: Callable[[str], Loaded], name: str, present: list[str], absent: list[str]
) -> None:
    loaded = load(CONFIGS[name])
    loaded.setup()
    chains = "\n".join(
        loaded.listing("chain", chain)
        for chain in ("input", "forward", "blocked", "probe", "block", "report_new")
    )
    for text in present:
        assert text in chains
    for text in absent:
        assert text not in chains


def test_traps_on_addresses_fill_the_set_of_their_family(load: Callable[[str], Loaded]) -> None:
    loaded = load(CONFIGS["traps-on-addresses"])
    loaded.setup()
    assert loaded.elements("traps_tcp_at_v4") == [{"concat": ["192.0.2.1", 2323]}]
    assert loaded.elements("traps_tcp_at_v6") == [{"concat": ["2001:db8::1", 2323]}]
    assert loaded.elements("traps_udp_at_v6") == [{"concat": ["2001:db8::1", 5353]}]
    assert loaded.elements("traps_udp_at_v4") == []
    assert loaded.elements("traps_tcp") == [23]
    input_chain = loaded.listing("chain", "input")
    assert "ip daddr . tcp dport @traps_tcp_at_v4" in input_chain
    assert "ip6 daddr . udp dport @traps_udp_at_v6" in input_chain
    assert "ip daddr . udp dport" not in input_chain


def test_advanced_mode_watches_every_port_but_the_excluded_ones(
    load: Callable[[str], Loaded],
) -> None:
    loaded = load(CONFIGS["both-advanced"])
    loaded.setup()
    assert loaded.elements("traps_tcp") == [{"range": [1, 65535]}]
    assert loaded.elements("open_tcp") == [113, 139, 65023]  # and the catch-all port
    assert sorted(loaded.elements("open_udp")) == [67, 137, 138, 520]
    assert loaded.elements("allow_v4") == [{"prefix": {"addr": "203.0.113.0", "len": 24}}]


def test_serve_adds_and_removes_open_ports_in_the_kernel(load: Callable[[str], Loaded]) -> None:
    loaded = load(CONFIGS["both-advanced"])
    loaded.setup()
    loaded.serve({TCP: frozenset({22, 443}), UDP: frozenset({53})})
    assert loaded.elements("open_tcp") == [22, 113, 139, 443, 65023]
    assert sorted(loaded.elements("open_udp")) == [53, 67, 137, 138, 520]
    loaded.serve({TCP: frozenset({443, 8443}), UDP: frozenset()})
    assert loaded.elements("open_tcp") == [113, 139, 443, 8443, 65023]
    assert sorted(loaded.elements("open_udp")) == [67, 137, 138, 520]
    loaded.setup()  # rebuilt as it was
    assert loaded.elements("open_tcp") == [113, 139, 443, 8443, 65023]


def test_rotate_switches_the_block_chain_and_empties_the_new_generation(
    load: Callable[[str], Loaded],
) -> None:
    loaded = load(CONFIGS["tcp-stealth"])
    loaded.setup()
    assert "update @block_a_v4 { ip saddr }" in loaded.listing("chain", "block")
    for name, address in BLOCKED.items():
        loaded.nft("add", "element", "inet", TABLE, name, f"{{ {address} }}")
    assert loaded.rotate() == "b"
    block = loaded.listing("chain", "block")
    assert "update @block_b_v4 { ip saddr }" in block
    assert "update @block_b_v6 { ip6 saddr }" in block
    assert "@block_a_" not in block
    assert loaded.elements("block_b_v4") == loaded.elements("block_b_v6") == []
    assert [e["elem"]["val"] for e in loaded.elements("block_a_v4")] == ["192.0.2.7"]
    loaded.setup()  # rebuilt with the current generation
    assert "update @block_b_v4" in loaded.listing("chain", "block")
    assert loaded.rotate() == "a"
    assert "update @block_a_v4" in loaded.listing("chain", "block")


def test_counters_returns_all_of_the_sensors(load: Callable[[str], Loaded]) -> None:
    loaded = load(CONFIGS["udp-stealth"])
    loaded.setup()
    loaded.nft("add", "counter", "inet", TABLE, "legacy_hits")
    assert loaded.backend.sensor_counters() == dict.fromkeys(COUNTERS, 0)


def test_an_allow_list_with_an_address_inside_a_network_loads(
    load: Callable[[str], Loaded],
) -> None:
    config = '[traps]\nmode = "stealth"\n[allow]\naddresses = ["192.0.2.0/24", "192.0.2.7"]\n'
    loaded = load(config)  # the configuration is valid: connect mode takes it
    loaded.setup()
    assert loaded.elements("allow_v4") == [{"prefix": {"addr": "192.0.2.0", "len": 24}}]
