"""The packet classifier: recorded packets (tests/data/packets, built with scapy) with the probe
expected of each, then broken and random bytes, which must give None and never raise."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porttrap.sensors.classify import KIND_BY_FLAGS, Probe, classify, flag_letters, tcp_kind

SAMPLES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "data" / "packets" / "samples.json").read_text()
)
FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
KINDS = {"syn", "fin", "null", "xmas", "ack", "maimon", "other", "udp"}


def sample(name: str) -> tuple[bytes, int]:
    entry = next(entry for entry in SAMPLES if entry["name"] == name)
    return bytes.fromhex(entry["hex"]), FAMILIES[entry["family"]]


def shown(probe: Probe | None) -> dict[str, Any] | None:
    """A probe as the samples write it: addresses and proto as text."""
    if probe is None:
        return None
    return {
        key: str(value) if key in {"source", "destination", "proto"} else value
        for key, value in asdict(probe).items()
    }


def patched(data: bytes, offset: int, *values: int) -> bytes:
    return data[:offset] + bytes(values) + data[offset + len(values) :]


@pytest.mark.parametrize("entry", SAMPLES, ids=[entry["name"] for entry in SAMPLES])
def test_recorded_packet(entry: dict[str, Any]) -> None:
    probe = classify(bytes.fromhex(entry["hex"]), FAMILIES[entry["family"]])
    assert shown(probe) == entry["expected"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_class_is_recorded_for_both_families(family: str) -> None:
    expected = [entry["expected"] for entry in SAMPLES if entry["family"] == family]
    assert {probe["kind"] for probe in expected if probe is not None} == KINDS


@pytest.mark.parametrize("entry", SAMPLES, ids=[entry["name"] for entry in SAMPLES])
def test_a_packet_cut_short_gives_none_until_its_headers_are_whole(entry: dict[str, Any]) -> None:
    data, family = bytes.fromhex(entry["hex"]), FAMILIES[entry["family"]]
    full = classify(data, family)
    results = [classify(data[:length], family) for length in range(len(data) + 1)]
    whole_from = next(length for length, probe in enumerate(results) if probe == full)
    assert results == [None] * whole_from + [full] * (len(data) + 1 - whole_from)


@pytest.mark.parametrize(
    ("name", "offset", "values"),
    [
        ("ipv4-syn", 0, [0x44]),  # IHL 4: shorter than the fixed header
        ("ipv4-syn", 0, [0x4F]),  # IHL 15: 60 bytes, the packet holds 40
        ("ipv4-syn", 0, [0x65]),  # version 6 on AF_INET
        ("ipv4-syn", 2, [0, 19]),  # Total Length shorter than the header
        ("ipv4-syn", 2, [0, 39]),  # Total Length cuts the TCP header
        ("ipv4-udp", 2, [0, 27]),  # ... and the UDP header
        ("ipv4-syn", 6, [0x00, 0x01]),  # fragment offset 8: no TCP header in here
        ("ipv4-syn", 9, [1]),  # ICMP
        ("ipv6-syn", 0, [0x40]),  # version 4 on AF_INET6
        ("ipv6-syn", 5, [19]),  # Payload Length cuts the TCP header
        ("ipv6-syn", 6, [59]),  # No Next Header
        ("ipv6-syn", 6, [50]),  # ESP: encrypted, nothing to read
        ("ipv6-hop-by-hop-dest-options-syn", 41, [200]),  # hop-by-hop longer than the packet
        ("ipv6-ah-ack", 41, [40]),  # AH longer than the packet
        ("ipv6-first-fragment-fin", 42, [0x00, 0x08]),  # fragment offset 1: a later fragment
    ],
)
def test_broken_headers_give_none(name: str, offset: int, values: list[int]) -> None:
    data, family = sample(name)
    assert classify(patched(data, offset, *values), family) is None


@pytest.mark.parametrize(("name", "version"), [("ipv4-xmas", 4), ("ipv6-maimon", 6)])
def test_family_may_be_the_ip_version(name: str, version: int) -> None:
    data, family = sample(name)
    assert classify(data, version) == classify(data, family) is not None


@pytest.mark.parametrize("family", [socket.AF_UNIX, socket.AF_PACKET, 0, -1])
def test_other_families_give_none(family: int) -> None:
    assert classify(sample("ipv4-syn")[0], family) is None


@pytest.mark.parametrize("data", [b"", b"\x45", b"\x60" + bytes(38)])
def test_fragments_of_a_header_give_none(data: bytes) -> None:
    assert classify(data, socket.AF_INET) is None
    assert classify(data, socket.AF_INET6) is None


def test_trailing_bytes_beyond_the_ipv4_total_length_are_ignored() -> None:
    data, family = sample("ipv4-udp")
    assert classify(data + bytes(6), family) == classify(data, family)


def test_an_ipv6_jumbogram_is_read_to_the_end_of_what_we_hold() -> None:
    data, family = sample("ipv6-syn")
    assert classify(patched(data, 4, 0, 0), family) == classify(data, family)


def ipv6_with_destination_options(count: int) -> bytes:
    """A SYN behind `count` empty destination-options headers (8 bytes each)."""
    data, _ = sample("ipv6-syn")
    options = b"".join(
        bytes([60 if n < count - 1 else 6, 0, 1, 4, 0, 0, 0, 0]) for n in range(count)
    )
    header = patched(data[:40], 4, *(len(options) + 20).to_bytes(2, "big"))
    return patched(header, 6, 60 if count else 6) + options + data[40:]


def test_the_extension_header_walk_is_bounded() -> None:
    assert classify(ipv6_with_destination_options(8), socket.AF_INET6) is not None
    assert classify(ipv6_with_destination_options(9), socket.AF_INET6) is None


@pytest.mark.parametrize("flags", range(256))
def test_ecn_flags_never_change_the_kind_but_are_kept(flags: int) -> None:
    assert tcp_kind(flags) == tcp_kind(flags & 0x3F)
    assert len(flag_letters(flags)) == bin(flags).count("1")


def test_flag_letters() -> None:
    assert [flag_letters(f) for f in (0x00, 0x02, 0x29, 0x11, 0xC2, 0xFF)] == [
        "",
        "S",
        "FPU",
        "FA",
        "SEC",
        "FSRPAUEC",
    ]


def test_window_scans_are_reported_as_ack() -> None:
    assert tcp_kind(0x10) == "ack"
    assert "window" not in KIND_BY_FLAGS.values()


@given(st.binary(max_size=200), st.sampled_from([socket.AF_INET, socket.AF_INET6, 0]))
def test_random_bytes_never_raise(data: bytes, family: int) -> None:
    probe = classify(data, family)
    assert probe is None or isinstance(probe, Probe)


@given(
    st.sampled_from(SAMPLES),
    st.lists(st.tuples(st.integers(0, 127), st.integers(0, 255)), max_size=8),
    st.integers(0, 128),
)
def test_damaged_samples_never_raise(
    entry: dict[str, Any], damage: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(bytes.fromhex(entry["hex"]))
    for offset, value in damage:
        if offset < len(data):
            data[offset] = value
    probe = classify(bytes(data[: len(data) - cut]), FAMILIES[entry["family"]])
    assert probe is None or probe.kind in KINDS
