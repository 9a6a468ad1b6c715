"""The daemon side of the kernel sensor: the hit each reported packet makes (sensors/kernel.py;
recorded packets from tests/data/packets and NFLOG datagrams from tests/data/nflog), the
estimate of how full each block generation is, and when the core rotates generations and traps
a port again (core/kernel.py), carried out by the real shell and nftables backend over a
stand-in for libnftables, on a FakeClock; nothing here opens a socket."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from porttrap.config.loader import load_text
from porttrap.config.schema import KernelSensor
from porttrap.core.events import FirewallMissing, Started
from porttrap.core.kernel import BlockFill, KernelState
from porttrap.daemon.shell import Shell
from porttrap.daemon.wiring import make_shell
from porttrap.errors import FirewallError
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.model import Hit, Proto
from porttrap.sensors.kernel import KernelReports, hit_of
from porttrap.sensors.nflog import LoggedPacket, parse_messages
from porttrap.sensorspec import Ports
from porttrap.testing import FakeClock, MemoryStore

DATA = Path(__file__).parent.parent / "data"
SAMPLES: list[dict[str, Any]] = json.loads((DATA / "packets" / "samples.json").read_text())
VERSIONS = {"ipv4": 4, "ipv6": 6}
TCP, UDP = Proto.TCP, Proto.UDP
T = "inet porttrap"
AT = 1_800_000_123.5  # the daemon's clock when a report carries no kernel timestamp
NEW, CLIENT, PEER = "porttrap:new", "porttrap:client", "porttrap:peer"

# What each recorded NFLOG datagram holds (see tests/data/nflog/record.py): the scanner
# 192.0.2.2 / 2001:db8::2 probed the protected host 192.0.2.1 / 2001:db8::1.
NFLOG = {  # name: (source, local, port, proto, kind, packets)
    "tcp4-syn": ("192.0.2.2", "192.0.2.1", 2323, TCP, "syn", 1),
    "tcp6-syn": ("2001:db8::2", "2001:db8::1", 2323, TCP, "syn", 1),
    "udp4": ("192.0.2.2", "192.0.2.1", 2323, UDP, "udp", 1),
    "udp6": ("2001:db8::2", "2001:db8::1", 2323, UDP, "udp", 1),
    "tcp4-no-prefix": ("192.0.2.2", "192.0.2.1", 2424, TCP, "syn", 1),
    "udp4-batch-of-5": ("192.0.2.2", "192.0.2.1", 2323, UDP, "udp", 5),
}


def sample(name: str) -> tuple[bytes, int]:
    entry = next(entry for entry in SAMPLES if entry["name"] == name)
    return bytes.fromhex(entry["hex"]), VERSIONS[entry["family"]]


def nflog(name: str) -> list[LoggedPacket]:
    return parse_messages((DATA / "nflog" / f"{name}.bin").read_bytes())


def expected_hit(entry: dict[str, Any], prefix: str) -> Hit | None:
    """The hit a samples.json entry makes: its probe, with "other" carrying the flags."""
    probe = entry["expected"]
    if probe is None:
        return None
    kind = probe["kind"] if probe["kind"] != "other" else f"other {probe['flags']}"
    return Hit(
        at=AT,
        source=ipaddress.ip_address(probe["source"]),
        source_port=probe["source_port"],
        local=ipaddress.ip_address(probe["destination"]),
        port=probe["destination_port"],
        proto=Proto(probe["proto"]),
        kind=kind,
        client=prefix == CLIENT,
        peer=prefix == PEER,
    )


# --- hit_of ---


@pytest.mark.parametrize("prefix", [NEW, CLIENT, PEER])
@pytest.mark.parametrize("entry", SAMPLES, ids=[entry["name"] for entry in SAMPLES])
def test_recorded_packet_makes_its_hit(entry: dict[str, Any], prefix: str) -> None:
    packet = LoggedPacket(VERSIONS[entry["family"]], prefix, bytes.fromhex(entry["hex"]))
    assert hit_of(packet, AT) == expected_hit(entry, prefix)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ipv4-synack", "other SA"), ("ipv6-rst", "other R"), ("ipv4-all-flags", "other FSRPAUEC")],
)
def test_other_kinds_carry_their_flags(name: str, kind: str) -> None:
    payload, family = sample(name)
    hit = hit_of(LoggedPacket(family, NEW, payload), AT)
    assert hit is not None
    assert hit.kind == kind
    assert not hit.verified


def test_a_null_probe_is_null_not_other() -> None:
    payload, family = sample("ipv6-null")
    hit = hit_of(LoggedPacket(family, NEW, payload), AT)
    assert hit is not None
    assert hit.kind == "null"


@pytest.mark.parametrize("name", sorted(NFLOG))
@pytest.mark.parametrize("prefix", [NEW, CLIENT, PEER])
def test_recorded_nflog_report_makes_its_hit_at_the_kernels_time(name: str, prefix: str) -> None:
    source, local, port, proto, kind, count = NFLOG[name]
    packets = [dataclasses.replace(packet, prefix=prefix) for packet in nflog(name)]
    assert len(packets) == count
    for packet in packets:
        assert packet.timestamp is not None
        hit = hit_of(packet, AT)
        assert hit is not None
        assert (str(hit.source), str(hit.local)) == (source, local)
        assert (hit.port, hit.proto, hit.kind) == (port, proto, kind)
        assert hit.at == packet.timestamp
        assert hit.client is (prefix == CLIENT)
        assert hit.peer is (prefix == PEER)
        assert hit.source_port > 0


def test_a_report_without_a_kernel_timestamp_gets_the_daemons_time() -> None:
    [packet] = nflog("tcp6-syn")
    hit = hit_of(dataclasses.replace(packet, prefix=NEW, timestamp=None), AT)
    assert hit is not None
    assert hit.at == AT


@pytest.mark.parametrize(
    "prefix",
    ["porttrap:repeat", "porttrap:exempt", "porttrap:clients", "porttrap:peers", "porttrap:", ""],
)
def test_only_the_client_and_peer_paths_mark_a_hit_as_a_clients_or_a_peers(prefix: str) -> None:
    [packet] = nflog("udp4")
    hit = hit_of(dataclasses.replace(packet, prefix=prefix), AT)
    assert hit is not None
    assert hit.client is False
    assert hit.peer is False


def test_ipv4_mapped_addresses_are_unmapped() -> None:
    payload, family = sample("ipv6-udp")
    source = ipaddress.IPv6Address("::ffff:198.51.100.7").packed
    local = ipaddress.IPv6Address("::ffff:192.0.2.1").packed
    mapped = payload[:8] + source + local + payload[40:]
    hit = hit_of(LoggedPacket(family, NEW, mapped), AT)
    assert hit is not None
    assert hit.source == ipaddress.IPv4Address("198.51.100.7")
    assert hit.local == ipaddress.IPv4Address("192.0.2.1")
    assert (hit.port, hit.kind) == (161, "udp")


@pytest.mark.parametrize(
    ("payload", "family"),
    [
        (b"", 4),
        (b"", 6),
        (sample("ipv4-syn")[0][:30], 4),  # the TCP header cut short
        (sample("ipv4-icmp-echo")[0], 4),
        (sample("ipv6-later-fragment")[0], 6),
        (sample("ipv4-syn")[0], 6),  # the wrong family
        (sample("ipv4-syn")[0], 0),
    ],
)
def test_an_unreadable_payload_makes_no_hit(payload: bytes, family: int) -> None:
    assert hit_of(LoggedPacket(family, NEW, payload, timestamp=AT), AT) is None


# --- the sensor: the core decides, the nftables backend writes (a stand-in for libnftables) ---


class KernelNft(Nft):
    """Stands in for libnftables: keeps the batches run, and refuses every change while
    `refusing` is set."""

    def __init__(self) -> None:  # no libnftables here
        self.batches: list[list[str]] = []
        self.counts: dict[str, int] = {}  # what the kernel's counters read
        self.refusing = False

    def run(self, commands: Sequence[str]) -> None:
        if self.refusing:
            raise FirewallError("nftables refused it: No such file or directory (simulated)")
        self.batches.append(list(commands))


class KernelObjects(NftObjects):
    """Stands in for the netlink reader: the table is there; its counters read `nft.counts`."""

    def __init__(self, nft: KernelNft) -> None:  # no socket here
        self.nft = nft

    def table_exists(self, table: str) -> bool:
        return True

    def counters(self, table: str) -> dict[str, int]:
        return dict(self.nft.counts)

    def shape(self, table: str) -> str:
        return "as written"


CONFIG = """
[traps]
mode = {{ tcp = "stealth", udp = "advanced" }}
tcp = ["23"]
[traps.advanced]
exclude_udp = ["67"]
[kernel]
block_size = {block_size}
block_time = "{block_time}s"
block = {block}
"""


@dataclasses.dataclass
class Rig:
    shell: Shell
    nft: KernelNft
    clock: FakeClock

    @property
    def kernel(self) -> KernelState:
        assert self.shell.core.kernel is not None
        return self.shell.core.kernel

    def poll(self, seconds: float = 0.25, **counts: int) -> None:
        """`seconds` later, the kernel's counters read `counts` (as the shell's poll timer
        reads them): the block sets and lingering ports are checked."""
        self.clock.advance(seconds)
        self.nft.counts.update(counts)
        self.shell.read_counters()

    def served(self, seconds: float = 0.0, **ports: set[int]) -> None:
        """`seconds` later, the listeners sensor reports `ports` served."""
        self.clock.advance(seconds)
        self.shell.on_served(served(**ports))


def served(tcp: set[int] | None = None, udp: set[int] | None = None) -> Ports:
    return {TCP: frozenset(tcp or ()), UDP: frozenset(udp or ())}


def rig(block_size: int = 2048, block_time: float = 60.0, block: bool = True) -> Rig:
    text = CONFIG.format(block_size=block_size, block_time=block_time, block=str(block).lower())
    config = load_text(text, None)
    nft, clock = KernelNft(), FakeClock()
    backend = NftablesBackend(nft=nft, objects=KernelObjects(nft))
    shell = make_shell(config, clock, MemoryStore(), backend, backend)
    shell.feed(Started(frozenset(), [], served=served()))
    assert nft.batches and "add table inet porttrap" in nft.batches[0]
    nft.batches.clear()
    return Rig(shell, nft, clock)


def rotation_to(generation: str) -> list[str]:
    return [
        f"flush set {T} block_{generation}_v4",
        f"flush set {T} block_{generation}_v6",
        f"flush chain {T} block",
        f"add rule {T} block update @block_{generation}_v4 {{ ip saddr }} "
        f'counter name "block_{generation}"',
        f"add rule {T} block update @block_{generation}_v6 {{ ip6 saddr }} "
        f'counter name "block_{generation}"',
    ]


# --- rotation ---


def test_rotation_comes_when_the_current_generation_is_half_full_and_not_before() -> None:
    r = rig(block_size=2048)
    r.poll(block_a=0, block_b=0)
    r.poll(block_a=1023)
    assert (r.kernel.generation, r.nft.batches) == ("a", [])
    r.poll(block_a=1024)
    assert (r.kernel.generation, r.kernel.rotations) == ("b", 1)
    assert r.nft.batches == [rotation_to("b")]
    assert r.kernel.counters == {"block_a": 1024, "block_b": 0}
    assert r.kernel.fill.fill("b") == 0


def test_generations_take_turns_and_each_counts_from_when_it_was_emptied() -> None:
    r = rig(block_size=2048)
    r.poll(block_a=0, block_b=0)
    r.poll(block_a=1024)  # -> b
    r.poll(block_b=1023)
    assert r.kernel.generation == "b"
    r.poll(block_b=1024)  # -> a, emptied: its 1024 earlier insertions are gone
    assert r.kernel.generation == "a"
    assert r.kernel.fill.fill("a") == 0
    r.poll(block_a=2047)
    assert r.kernel.generation == "a"
    r.poll(block_a=2048)  # 1024 more since it was emptied -> b
    assert (r.kernel.generation, r.kernel.rotations) == ("b", 3)
    assert r.nft.batches == [rotation_to("b"), rotation_to("a"), rotation_to("b")]


def test_insertions_older_than_block_time_do_not_count() -> None:
    r = rig(block_size=2048, block_time=60.0)
    r.poll(block_a=0)
    r.poll(1.0, block_a=800)
    r.poll(61.0, block_a=1200)  # the first 800 have expired: 400 in the set
    assert r.kernel.fill.fill("a") == 400
    assert r.kernel.generation == "a"
    r.poll(1.0, block_a=1900)
    assert r.kernel.generation == "b"


def test_without_blocks_the_counters_are_read_but_nothing_rotates() -> None:
    r = rig(block=False)
    r.poll(block_a=0, reported=0)
    r.poll(block_a=100_000, reported=7)
    assert r.kernel.counters == {"block_a": 100_000, "reported": 7}
    assert (r.kernel.generation, r.nft.batches) == ("a", [])


def test_a_refused_rotation_changes_nothing_and_is_tried_again() -> None:
    r = rig(block_size=2048)
    r.poll(block_a=0)
    r.nft.refusing = True
    r.poll(block_a=1500)
    assert (r.kernel.generation, r.kernel.rotations) == ("a", 0)
    r.nft.refusing = False
    r.poll(block_a=1500)
    assert (r.kernel.generation, r.nft.batches) == ("b", [rotation_to("b")])


def test_a_rebuild_restarts_the_estimate_and_keeps_the_generation() -> None:
    r = rig(block_size=2048)
    r.poll(block_a=0, block_b=0)
    r.poll(block_a=1024)  # -> b
    r.nft.counts.update(block_a=0, block_b=0)  # the table is built again: counters from 0
    r.shell.feed(FirewallMissing())
    assert f"add rule {T} block update @block_b_v4 {{ ip saddr }} " \
        'counter name "block_b"' in r.nft.batches[-1]  # fmt: skip
    r.poll(block_b=1000)
    assert (r.kernel.generation, r.kernel.fill.fill("b")) == ("b", 1000)


# --- BlockFill ---


def test_fill_counts_insertions_within_block_time() -> None:
    fill = BlockFill(block_time=10.0)
    assert (fill.fill("a"), fill.fill("b")) == (0, 0)
    fill.record(0.0, {"block_a": 0, "block_b": 3})
    fill.record(5.0, {"block_a": 30, "block_b": 3})
    fill.record(9.0, {"block_a": 35, "block_b": 4})
    assert (fill.fill("a"), fill.fill("b")) == (35, 1)


def test_older_insertions_expire_from_the_estimate() -> None:
    fill = BlockFill(block_time=10.0)
    fill.record(0.0, {"block_a": 0})
    fill.record(5.0, {"block_a": 30})
    fill.record(12.0, {"block_a": 35})  # the sample at 0 is past the horizon (2)
    assert fill.fill("a") == 35
    fill.record(16.0, {"block_a": 36})  # ... and the one at 5 too (horizon 6): 30 went
    assert fill.fill("a") == 6
    fill.record(100.0, {"block_a": 36})
    assert fill.fill("a") == 0


def test_emptied_restarts_the_count_of_that_generation_only() -> None:
    fill = BlockFill(block_time=60.0)
    fill.record(0.0, {"block_a": 0, "block_b": 0})
    fill.record(1.0, {"block_a": 25, "block_b": 10})
    fill.emptied("a")
    assert (fill.fill("a"), fill.fill("b")) == (0, 10)
    fill.record(2.0, {"block_a": 30, "block_b": 10})
    assert fill.fill("a") == 5
    BlockFill(60.0).emptied("b")  # before any sample: nothing to forget


def test_a_counter_that_goes_down_restarts_the_estimate() -> None:
    """The table was rebuilt: its counters start again from 0."""
    fill = BlockFill(block_time=60.0)
    fill.record(0.0, {"block_a": 0})
    fill.record(1.0, {"block_a": 80})
    fill.emptied("a")
    fill.record(2.0, {"block_a": 5})  # below the base of 80, which no longer applies
    fill.record(3.0, {"block_a": 30})
    fill.record(4.0, {"block_a": 50})
    assert 45 <= fill.fill("a") <= 50  # the insertions seen since the restart, at least
    before = fill.fill("a")
    fill.record(5.0, {"block_a": 51})
    assert fill.fill("a") == before + 1


def test_insertions_before_the_first_sample_after_a_rebuild_count() -> None:
    fill = BlockFill(block_time=60.0)
    fill.record(0.0, {"block_a": 0})
    fill.record(1.0, {"block_a": 80})
    fill.record(2.0, {"block_a": 5})  # rebuilt: the new block_a set holds these 5
    assert fill.fill("a") == 5


# --- served ports and linger ---


def test_a_port_that_stops_being_served_is_trapped_again_after_linger() -> None:
    r = rig()
    r.served(tcp={80})
    assert r.nft.batches == [[f"add element {T} open_tcp {{ 80 }}"]]
    r.served(1.0)  # 80 closes
    assert r.kernel.wanted[TCP] == {80}
    r.poll(9.9)
    assert r.kernel.wanted[TCP] == {80}
    assert len(r.nft.batches) == 1
    r.poll(0.1)
    assert r.kernel.wanted[TCP] == frozenset()
    assert r.nft.batches[1:] == [[f"delete element {T} open_tcp {{ 80 }}"]]
    r.poll(10.0)
    assert len(r.nft.batches) == 2


def test_a_port_served_again_during_linger_is_never_trapped() -> None:
    r = rig()
    r.served(tcp={80})
    r.served(1.0)
    r.served(5.0, tcp={80})
    r.poll(20.0)
    assert r.kernel.wanted[TCP] == {80}
    assert r.nft.batches == [[f"add element {T} open_tcp {{ 80 }}"]]
    r.served(1.0)  # closes again: a full linger from now
    r.poll(9.5)
    assert r.kernel.wanted[TCP] == {80}
    r.poll(0.5)
    assert r.kernel.wanted[TCP] == frozenset()


def test_each_port_lingers_from_its_own_closing() -> None:
    r = rig()
    r.served(tcp={80, 443}, udp={53})
    r.served(1.0, tcp={443}, udp={53})
    r.served(5.0, tcp={443})
    r.poll(5.0)
    assert r.kernel.wanted == served(tcp={443}, udp={53})
    r.poll(5.0)
    assert r.kernel.wanted == served(tcp={443})
    assert r.nft.batches == [
        [f"add element {T} open_tcp {{ 80, 443 }}", f"add element {T} open_udp {{ 53 }}"],
        [f"delete element {T} open_tcp {{ 80 }}"],
        [f"delete element {T} open_udp {{ 53 }}"],
    ]


def test_an_excluded_port_stays_open_when_its_service_stops() -> None:
    r = rig()
    r.served(udp={67, 68})
    r.served(1.0)
    r.poll(10.0)
    assert r.nft.batches == [
        [f"add element {T} open_udp {{ 68 }}"],  # 67 was open already (excluded)
        [f"delete element {T} open_udp {{ 68 }}"],
    ]


def test_a_refused_change_of_served_ports_is_logged_and_kept_for_the_rebuild(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = rig()
    r.nft.refusing = True
    with caplog.at_level(logging.WARNING):
        r.served(tcp={80})
    assert any("event=kernel-sensor-error action=served-ports" in m for m in caplog.messages)
    assert r.kernel.wanted[TCP] == {80}
    r.nft.refusing = False
    r.shell.feed(FirewallMissing())  # the table is built again, with the port open
    assert f"add element {T} open_tcp {{ 80, 65023 }}" in r.nft.batches[-1]  # and the catch-all


# --- reports ---


def test_reports_become_hits_and_the_rest_is_counted() -> None:
    hits: list[Hit] = []
    clock = FakeClock()
    reports = KernelReports(KernelSensor(), hits.append, clock)
    [udp] = nflog("udp4")  # logged with another program's prefix, "porttrap-udp:"
    [bare] = nflog("tcp4-no-prefix")
    [tcp] = nflog("tcp4-syn")
    reports._on_packet(udp)
    reports._on_packet(bare)
    reports._on_packet(dataclasses.replace(tcp, prefix=NEW, payload=b"\x45"))
    reports._on_packet(dataclasses.replace(tcp, prefix=CLIENT, timestamp=None))
    assert (reports.foreign, reports.unreadable) == (2, 1)
    [hit] = hits
    assert (hit.at, hit.client, hit.port) == (clock.now(), True, 2323)
