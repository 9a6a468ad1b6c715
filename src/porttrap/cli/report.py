"""`porttrap report`: one self-contained HTML page of hits and bans over a period, from the
database, opened read-only (it works whether the daemon runs or not, and never writes it)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from porttrap.clock import SystemClock
from porttrap.config import loader as config_mod
from porttrap.config.schema import Config
from porttrap.errors import PorttrapError, UsageError
from porttrap.report import data, html
from porttrap.report.figures import Period
from porttrap.store import open_store
from porttrap.units import MAX_LOOKBACK, parse_duration

Common = Callable[[argparse.ArgumentParser], None]

_DESCRIPTION = """\
Write one self-contained HTML page about what porttrap saw over a period: hits and bans over
time, the most hit ports, the scan classes (connect, syn, fin, null, xmas, ack, udp ...) and
the busiest sources with every ban they got and whether they are banned now. The page needs no
network to view (inline CSS and SVG, no script) and can be mailed or archived as it is.

The database (state_dir/porttrap.db of the config) is opened read-only: the report works
whether the daemon runs or not, and never changes it. Times are UTC.

With --fleet the page covers the whole fleet instead: every host's bans from the fleet's
shared log in PostgreSQL (the [fleet] settings: url, password_file), read in a read-only
session, with the newest bans listed by host. The shared log holds bans only, so a fleet
report has no hits, ports or sources: each host's own report has those."""

_EPILOG = """\
examples:
  porttrap report -o report.html              the last 7 days
  porttrap report --since 1d -o today.html    the last 24 hours, by the hour
  porttrap report --since 30d --until 2026-12-01 -o november.html
  porttrap report --since 90d --top 50 > quarter.html
  porttrap report --database copy-of-porttrap.db -o report.html
  porttrap report --fleet --since 30d -o fleet.html

The chart buckets follow the period: hourly up to 2 days, 6-hourly up to 2 weeks, daily up to
120 days, weekly beyond. Hits older than hit_retention (90d by default), and the oldest
beyond hit_rows (5 million), are pruned by the daemon, so a longer --since shows bans only for
its start.

Without -o the page goes to stdout, so that it can be piped (to mail, ssh, a web root); on a
terminal it is refused rather than printed. -o writes a temporary file beside FILE and renames
it over FILE: a reader (a web server, a browser) never sees half a report."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Common) -> None:
    """The `report` command."""
    parser = sub.add_parser(
        "report",
        help="write an HTML report (charts of hits, bans, ports, scan classes, top sources)",
        description=_DESCRIPTION,
        epilog=_EPILOG,  # reflowed, examples kept as written: cli.helptext.finish
    )
    common(parser)
    parser.add_argument(
        "--since",
        default="7d",
        metavar="DURATION",
        help="how far back the report goes from --until: 12h, 7d, 2w, 90d ... (default: 7d)",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        help="end of the period, as 2026-12-01 or 2026-12-01T08:00 (UTC unless an offset such "
        "as +01:00 is given; default: now)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write the page to FILE, replacing it atomically (default: stdout)",
    )
    parser.add_argument(
        "--top",
        type=_positive,
        default=20,
        metavar="N",
        help="how many ports and sources (with --fleet: bans) to list (default: 20)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--database",
        type=Path,
        metavar="FILE",
        help="read this porttrap database instead of state_dir/porttrap.db of the config",
    )
    source.add_argument(
        "--fleet",
        action="store_true",
        help="report over the whole fleet: every host's bans from the fleet's database",
    )
    parser.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    if args.output is None and sys.stdout.isatty():
        raise UsageError(
            "the report is an HTML page: give -o FILE (e.g. -o report.html) or redirect "
            "stdout to a file"
        )
    cfg = config_mod.load(args.config)
    now = SystemClock().now()
    period = _period(args.since, args.until, now)
    if args.fleet:
        found = _fleet_report(cfg, period, now, args.top)
    else:
        retention = cfg.store.hit_retention
        with closing(open_store(cfg, readonly=True, database=args.database)) as store:
            found = data.collect(
                store, period, now, socket.gethostname(), top=args.top, retention=retention
            )
    page = html.render(found)
    if args.output is None:
        sys.stdout.write(page)
    else:
        write_atomically(args.output, page)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _fleet_report(cfg: Config, period: Period, now: float, top: int) -> data.Report:
    """The report of every host's bans, from the fleet's log, in a read-only session."""
    from porttrap.cli.fleetview import fleet_config  # psycopg: only for the fleet
    from porttrap.fleet import queries
    from porttrap.fleet.logstore import FleetLogStore

    conn = queries.connect(fleet_config(cfg))
    with FleetLogStore(conn, host=None) as store:
        store.read_only()
        hosts = store.hosts()
        found = data.collect(store, period, now, data.fleet_title(hosts), top=top)
        made = [data.FleetBan(each.host, each.stored) for each in store.bans_in(period)]
    return replace(found, fleet=data.fleet(hosts, made, top))


def _period(since: str, until: str | None, now: float) -> Period:
    try:
        length = parse_duration(since, MAX_LOOKBACK)
    except ValueError as e:
        raise UsageError(f"--since: {e}") from None
    end = now if until is None else parse_time(until)
    return Period.of(end - length, end)


def parse_time(text: str) -> float:
    """'2026-12-01', '2026-12-01T08:00', '2026-12-01 08:00:00+01:00' ... as epoch seconds;
    UTC unless the text gives an offset."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--until: {text!r} is not a date or time; expected e.g. 2026-12-01 or "
            "2026-12-01T08:00 (UTC unless an offset such as +01:00 is given)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def write_atomically(path: Path, text: str) -> None:
    """Write `path` through a temporary file in the same directory, renamed over it."""
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as e:
        raise PorttrapError(
            f"cannot write {path}: {e.strerror}; check that {path.parent} exists and is writable"
        ) from e
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).chmod(0o644)
        Path(temporary).replace(path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
