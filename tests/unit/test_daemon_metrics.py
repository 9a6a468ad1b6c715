"""The metrics a real Shell (fake clock, memory firewall and store) exposes, rendered by the
client library and read back with its own parser: exact values for each family."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric

from porttrap import __version__
from porttrap.cli import output
from porttrap.config.loader import load_text
from porttrap.core import stats as stats_mod
from porttrap.core import views
from porttrap.core.events import BlocksRotated, CountersRead, Started, Tick
from porttrap.core.stats import Histogram
from porttrap.daemon.metrics import histogram, registry_for
from porttrap.daemon.shell import Shell
from porttrap.daemon.wiring import make_shell
from porttrap.model import Hit, Proto
from porttrap.testing import FakeClock, MemoryFirewall, MemoryStore
from scrape import by, families, labels, values

# respond = "command" needs an action that runs on a ban (config.protection)
ON_BAN = '\n[[actions.command]]\nrun = ["/bin/true"]\n'


def scrape(daemon: Shell) -> dict[str, Metric]:
    """The families of one scrape, by name, as the client's parser reads the text."""
    return families(generate_latest(registry_for(daemon.snapshot)).decode())


def one(family: Metric, **pairs: str) -> float:
    return values(family)[labels(**pairs)]


def hit(source: str, port: int, proto: Proto = Proto.TCP, kind: str = "connect") -> Hit:
    return Hit(1_800_000_000.0, ip_address(source), 40000, ip_address("192.0.2.1"), port, proto,
               kind=kind)  # fmt: skip


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Shell]:
    config = load_text(
        f'state_dir = "{tmp_path}"\n[traps]\ntcp = ["23"]\nudp = ["161"]\n'
        '[ban]\nrespond = { udp = "command" }\n' + ON_BAN,
        None,
    )
    clock = FakeClock()
    made = make_shell(config, clock, MemoryStore(), MemoryFirewall(clock))
    made.feed(Started(frozenset(), []))  # what Shell.run does first
    yield made
    made.writer.close()


def run_on_loop(daemon: Shell, *hits: Hit, requests: tuple[tuple[str, Any], ...] = ()) -> None:
    """Feed hits and control requests on a running loop, and let the turns' batches go."""

    async def feed() -> None:
        for each in hits:
            daemon.on_hit(each)
        for name, request in requests:
            answer = daemon.handlers[name](request)
            assert inspect.isawaitable(answer)
            await answer
        for _ in range(3):
            await asyncio.sleep(0)

    daemon.writer.start()
    asyncio.run(feed())


def test_an_idle_daemon_exports_every_family_at_zero(daemon: Shell) -> None:
    got = scrape(daemon)
    assert one(got["porttrap_info"], version=__version__, backend="memory",
               tcp_mode="connect", udp_mode="connect") == 1  # fmt: skip
    assert values(got["porttrap_start_time_seconds"]) == {frozenset(): 1_800_000_000.0}
    assert values(got["porttrap_hits"]) == {}
    assert by("kind", got["porttrap_bans"]) == {"temporary": 0, "permanent": 0}
    assert by("how", got["porttrap_unbans"]) == {"lifted": 0, "expired": 0}
    assert by("kind", got["porttrap_bans_active"]) == {"temporary": 0, "permanent": 0}
    assert by("family", got["porttrap_set_elements"]) == {"ipv4": 0, "ipv6": 0}
    dropped = by("what", got["porttrap_events_dropped"])
    assert dropped == {"hit_not_stored": 0, "hit_sampled": 0, "action": 0}  # no kernel series
    assert by("evidence", got["porttrap_bans"]) == {"verified": 0, "unverified": 0}
    assert got["porttrap_decision_seconds"].type == "histogram"
    assert values(got["porttrap_decision_seconds"], "porttrap_decision_seconds_count") == {
        frozenset(): 0
    }
    for name in ("porttrap_kernel_reports", "porttrap_kernel_block_fill"):
        assert got[name].samples == []  # declared, so dashboards find the name


def test_hits_bans_and_sets_as_the_daemon_holds_them(daemon: Shell) -> None:
    run_on_loop(
        daemon,
        hit("198.51.100.7", 23),  # a TCP handshake: banned at once
        hit("198.51.100.7", 23),  # seen again before the kernel drops it
        hit("198.51.100.8", 161, Proto.UDP, "udp"),  # forgeable: the first only counts...
        hit("198.51.100.8", 161, Proto.UDP, "udp"),  # ...the second bans; udp responds "command"
        requests=(
            ("ban", {"targets": ["203.0.113.0/24"], "permanent": True}),
            ("ban", {"targets": ["2001:db8::9", "2001:db8::10"], "for": 600}),
            ("unban", {"targets": ["2001:db8::10"]}),
        ),
    )
    got = scrape(daemon)
    assert values(got["porttrap_hits"]) == {
        labels(proto="tcp", port="23", kind="connect", outcome="banned"): 1,
        labels(proto="tcp", port="23", kind="connect", outcome="already-banned"): 1,
        labels(proto="udp", port="161", kind="udp", outcome="counted"): 1,
        labels(proto="udp", port="161", kind="udp", outcome="banned"): 1,
    }
    assert by("kind", got["porttrap_bans"]) == {"temporary": 4, "permanent": 1}
    # the UDP datagrams banned on forgeable evidence; the handshake and the admin on proof
    assert by("evidence", got["porttrap_bans"]) == {"verified": 4, "unverified": 1}
    assert by("evidence", got["porttrap_bans_active"]) == {"verified": 3, "unverified": 1}
    assert by("how", got["porttrap_unbans"]) == {"lifted": 1, "expired": 0}
    assert by("kind", got["porttrap_bans_active"]) == {"temporary": 3, "permanent": 1}
    # The UDP ban is active but the command does the banning: it is in no kernel set.
    assert by("family", got["porttrap_set_elements"]) == {"ipv4": 2, "ipv6": 1}
    assert len(daemon.firewall.entries()) == 3  # what the sets count is what the kernel holds
    decision = got["porttrap_decision_seconds"]
    assert values(decision, "porttrap_decision_seconds_count") == {frozenset(): 4}
    assert (
        by("le", decision, "porttrap_decision_seconds_bucket")["0.0001"] == 4
    )  # the fake clock stands still: every one at 0 s
    to_kernel = got["porttrap_ban_to_kernel_seconds"]
    assert values(to_kernel, "porttrap_ban_to_kernel_seconds_count") == {frozenset(): 2}


def test_expired_bans_and_ports_past_the_limit(
    daemon: Shell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stats_mod, "MAX_PORTS", 1)
    run_on_loop(daemon, hit("198.51.100.7", 23), hit("198.51.100.9", 2323))
    assert isinstance(daemon.clock, FakeClock)
    daemon.clock.advance(2 * 3600)
    daemon.feed(Tick())
    got = scrape(daemon)
    assert by("port", got["porttrap_hits"]) == {"23": 1, "other": 1}
    assert by("how", got["porttrap_unbans"]) == {"lifted": 0, "expired": 2}
    assert by("kind", got["porttrap_bans_active"]) == {"temporary": 0, "permanent": 0}
    assert by("family", got["porttrap_set_elements"]) == {"ipv4": 0, "ipv6": 0}


def test_store_backlog_failures_and_dropped_hits(daemon: Shell) -> None:
    daemon.core.hits_not_stored = 7
    daemon.writer.submit(lambda: None)  # the writer is not started: the job waits
    daemon.writer.failures = 2
    daemon.effects.restore.skipped = 4  # rows the start could not read
    daemon.actions.runner.drop(3)
    got = scrape(daemon)
    assert values(got["porttrap_store_backlog"]) == {frozenset(): 1}
    assert values(got["porttrap_store_write_failures"]) == {frozenset(): 2}
    assert values(got["porttrap_store_rows_skipped_at_start"]) == {frozenset(): 4}
    assert views.status(daemon.snapshot(), 1)["bans"]["skipped_at_start"] == 4
    assert by("what", got["porttrap_events_dropped"]) == {
        "hit_not_stored": 7, "hit_sampled": 0, "action": 3}  # fmt: skip


def test_the_kernel_sensors_reports_blocks_and_drops(tmp_path: Path) -> None:
    config = load_text(f'state_dir = "{tmp_path}"\n[traps]\nmode = "stealth"\n', None)
    clock = FakeClock()
    firewall = MemoryFirewall(clock)
    daemon = make_shell(config, clock, MemoryStore(), firewall, firewall)
    daemon.feed(Started(frozenset(), [], served={Proto.TCP: frozenset(), Proto.UDP: frozenset()}))
    daemon.feed(CountersRead({}, 1.0))
    counters = {"block_a": 120, "block_b": 7, "reported": 140, "over_source": 11,
                "over_rate": 5, "quiet": 42, "redirected": 9, "over_redirect": 2}  # fmt: skip
    daemon.feed(CountersRead(counters, 2.0))
    daemon.feed(BlocksRotated("b", 3.0))  # b emptied: its 7 insertions are gone
    assert daemon._kernel is not None
    daemon._kernel.receiver.received = 139
    daemon._kernel.receiver.overruns = 1
    got = scrape(daemon)
    assert by("what", got["porttrap_events_dropped"]) == {
        "hit_not_stored": 0, "hit_sampled": 0, "action": 0,
        "kernel_source_rate": 11, "kernel_total_rate": 5, "kernel_overrun": 1}  # fmt: skip
    assert values(got["porttrap_kernel_reports"]) == {frozenset(): 139}
    assert by("generation", got["porttrap_kernel_block_fill"]) == {"a": 120, "b": 0}
    assert values(got["porttrap_kernel_block_capacity"]) == {frozenset(): 65536}
    assert values(got["porttrap_kernel_block_rotations"]) == {frozenset(): 1}
    assert values(got["porttrap_kernel_quiet_drops"]) == {frozenset(): 42}
    assert by("result", got["porttrap_kernel_redirects"]) == {"redirected": 9, "over_limit": 2}
    text = output.kernel_text(views.status(daemon.snapshot(), 1)["kernel"])
    assert text[-1] == (
        "  clients' SYNs to traps: 9 sent to the catch-all port 65023, 2 over its per-source limit"
    )


def test_histograms_are_made_cumulative_with_sum_and_count() -> None:
    source = Histogram(bounds=(0.001, 0.01), buckets=[0, 0, 0])
    for seconds in (0.0005, 0.001, 0.002, 3.0):
        source.observe(seconds)
    family = histogram("porttrap_x_seconds", "x", source)
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples == {
        ("porttrap_x_seconds_bucket", "0.001"): 2,  # le is "less than or equal"
        ("porttrap_x_seconds_bucket", "0.01"): 3,
        ("porttrap_x_seconds_bucket", "+Inf"): 4,
        ("porttrap_x_seconds_count", None): 4,
        ("porttrap_x_seconds_sum", None): pytest.approx(3.0035),
    }


def test_the_fleet_link_is_exported_only_for_a_host_in_a_fleet() -> None:
    from porttrap.core.snapshot import FleetFigures
    from porttrap.daemon.metrics import fleet

    assert list(fleet(None)) == []
    figures = FleetFigures(
        connected=False, position=40, behind=2, outbox=3, published=7, received=11,
        refused_rows=1, publish_lag=None, receive_lag=0.25,
    )  # fmt: skip
    found = {m.name: m.samples[0].value for m in fleet(figures)}
    assert found == {
        "porttrap_fleet_connected": 0,
        "porttrap_fleet_outbox": 3,
        "porttrap_fleet_behind": 2,
        "porttrap_fleet_position": 40,
        "porttrap_fleet_receive_lag_seconds": 0.25,  # no publish lag yet: no series
        "porttrap_fleet_published": 7,
        "porttrap_fleet_received": 11,
        "porttrap_fleet_rows_refused": 1,
    }


def test_prefix_bans_are_counted_once_each_however_carved(tmp_path: Path) -> None:
    config = load_text(
        f'state_dir = "{tmp_path}"\n[traps]\ntcp = ["23"]\n[allow]\n'
        'addresses = ["198.51.100.77"]\n[ban.prefix]\nspread = 2\nv6_source = 64\n',
        None,
    )
    clock = FakeClock()
    made = make_shell(config, clock, MemoryStore(), MemoryFirewall(clock))
    made.feed(Started(frozenset(), []))
    try:
        run_on_loop(made, hit("198.51.100.1", 23), hit("198.51.100.2", 23), hit("2001:db8::1", 23))
        got = scrape(made)
        assert by("family", got["porttrap_prefix_bans_active"]) == {"ipv4": 1, "ipv6": 0}
        assert by("family", got["porttrap_set_elements"]) == {"ipv4": 8, "ipv6": 1}
    finally:
        made.writer.close()
