"""`porttrap bans --fleet`, `history --fleet ADDRESS` and `fleet status`: the fleet as the
shared log in PostgreSQL shows it (which host banned whom, and why), and this host's link."""

from __future__ import annotations

from typing import Any

from porttrap import log
from porttrap.cli import output
from porttrap.config.fleet import named
from porttrap.config.schema import Config, FleetConfig
from porttrap.daemon import control
from porttrap.errors import PorttrapError, UsageError
from porttrap.fleet import queries
from porttrap.model import IPNetwork


def fleet_config(cfg: Config) -> FleetConfig:
    """The `[fleet]` section with this host's name filled in."""
    if cfg.fleet is None:
        raise UsageError(
            f"{cfg.source or 'the configuration'} has no [fleet] section: this host is in no "
            "fleet (see the README, Running a fleet)"
        )
    try:
        fleet = named(cfg).fleet
    except ValueError as err:
        raise UsageError(str(err)) from None
    assert fleet is not None
    return fleet


def bans(cfg: Config, as_json: bool) -> int:
    with queries.connect(fleet_config(cfg)) as conn:
        rows = queries.active(conn)
    if as_json:
        output.emit_json([_ban_json(r) for r in rows])
    elif not rows:
        print("no active bans in the fleet")
    else:
        print(output.table([_ban_cells(r) for r in rows], _BAN_HEADER))
    return 0


def history(cfg: Config, target: IPNetwork, limit: int, as_json: bool) -> int:
    with queries.connect(fleet_config(cfg)) as conn:
        rows = queries.history(conn, target, limit)
    if as_json:
        output.emit_json(
            [{**_ban_json(r), "kind": r["kind"], "at": log.iso(r["at"])} for r in rows]
        )
    elif not rows:
        print(f"the fleet's log holds nothing about {target}")
    else:
        cells = [(log.iso(r["at"]), r["kind"], *_ban_cells(r)) for r in rows]
        print(output.table(cells, ("AT", "WHAT", *_BAN_HEADER)))
    return 0


def status(cfg: Config, as_json: bool) -> int:
    """This host's link as its daemon tells it, and the hosts as the database tells them;
    either may be missing (the daemon stopped, the database away), and says why."""
    fleet = fleet_config(cfg)
    found: dict[str, Any] = {"name": fleet.name, "url": fleet.url}
    try:
        found["link"] = control.request(cfg.control_socket, {"cmd": "fleet"})
    except PorttrapError as err:
        found["link"] = {"error": f"no answer from the daemon: {err}"}
    try:
        with queries.connect(fleet) as conn:
            found["hosts"] = [
                {**h, "last_seen": log.iso(h["last_seen"])} for h in queries.hosts(conn)
            ]
    except PorttrapError as err:
        found["hosts_error"] = str(err)
    if as_json:
        output.emit_json(found)
    else:
        print(_status_text(found))
    return 0


_BAN_HEADER = ("ADDRESS", "HOST", "BANNED AT", "EXPIRES", "COUNT", "REASON", "EVIDENCE")


def _ban_cells(row: dict[str, Any]) -> tuple[object, ...]:
    expires = row["expires_at"]
    return (
        _short(row["target"]),
        row["host"],
        log.iso(row["banned_at"]),
        "-" if row["banned_at"] is None else (log.iso(expires) or "permanent"),
        row["ban_count"],
        row["reason"],
        row["evidence"],
    )


def _ban_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": _short(row["target"]),
        "host": row["host"],
        "banned_at": log.iso(row["banned_at"]),
        "expires_at": log.iso(row["expires_at"]),
        "ban_count": row["ban_count"],
        "reason": row["reason"],
        "evidence": row["evidence"],
    }


def _short(target: str) -> str:
    """192.0.2.7/32 as 192.0.2.7, as `porttrap bans` shows single addresses."""
    address, _, bits = target.partition("/")
    return address if bits in ("32", "128") and (bits == "128") == (":" in address) else target


def _status_text(found: dict[str, Any]) -> str:
    link = found["link"]
    lines = [f"fleet host {found['name']} ({found['url']})"]
    if "error" in link and "connected" not in link:
        lines.append(f"  link: {link['error']}")
    else:
        state = "connected" if link["connected"] else f"NOT CONNECTED ({link['error']})"
        lines += [
            f"  link: {state}",
            f"  log position: {link['position']} of {link['end']} ({link['behind']} behind)",
            f"  outbox: {link['outbox']} waiting to be published; {link['published']} published",
            f"  received: {link['received']} rows, {link['adopted']} bans adopted, "
            f"{link['refused']} refused by this host's protection, {link['lifted']} lifted, "
            f"{link['refused_rows']} bad rows refused",
        ]
        if link.get("receive_lag") is not None:
            lines.append(f"  receive lag (last row): {link['receive_lag'] * 1000:.0f} ms")
    if "hosts" in found:
        cells = [(h["name"], h["last_seen"] or "never", h["position"], h["bans"], h["active"])
                 for h in found["hosts"]]  # fmt: skip
        lines += ["", output.table(cells, ("HOST", "LAST HEARTBEAT", "POSITION", "BANS", "ACTIVE"))]
    else:
        lines.append(f"  hosts: {found['hosts_error']}")
    return "\n".join(lines)
