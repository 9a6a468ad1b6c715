"""What the Prometheus endpoint shows: the daemon's state, read when Prometheus scrapes.

The collector asks for the core's `Snapshot` at scrape time and keeps nothing of its own, so a
reload that replaces the actions or the kernel settings is seen at the next scrape. It runs on
the daemon's event loop (see `daemon.metrics_server`): nothing changes what the snapshot refers
to while it is read.

Counters start at zero with the daemon; Prometheus's rate() takes restarts in its stride.
Sources are never a label: a flood of forged addresses would make a series each. The busiest
sources are in `porttrap top` and `porttrap report`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network
from operator import attrgetter
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from porttrap import __version__
from porttrap.core.snapshot import FleetFigures, Snapshot
from porttrap.core.stats import OTHER_PORT, Histogram, Stats
from porttrap.core.views import hold_status, kernel_status
from porttrap.model import Ban, Proto
from porttrap.policy.prefix import prefix_of

BAN_KINDS = ("temporary", "permanent")
EVIDENCE = ("verified", "unverified")
UNBAN_KINDS = ("lifted", "expired")
_EXPIRES, _REASON, _TARGET = attrgetter("expires_at"), attrgetter("reason"), attrgetter("target")
# porttrap_events_dropped_total{what}: what porttrap counted but let go under load.
DROPPED_HELP = (
    "Events porttrap let go under load, by what: hit_not_stored (hits counted and acted on but "
    "not written to the database: the disk fell behind), hit_sampled (hits counted and acted "
    "on but not written: over [store] hit_rate, a flood; every ban is written), action "
    "(commands and webhooks not run: "
    "more waited than [actions] queue), kernel_source_rate and kernel_total_rate (trap packets "
    "dropped but not reported: over [kernel] source_rate or event_rate), kernel_overrun "
    "(reports lost when the NFLOG socket's buffer overflowed)"
)


class SnapshotCollector(Collector):
    """Reads the daemon's `Snapshot` into metric families."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        kernel = kernel_status(snap.kernel, snap.io.reports) if snap.kernel is not None else None
        acts = snap.io.actions
        yield from info(snap)
        yield from hits(snap.stats)
        yield from bans(snap)
        yield from dropped(snap, acts, kernel)
        yield from latency(snap)
        yield from store(snap)
        yield from actions(acts)
        yield from kernel_sensor(kernel)
        yield from hold(hold_status(snap))
        yield from fleet(snap.io.fleet)


def registry_for(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry of its own (the client's global one would also export whatever else
    registers there), holding the collector of the daemon's snapshots."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshot))
    return registry


def info(snap: Snapshot) -> Iterator[Metric]:
    modes = snap.modes
    yield InfoMetricFamily(
        "porttrap",
        "The running porttrap: its version, firewall backend and trap mode per protocol.",
        value={
            "version": __version__,
            "backend": snap.io.backend,
            "tcp_mode": str(modes.of(Proto.TCP)),
            "udp_mode": str(modes.of(Proto.UDP)),
        },
    )
    yield GaugeMetricFamily(
        "porttrap_start_time_seconds",
        "When the daemon started, in seconds since the epoch (counters start at zero then).",
        value=snap.started_at,
    )
    sockets = GaugeMetricFamily(
        "porttrap_trap_sockets",
        "Trap sockets of connect mode, by protocol and state: set (listening) or skipped (the "
        "port was taken or refused; check-config and the start log say why).",
        labels=["proto", "state"],
    )
    report = snap.io.traps
    for state, traps in (("set", report.set), ("skipped", report.skipped)):
        per_proto = Counter(trap.proto.value for trap in traps)
        for proto in Proto:
            sockets.add_metric([proto.value, state], per_proto[proto.value])
    yield sockets


def hits(stats: Stats) -> Iterator[Metric]:
    family = CounterMetricFamily(
        "porttrap_hits",
        'Trap hits, by protocol, trap port ("other" once 1024 distinct ports were counted), '
        "kind of probe (connect, udp, syn, fin, null, xmas, ...) and what the policy made of it "
        "(counted, banned, already-banned, allowed, own-address, client, logged, not-unicast).",
        labels=["proto", "port", "kind", "outcome"],
    )
    for (proto, port, kind, outcome), count in sorted(stats.hits.items()):
        label = "other" if port == OTHER_PORT else str(port)
        family.add_metric([proto, label, kind, outcome], count)
    yield family


def bans(snap: Snapshot) -> Iterator[Metric]:
    stats = snap.stats
    made = CounterMetricFamily(
        "porttrap_bans",
        "Bans made since the daemon started, by kind (temporary or permanent) and by what they "
        "rest on: verified (a completed handshake, an admin) or unverified (probes or "
        "datagrams, which can be forged: never permanent, never past unverified_max_time).",
        labels=["kind", "evidence"],
    )
    for kind in BAN_KINDS:
        for evidence in EVIDENCE:
            made.add_metric([kind, evidence], stats.bans_by[(kind, evidence)])
    yield made
    lifted = CounterMetricFamily(
        "porttrap_unbans",
        "Bans ended since the daemon started, by how: lifted (porttrap unban, the allow list, "
        "the host's own address) or expired.",
        labels=["how"],
    )
    for how in UNBAN_KINDS:
        lifted.add_metric([how], stats.unbans[how])
    yield lifted
    yield from _active(snap)


def _active(snap: Snapshot) -> Iterator[Metric]:
    kinds, sets = tally(snap.active, snap.enforced)
    unverified = sum(1 for ban in snap.active if not ban.verified)  # never permanent
    family = GaugeMetricFamily(
        "porttrap_bans_active",
        "Bans in force now, by kind (temporary or permanent) and evidence (verified or "
        "unverified).",
        labels=["kind", "evidence"],
    )
    family.add_metric(["temporary", "verified"], kinds["temporary"] - unverified)
    family.add_metric(["temporary", "unverified"], unverified)
    family.add_metric(["permanent", "verified"], kinds["permanent"])
    family.add_metric(["permanent", "unverified"], 0)
    yield family
    elements = GaugeMetricFamily(
        "porttrap_set_elements",
        "Bans the daemon keeps in the kernel's ban sets, by address family (ipv4: sets ban_v4 "
        "and ban_net_v4; ipv6: ban_v6 and ban_net_v6). Bans of a protocol that responds with "
        '"command" are active but in no set.',
        labels=["family"],
    )
    for family_name, count in sets.items():
        elements.add_metric([family_name], count)
    yield elements
    yield _prefixes(snap.active)
    yield GaugeMetricFamily(
        "porttrap_sources_watched",
        "Sources whose recent hits the policy remembers, to count them toward a ban.",
        value=snap.watched,
    )
    yield CounterMetricFamily(
        "porttrap_sources_evicted",
        "Watched sources forgotten before their window closed, to keep the memory bounded "
        "(a flood of new, probably forged, sources).",
        value=snap.sources_evicted,
    )
    yield CounterMetricFamily(
        "porttrap_ban_history_evicted",
        "Addresses whose history of bans on unverified evidence was forgotten to keep the "
        "memory bounded (the 65,536 banned most recently are kept): their next such ban "
        "starts from [ban] time again.",
        value=snap.past_evicted,
    )


def _prefixes(active: Sequence[Ban]) -> Metric:
    """Prefix bans in force, each counted once however many CIDRs its carve-outs left."""
    found = {prefix for ban in active if (prefix := prefix_of(ban.reason)) is not None}
    family = GaugeMetricFamily(
        "porttrap_prefix_bans_active",
        "Prefix bans in force now ([ban.prefix] spread: a network several banned sources came "
        "from), by address family; one however many CIDRs its carve-outs left.",
        labels=["family"],
    )
    for version in (4, 6):
        family.add_metric([f"ipv{version}"], sum(1 for p in found if p.version == version))
    return family


def tally(
    active: Sequence[Ban], enforced: Callable[[Ban], bool]
) -> tuple[dict[str, int], dict[str, int]]:
    """Active bans by kind, and those in the kernel by address family. It runs on the loop at
    each scrape, so its passes over the bans are C-level map/Counter ones (100,000 bans: see
    bench/metrics_scrape.py). Whether a ban belongs in the kernel depends on its reason alone
    (Policy.enforced), so it is asked once per reason."""
    permanent = list(map(_EXPIRES, active)).count(None)
    by_reason = dict(zip(map(_REASON, active), active, strict=True))  # a ban of each reason
    kept = {reason for reason, ban in by_reason.items() if enforced(ban)}
    in_kernel = active if len(kept) == len(by_reason) else [b for b in active if b.reason in kept]
    families = Counter(map(type, map(_TARGET, in_kernel)))
    sets = {"ipv4": families[IPv4Network], "ipv6": families[IPv6Network]}
    return {"temporary": len(active) - permanent, "permanent": permanent}, sets


def dropped(
    snap: Snapshot, acts: Mapping[str, Any], kernel: Mapping[str, Any] | None
) -> Iterator[Metric]:
    family = CounterMetricFamily("porttrap_events_dropped", DROPPED_HELP, labels=["what"])
    family.add_metric(["hit_not_stored"], snap.hits_not_stored)
    family.add_metric(["hit_sampled"], snap.hits_sampled)
    family.add_metric(["action"], acts["dropped"])
    if kernel is not None:
        events = kernel["events"]
        family.add_metric(["kernel_source_rate"], events["over_source_rate"])
        family.add_metric(["kernel_total_rate"], events["over_total_rate"])
        family.add_metric(["kernel_overrun"], events["lost_overruns"])
    yield family


def latency(snap: Snapshot) -> Iterator[Metric]:
    yield histogram(
        "porttrap_decision_seconds",
        "Seconds from a hit's arrival in the daemon to the policy's decision on it.",
        snap.io.decision or Histogram(),
    )
    yield histogram(
        "porttrap_ban_to_kernel_seconds",
        "Seconds from the hit that made a ban to that ban being in the kernel firewall.",
        snap.io.to_kernel or Histogram(),
    )


def histogram(name: str, documentation: str, source: Histogram) -> HistogramMetricFamily:
    """Stats' per-bucket counts made cumulative, as Prometheus wants them."""
    buckets, total = [], 0
    for bound, count in zip((*source.bounds, float("inf")), source.buckets, strict=True):
        total += count
        buckets.append((_le(bound), float(total)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=source.total)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def store(snap: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "porttrap_store_backlog",
        "Database writes waiting for the writer thread; hits give way above 20 (see "
        'porttrap_events_dropped_total{what="hit_not_stored"}), bans never do.',
        value=snap.io.store_backlog,
    )
    yield CounterMetricFamily(
        "porttrap_store_write_failures",
        "Database writes that failed (the log says why: a full disk, a locked file ...).",
        value=snap.io.store_failures,
    )
    yield GaugeMetricFamily(
        "porttrap_store_rows_skipped_at_start",
        "Database rows the start could not read (damaged, edited, or out of bounds), whose "
        "bans were not restored; the log names each (event=store-bad-row).",
        value=snap.io.restore_skipped,
    )


def fleet(figures: FleetFigures | None) -> Iterator[Metric]:
    """The link to the fleet's database (nothing when this host is in no fleet)."""
    if figures is None:
        return
    yield GaugeMetricFamily(
        "porttrap_fleet_connected",
        "1 while the link to the fleet's database is up; 0 while this host protects itself "
        "alone (its bans wait in the outbox).",
        value=int(figures.connected),
    )
    yield GaugeMetricFamily(
        "porttrap_fleet_outbox", "This host's bans and unbans waiting to be published.",
        value=figures.outbox,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "porttrap_fleet_behind", "Rows of the fleet's log not yet read here.", value=figures.behind
    )
    yield GaugeMetricFamily(
        "porttrap_fleet_position", "The last row of the fleet's log applied here.",
        value=figures.position,
    )  # fmt: skip
    for name, what, value in (
        ("publish_lag", "the last published rows waited in the outbox", figures.publish_lag),
        ("receive_lag", "from the last row's insert (database clock) to its read here",
         figures.receive_lag),
    ):  # fmt: skip
        if value is not None:
            yield GaugeMetricFamily(
                f"porttrap_fleet_{name}_seconds", f"Seconds {what}.", value=value
            )
    for name, what, value in (
        ("published", "Rows this host published to the fleet's log.", figures.published),
        ("received", "Rows of other hosts read from the fleet's log.", figures.received),
        ("rows_refused", "Hostile or malformed rows of the log, never applied (the log names "
         "each: event=fleet-row-refused).", figures.refused_rows),
    ):  # fmt: skip
        yield CounterMetricFamily(f"porttrap_fleet_{name}", what, value=value)


def actions(status: Mapping[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "porttrap_actions_started",
        "Commands and webhooks started ([actions]).",
        value=status["run"],
    )
    failed = CounterMetricFamily(
        "porttrap_actions_failed",
        "Commands and webhooks that failed, by why: error (an exit status or HTTP error) or "
        "timeout.",
        labels=["why"],
    )
    failed.add_metric(["error"], status["failed"])
    failed.add_metric(["timeout"], status["timed_out"])
    yield failed
    yield GaugeMetricFamily(
        "porttrap_actions_waiting",
        "Commands and webhooks queued for a free slot ([actions] max_running).",
        value=status["waiting"],
    )


HOLD_RESULTS = ("queued", "let_through", "hidden", "suspect", "over_rate", "idle", "failed_open")


def hold(status: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The hold of new sources' first SYNs (docs/hold.md); no samples when it is off."""
    syns = CounterMetricFamily(
        "porttrap_hold_syns",
        "New sources' SYNs to served ports, by what the hold did: queued (sent to the "
        "daemon), let_through (after the hold), hidden (dropped: the source touched a trap "
        "meanwhile), suspect (dropped in the kernel: the source sent a scanner's discovery "
        "probe, an ACK no connection has or an ICMP timestamp request), and passed unheld: "
        "over_rate ([kernel] hold_rate), idle (the daemon not ready or stalled), failed_open "
        "(the queue or its socket full).",
        labels=["result"],
    )
    waiting = GaugeMetricFamily("porttrap_hold_waiting", "SYNs held now.")
    remembered = GaugeMetricFamily(
        "porttrap_hold_remembered", "Sources let through lately, not held again."
    )
    if status is not None:
        for result in HOLD_RESULTS:
            syns.add_metric([result], status[result])
        waiting.add_metric([], status["held_now"])
        remembered.add_metric([], status["remembered"])
    yield from (syns, waiting, remembered)


def kernel_sensor(kernel: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The kernel sensor's reports and first-packet block sets (stealth and advanced modes);
    the families are there without samples when the sensor does not run."""
    received = CounterMetricFamily(
        "porttrap_kernel_reports",
        "Trap packets the kernel reported to the daemon (NFLOG) and the daemon received.",
    )
    fill = GaugeMetricFamily(
        "porttrap_kernel_block_fill",
        "Sources in each first-packet block set generation (a or b), estimated from the "
        "kernel's insertion counts (an upper bound); porttrap rotates generations at half of "
        "porttrap_kernel_block_capacity.",
        labels=["generation"],
    )
    capacity = GaugeMetricFamily(
        "porttrap_kernel_block_capacity",
        "Sources each first-packet block set generation can hold ([kernel] block_size).",
    )
    rotations = CounterMetricFamily(
        "porttrap_kernel_block_rotations",
        "Block set rotations: under a flood of new sources the oldest blocks gave way.",
    )
    quiet = CounterMetricFamily(
        "porttrap_kernel_quiet_drops",
        "Non-SYN TCP packets to ports nothing serves, dropped without an answer ([kernel] "
        "quiet), so that no RST tells a port's state.",
    )
    redirects = CounterMetricFamily(
        "porttrap_kernel_redirects",
        "A recent client's SYNs to TCP trap ports: sent to the catch-all port ([kernel] "
        "client_trap_port) to prove the address (redirected), or over its per-source limit "
        "(over_limit: reported as the client's probes instead).",
        labels=["result"],
    )
    if kernel is not None:
        block = kernel["block"]
        redirect = kernel["redirect"]
        redirects.add_metric(["redirected"], redirect["redirected"])
        redirects.add_metric(["over_limit"], redirect["over_limit"])
        received.add_metric([], kernel["events"]["received"])
        for generation, estimate in sorted(block["fill"].items()):
            fill.add_metric([generation], estimate)
        capacity.add_metric([], block["size"])
        rotations.add_metric([], block["rotations"])
        quiet.add_metric([], kernel["quiet_drops"])
    yield from (received, fill, capacity, rotations, quiet, redirects)
