"""The daemon's counters for `top` and metrics: exact counts, bounded tables."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from porttrap.core import stats as stats_mod
from porttrap.core.stats import OTHER_PORT, Histogram, Stats
from porttrap.model import Ban, Hit, Outcome, Proto, Unban

T0 = 1_800_000_000.0


def hit(
    source: str, port: int, proto: Proto = Proto.TCP, kind: str = "connect", at: float = T0
) -> Hit:
    return Hit(at, ip_address(source), 40000, ip_address("192.0.2.1"), port, proto, kind=kind)


def test_hits_are_counted_by_protocol_port_kind_and_outcome() -> None:
    stats = Stats()
    stats.hit(hit("198.51.100.7", 23), Outcome.BANNED)
    stats.hit(hit("198.51.100.7", 23, at=T0 + 1), Outcome.ALREADY_BANNED)
    stats.hit(hit("198.51.100.8", 161, Proto.UDP, "udp"), Outcome.COUNTED)
    assert stats.hits == {
        ("tcp", 23, "connect", "banned"): 1,
        ("tcp", 23, "connect", "already-banned"): 1,
        ("udp", 161, "udp", "counted"): 1,
    }
    assert stats.total_hits == 3
    assert stats.top_ports(1) == [("tcp", 23, 2)]
    (first, source), _second = stats.top_sources(5)
    assert (str(first), source.hits, source.last_seen, source.last_port) == (
        "198.51.100.7",
        2,
        T0 + 1,
        23,
    )


def test_ports_past_the_limit_count_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "MAX_PORTS", 2)
    stats = Stats()
    for port in (1, 2, 3, 4, 1):
        stats.hit(hit("198.51.100.7", port), Outcome.COUNTED)
    assert stats.top_ports(10) == [("tcp", 1, 2), ("tcp", OTHER_PORT, 2), ("tcp", 2, 1)]


def test_the_source_table_keeps_the_busiest_half_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "MAX_SOURCES", 4)
    stats = Stats()
    for n, count in enumerate((5, 1, 4, 2)):
        for _ in range(count):
            stats.hit(hit(f"198.51.100.{n}", 23), Outcome.COUNTED)
    stats.hit(hit("203.0.113.9", 23), Outcome.COUNTED)  # the fifth source: forget two
    assert sorted(str(a) for a in stats.sources) == ["198.51.100.0", "198.51.100.2", "203.0.113.9"]
    assert stats.sources_forgotten == 2


def test_bans_and_unbans_are_counted_as_applied() -> None:
    stats = Stats()
    net = ip_network("198.51.100.7/32")
    batch = [Ban(net, T0, T0 + 60, 1, "tcp/23"), Ban(net, T0, None, 3, "tcp/23")]
    assert not stats.bans
    stats.applied([*batch, Unban(net, T0, "manual")])
    stats.expired(batch[:1])
    assert stats.bans == {"temporary": 1, "permanent": 1}
    assert stats.unbans == {"lifted": 1, "expired": 1}


def test_histogram_buckets_are_upper_bounds() -> None:
    histogram = Histogram(bounds=(0.001, 0.01))
    histogram.buckets = [0, 0, 0]
    for value in (0.0005, 0.001, 0.005, 3.0):
        histogram.observe(value)
    assert histogram.buckets == [2, 1, 1]  # le=0.001 holds 0.001 itself
    assert (histogram.count, round(histogram.total, 4)) == (4, 3.0065)
