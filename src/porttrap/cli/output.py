"""How results look on a terminal, and as JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from porttrap import log
from porttrap.model import Ban, show
from porttrap.store.base import HistoryEntry


def emit_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [list(map(str, header))] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def bans_table(bans: Sequence[Ban]) -> str:
    if not bans:
        return "no active bans"
    rows = [
        (
            show(b.target),
            log.iso(b.banned_at),
            log.iso(b.expires_at) or "permanent",
            b.ban_count,
            b.reason,
            b.evidence,
        )
        for b in bans
    ]
    return table(rows, ("ADDRESS", "BANNED AT", "EXPIRES", "COUNT", "REASON", "EVIDENCE"))


def history_json(entry: HistoryEntry) -> dict[str, Any]:
    base: dict[str, Any] = {"at": log.iso(entry.at), "what": entry.what}
    if entry.hit is not None:
        h = entry.hit
        base.update(
            address=str(h.source),
            source_port=h.source_port,
            local=str(h.local),
            port=h.port,
            proto=str(h.proto),
            kind=h.kind,
            outcome=str(entry.outcome) if entry.outcome else None,
        )
    if entry.ban is not None:
        b = entry.ban
        base.update(
            address=show(b.target),
            expires_at=log.iso(b.expires_at),
            permanent=b.permanent,
            ban_count=b.ban_count,
            reason=b.reason,
            evidence=str(b.evidence),
        )
    if entry.what == "unban":
        base["reason"] = entry.unban_reason
    return base


def history_table(entries: Sequence[HistoryEntry]) -> str:
    if not entries:
        return "no history"
    rows = []
    for entry in entries:
        item = history_json(entry)
        if entry.what == "hit":
            detail = f"{item['proto']}/{item['port']} {item['kind']} -> {item['outcome']}"
        elif entry.what == "ban":
            until = item["expires_at"] or "permanent"
            detail = (
                f"ban #{item['ban_count']} until {until} ({item['reason']}, "
                f"{item['evidence']} evidence)"
            )
        else:
            detail = f"unban ({item['reason']})"
        rows.append((item["at"], item["what"], item.get("address"), detail))
    return table(rows, ("TIME", "EVENT", "ADDRESS", "DETAIL"))


def status_text(status: dict[str, Any]) -> str:
    if not status.get("running"):
        lines = ["porttrap is not running"]
    else:
        lines = [
            f"porttrap is running (pid {status['pid']}, since {status['started_at']}, "
            f"backend {status['backend']})"
        ]
        traps = status["traps"]
        lines.append(f"traps: {len(traps['set'])} set, {len(traps['skipped'])} skipped")
        lines += [
            f"  skipped {t['proto']}/{t['port']} on {t['address']}: {t['reason']}"
            for t in traps["skipped"]
        ]
        lines.append(f"hits since start: {status['hits']['total']}")
        store = status.get("store") or {}
        if store and not store.get("ok", True):
            lines.append(
                f"STORE FAILING since {store['failing_since']}: {store['error']} "
                f"({store['backlog']} writes waiting; bans are in the kernel and memory, "
                "and kept from the kernel at a restart)"
            )
        if status.get("clock_jumped"):
            lines.append(f"wall clock jumped by {status['clock_jumped']} s since the start")
        if status.get("kernel"):
            lines += kernel_text(status["kernel"])
        if status.get("hold"):
            lines += hold_text(status["hold"])
        if status.get("actions"):
            lines += actions_text(status["actions"])
    bans = status.get("bans")
    if bans:
        lines.append(f"bans: {bans['active']} active, {bans['permanent']} of them permanent")
        if skipped := bans.get("skipped_at_start"):
            lines.append(
                f"  {skipped} database rows could not be read at start, and their bans were "
                "not restored: see the log (event=store-bad-row)"
            )
    return "\n".join(lines)


def hold_text(hold: dict[str, Any]) -> list[str]:
    """The hold's part of `porttrap status` (docs/hold.md)."""
    queue = f"queue {hold['queue']}" if hold["bound"] else "QUEUE NOT BOUND: nothing is held"
    return [
        f"  hold: new sources' first SYNs to served ports wait {hold['hold_ms']:g} ms ({queue}): "
        f"{hold['queued']} held, {hold['let_through']} let through, {hold['hidden']} hidden "
        f"(dropped: the source touched a trap), {hold['suspect']} dropped as a scanner's "
        f"(its discovery probes), {hold['held_now']} waiting now",
        f"    passed unheld: {hold['over_rate']} over hold_rate, {hold['idle']} while the daemon "
        f"was not ready, {hold['failed_open']} with the queue full",
    ]


def actions_text(actions: dict[str, Any]) -> list[str]:
    """The actions' part of `porttrap status`: commands and webhooks, hosts.deny."""
    lines = [
        f"actions: {actions['run']} run ({actions['failed']} failed, {actions['timed_out']} "
        f"timed out), {actions['running']} running, {actions['waiting']} waiting, "
        f"{actions['dropped']} dropped (queue full)"
    ]
    deny = actions.get("hosts_deny")
    if deny:
        failed = f", {deny['failed']} failed writes" if deny["failed"] else ""
        lines.append(f"  hosts.deny {deny['file']}: {deny['lines']} lines of porttrap's{failed}")
    return lines


def kernel_text(kernel: dict[str, Any]) -> list[str]:
    """The kernel sensor's part of `porttrap status`: modes, block sets, reports."""
    modes = kernel["modes"]
    block, events = kernel["block"], kernel["events"]
    served = " ".join(
        f"{proto}/{port}" for proto, ports in kernel["served"].items() for port in ports
    )
    lines = [
        f"kernel sensor: tcp {modes['tcp']}, udp {modes['udp']}; served (never trapped): "
        f"{served or 'nothing'}"
    ]
    if block["enabled"]:
        fill = block["fill"][block["current"]]
        lines.append(
            f"  first-packet blocks: about {fill} of {block['size']} in the current set, "
            f"{block['rotations']} rotations (each drops the oldest blocks)"
        )
    lines.append(
        f"  reports: {events['received']} received; not sent: {events['over_source_rate']} "
        f"over the per-source rate, {events['over_total_rate']} over the total rate; "
        f"lost: {events['lost_overruns']} overruns"
    )
    redirect = kernel["redirect"]
    if redirect["port"]:
        lines.append(
            f"  clients' SYNs to traps: {redirect['redirected']} sent to the catch-all port "
            f"{redirect['port']}, {redirect['over_limit']} over its per-source limit"
        )
    return lines
