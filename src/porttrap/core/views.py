"""The answers of `status` and `top`, and bans as JSON: pure functions of a `Snapshot`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from porttrap import __version__
from porttrap.core.snapshot import KernelView, ReportFigures, Snapshot
from porttrap.core.stats import OTHER_PORT
from porttrap.model import Ban, IPAddress, IPNetwork, TrapReport, as_network, show
from porttrap.sensorspec import GENERATIONS
from porttrap.units import iso


def ban_json(ban: Ban) -> dict[str, Any]:
    return {
        "address": show(ban.target),
        "banned_at": iso(ban.banned_at),
        "expires_at": iso(ban.expires_at),
        "permanent": ban.permanent,
        "ban_count": ban.ban_count,
        "reason": ban.reason,
        "evidence": str(ban.evidence),
    }


def traps_json(report: TrapReport) -> dict[str, Any]:
    return {
        "set": [asdict(t) for t in report.set],
        "skipped": [asdict(t) for t in report.skipped],
    }


def status(snapshot: Snapshot, pid: int) -> dict[str, Any]:
    io = snapshot.io
    return {
        "running": True,
        "pid": pid,
        "version": __version__,
        "started_at": iso(snapshot.started_at),
        "config": str(snapshot.source) if snapshot.source else None,
        "backend": io.backend,
        "traps": traps_json(io.traps),
        "kernel": kernel_status(snapshot.kernel, io.reports) if snapshot.kernel else None,
        "hold": hold_status(snapshot),
        "actions": dict(io.actions) if io.actions_enabled else None,
        "bans": {
            "active": len(snapshot.active),
            "permanent": snapshot.permanent,
            "skipped_at_start": io.restore_skipped,
        },
        "hits": {
            "total": snapshot.stats.total_hits,
            **snapshot.stats.by_outcome(),
            "not_stored": snapshot.hits_not_stored,
            "sampled": snapshot.hits_sampled,
        },
        "store": {
            "ok": snapshot.store_error is None,
            "error": snapshot.store_error,
            "failing_since": iso(snapshot.store_failing_since),
            "backlog": io.store_backlog,
            "failed_writes": io.store_failures,
        },
        "clock_jumped": round(snapshot.clock_skew, 1),
        "sources": {
            "watched": snapshot.watched,
            "evicted": snapshot.sources_evicted,
            "history_evicted": snapshot.past_evicted,
        },
    }


def kernel_status(kernel: KernelView, reports: ReportFigures | None) -> dict[str, Any]:
    """The kernel sensor's part of `status` (and of the metrics)."""
    counters, settings = kernel.counters, kernel.settings
    reports = reports if reports is not None else ReportFigures()
    return {
        "modes": {str(p): str(m) for p, m in kernel.modes.items()},
        "served": {str(p): sorted(ports) for p, ports in kernel.served.items()},
        "block": {
            "enabled": settings.block,
            "size": settings.block_size,
            "time": settings.block_time,
            "current": kernel.generation,
            "fill": {g: kernel.fill.get(g, 0) for g in GENERATIONS},
            "rotations": kernel.rotations,
        },
        "clients": {"size": settings.client_size, "time": settings.client_time},
        "events": {
            "reported": counters.get("reported", 0),
            "over_source_rate": counters.get("over_source", 0),
            "over_total_rate": counters.get("over_rate", 0),
            "received": reports.received,
            "lost_overruns": reports.overruns,
            "malformed": reports.malformed + reports.unreadable,
            "foreign": reports.foreign,
        },
        "quiet_drops": counters.get("quiet", 0),
        "redirect": {
            "port": settings.client_trap_port,
            "redirected": counters.get("redirected", 0),
            "over_limit": counters.get("over_redirect", 0),
        },
    }


def hold_status(snapshot: Snapshot) -> dict[str, Any] | None:
    """The hold's part of `status` and of the metrics (docs/hold.md); None when it is off."""
    hold, kernel = snapshot.hold, snapshot.kernel
    if hold is None or kernel is None:
        return None
    settings, counters, queue = kernel.settings, kernel.counters, snapshot.io.queue
    return {
        "hold_ms": round(settings.hold * 1000, 3),
        "queue": settings.hold_queue,
        "bound": queue is not None,
        "queued": hold.queued,
        "held_now": hold.held,
        "let_through": hold.released,
        "hidden": hold.hidden,
        "suspect": counters.get("hold_suspect", 0),
        "remembered": hold.remembered,
        "over_rate": counters.get("hold_over", 0),
        "idle": counters.get("hold_idle", 0),
        "failed_open": hold.failed_open,
        "refused": 0 if queue is None else queue.refused,
        "overruns": 0 if queue is None else queue.overruns,
    }


def top(snapshot: Snapshot, limit: int) -> dict[str, Any]:
    """What `porttrap top` shows: totals, the most hit ports, the busiest sources, the newest
    bans, `limit` rows each."""
    stats, active = snapshot.stats, snapshot.active
    banned = {ban.target: ban for ban in active}
    newest = sorted(active, key=lambda b: b.banned_at, reverse=True)[:limit]
    return {
        "now": iso(snapshot.now),
        "started_at": iso(snapshot.started_at),
        "hits": {"total": stats.total_hits, **stats.by_outcome()},
        "bans": {
            "active": len(active),
            "permanent": snapshot.permanent,
            "made": dict(stats.bans),
        },
        "ports": [
            {"proto": proto, "port": None if port == OTHER_PORT else port, "hits": hits}
            for proto, port, hits in stats.top_ports(limit)
        ],
        "sources": [
            {
                "address": str(address),
                "hits": source.hits,
                "last_seen": iso(source.last_seen),
                "last_port": source.last_port,
                "last_proto": source.last_proto,
                "banned": _ban_state(banned, address),
            }
            for address, source in stats.top_sources(limit)
        ],
        "recent_bans": [ban_json(ban) for ban in newest],
    }


def _ban_state(banned: dict[IPNetwork, Ban], address: IPAddress) -> dict[str, Any] | None:
    """The ban on exactly this address, if any (bans on whole networks are not looked up)."""
    ban = banned.get(as_network(address))
    return None if ban is None else ban_json(ban)
