"""Fleet catch-up: a host joining a fleet that holds 100,000 active bans, from its link being
up to all of them in its kernel (issue 14: under 2 s).

The admin inserts the bans into porttrap.log in one COPY, as the rows of host web-1 (which
never runs): 100,000 distinct addresses of 2001:db8:c::/48, each a trap's verified ban of
now, for 1 d. Then host web-2 starts for the first time (no position: it reads the fleet's
snapshot). The daemon logs JSON with millisecond timestamps: `fleet-connected` (the link is
up; the snapshot query follows), and `applied changes=N kernel_ms=` when a kernel
transaction returns. The time is from the first to the `applied` that brings the count to
100,000; the set is then counted (`nft -j list set`) to check that all are there.

The pieces, timed again outside the daemon (in this process, one after the other): the
snapshot query as web-2 over TLS (the daemon's own SQL, fetched with psycopg), rows.parse of
every row, and the core adopting them (FleetSide.received with a Policy made from web-2's
configuration). The kernel transaction is the daemon's own `kernel_ms`.
With --profile the daemon runs under cProfile and the top functions are printed. Run as root:

    .venv/bin/python bench/fleet_catchup.py [--bans 100000] [--profile] [--quick]
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import pstats
import subprocess  # noqa: TID251 - bench helper
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from common import Steal, machine, wall
from daemon_env import PORTTRAP
from fleet_common import JSON_LOG, cpu_seconds, fleet_lab
from fleet_env import FleetLab, Host

from porttrap.config import loader
from porttrap.core.core import protection
from porttrap.core.events import FleetReceived
from porttrap.core.fleet import FleetSide
from porttrap.fleet import link, rows
from porttrap.policy.engine import Policy

PATIENCE = 120.0
COPY = (
    "COPY porttrap.log (host, kind, target, ban_id, banned_at, expires_at, ban_count, reason,"
    " evidence) FROM STDIN"
)


def insert_bans(lab: FleetLab, host: str, count: int) -> float:
    """`count` active bans as `host`'s rows, in one COPY; the seconds it took."""
    base = int(ipaddress.IPv6Address("2001:db8:c::"))
    now = wall()
    started = time.perf_counter()
    with lab.cluster.admin() as conn, conn.cursor() as cur, cur.copy(COPY) as copy:
        for i in range(1, count + 1):
            address = f"{ipaddress.IPv6Address(base + i)}/128"
            copy.write_row((host, "ban", address, f"b{i}", now, now + 86400, 1,
                            "trap:tcp/2323", "verified"))  # fmt: skip
    return time.perf_counter() - started


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def at(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"]).timestamp()


def wait_all_applied(host: Host, log: Path, count: int) -> dict[str, Any]:
    """The `fleet-connected` event and the `applied` ones after it, until `count` changes."""
    deadline = time.perf_counter() + PATIENCE
    while time.perf_counter() < deadline:
        assert host.daemon is not None
        if host.daemon.poll() is not None:
            raise RuntimeError(f"{host.name} exited:\n{host.log_text()}")
        found = events(log)
        connected = [r for r in found if r["event"] == "fleet-connected"]
        snapshot = any(r["event"] == "fleet-snapshot" for r in found)
        if connected and snapshot:
            after = [r for r in found if r["event"] == "applied" and at(r) >= at(connected[0])]
            if sum(int(r["fields"]["changes"]) for r in after) >= count:
                return {"connected": connected[0], "applied": after}
        time.sleep(0.1)
    raise RuntimeError(f"{count} bans not applied on {host.name} within {PATIENCE} s")


def kernel_count(host: Host) -> int:
    out = host.netns.run(["nft", "-j", "list", "set", "inet", "porttrap", "ban_v6"], timeout=60)
    found = [item["set"] for item in json.loads(out)["nftables"] if "set" in item]
    return len(found[0].get("elem", [])) if found else 0


def pieces(lab: FleetLab, host: Host) -> dict[str, float]:
    """The daemon's snapshot query as `host` over TLS, and parse of its rows, timed here."""
    password = (host.dir / "fleet.password").read_text().strip()
    url = lab.cluster.url_for(f"porttrap_host_{host.name.replace('-', '_')}")
    with lab.atk.netns.inside():  # the socket is made in the scanner's namespace
        conn = psycopg.connect(url, password=password, autocommit=True)
    with conn:
        top = conn.execute("SELECT max(id) FROM porttrap.log").fetchone()
        now = wall()
        params = {"top": top[0] if top else 0, "now": now, "since": now - 90 * 86400,
                  "after": 0, "page": 10**9}  # fmt: skip
        started = time.perf_counter()
        found = conn.execute(link._SNAPSHOT, params).fetchall()
        fetched = time.perf_counter()
    parsed = [rows.parse(row) for row in found]
    done = time.perf_counter()
    entries = tuple(p for p in parsed if not isinstance(p, str))
    assert len(entries) == len(found)
    config = loader.load(host.config)
    policy = Policy(config.ban, config.traps, protection(config))
    adopting = time.perf_counter()
    changes, _ = FleetSide(config.fleet).received(policy, FleetReceived(entries), wall())
    adopted = time.perf_counter()
    assert len(changes) == len(found)
    return {"sql_fetch_s": round(fetched - started, 3), "parse_s": round(done - fetched, 3),
            "core_adopt_s": round(adopted - adopting, 3), "rows": len(found)}  # fmt: skip


def start(host: Host, profile: Path | None) -> None:
    """As Host.start (the daemon in its namespace), under cProfile when `profile` is set."""
    if profile is None:
        host.start(wait=False)
        return
    wrap = ["-m", "cProfile", "-o", str(profile)]
    argv = [sys.executable, *wrap, *PORTTRAP[1:], "run", "-c", str(host.config)]
    with host.log.open("a") as out:
        host.daemon = subprocess.Popen(["ip", "netns", "exec", host.netns.name, *argv],
                                       stdout=out, stderr=out, text=True)  # fmt: skip
    host.netns.processes.append(host.daemon)


def top_functions(profile: Path, count: int = 25) -> str:
    out = io.StringIO()
    pstats.Stats(str(profile), stream=out).sort_stats("cumulative").print_stats(count)
    pstats.Stats(str(profile), stream=out).sort_stats("tottime").print_stats(count)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bans", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true", help="run the daemon under cProfile")
    parser.add_argument("--quick", action="store_true", help="10,000 bans")
    args = parser.parse_args()
    if args.quick:
        args.bans = 10_000
    result: dict[str, Any] = {"benchmark": "fleet catch-up", "machine": machine(),
                              "bans": args.bans}  # fmt: skip
    with fleet_lab() as lab, Steal() as steal:
        owner, joining = lab.add(2, start=False)
        log = joining.dir / "events.json"
        joining.config.write_text(joining.config.read_text() + JSON_LOG.format(path=log))
        result["copy_s"] = round(insert_bans(lab, owner.name, args.bans), 2)
        profile = joining.dir / "daemon.prof" if args.profile else None
        start(joining, profile)
        seen = wait_all_applied(joining, log, args.bans)
        connected, applied = at(seen["connected"]), seen["applied"]
        result["connected_to_all_in_kernel_s"] = round(at(applied[-1]) - connected, 3)
        result["kernel_transactions_ms"] = [r["fields"]["kernel_ms"] for r in applied]
        snapshot = [r for r in events(log) if r["event"] == "fleet-snapshot"]
        result["snapshot"] = snapshot[0]["fields"] if snapshot else None
        result["connected_to_snapshot_read_s"] = (
            round(at(snapshot[0]) - connected, 3) if snapshot else None
        )
        result["in_kernel"] = kernel_count(joining)
        assert joining.daemon is not None
        result["daemon_cpu_s"] = round(cpu_seconds(joining.daemon.pid), 2)
        result["pieces_outside_the_daemon"] = pieces(lab, joining)
        joining.stop()
        text = "" if profile is None else top_functions(profile)
    result["cpu_steal_percent"] = steal.percent
    print(json.dumps(result, indent=2))
    print(text, end="")


if __name__ == "__main__":
    main()
