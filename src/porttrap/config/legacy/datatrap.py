"""port_trap's ban history, `datatrap.db`, as porttrap bans, so that escalation continues where
port_trap left it.

port_trap.py writes one row per ban: `ts` (when), `delafter` (when it ends: ts + TIMEOUT x n^2),
`ip`, `port` (the trap's first argument: "PORT" or "IP:PORT"), `banned` (1 active, 0 lifted at
expiry, 8 on every row of an address once ban.sh made it permanent). Its n counts every row of
the address, so each row becomes a `Ban` with ban_count n in time order, ending at delafter;
the newest row of a permanently banned address becomes a permanent ban.

Reading only: the database is opened read-only, and never changed.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from porttrap.config.legacy.notes import Note, summary
from porttrap.errors import PorttrapError
from porttrap.model import Ban, IPAddress, as_network, ban_problem, unmap
from porttrap.units import brief

DB_FILE = "datatrap.db"
REASON = "port_trap"  # reasons are "port_trap:tcp/PORT": port_trap trapped TCP only
COLUMNS = ("id", "ts", "delafter", "ip", "port", "detected", "banned", "inet")
PERMANENT = 8
_SELECT = "SELECT id, ts, delafter, ip, port, banned FROM ips ORDER BY id"


@dataclass(frozen=True, slots=True)
class History:
    """The bans read from datatrap.db, oldest first, and a note for each row left out."""

    bans: tuple[Ban, ...]
    rows: int
    problems: tuple[Note, ...]


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    address: IPAddress
    ts: float
    delafter: float
    reason: str
    permanent: bool


def read(path: Path) -> History:
    """The history in port_trap's database at `path`. Raises PorttrapError when it cannot be
    read or is not port_trap's."""
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as err:
        raise PorttrapError(f"cannot open {path}: {err}") from err
    try:
        _check_schema(conn, path)
        rows = conn.execute(_SELECT).fetchall()
    except sqlite3.Error as err:
        raise PorttrapError(f"cannot read {path}: {err} (is it port_trap's {DB_FILE}?)") from err
    finally:
        conn.close()
    return convert(rows, str(path))


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    found = tuple(row[1] for row in conn.execute("PRAGMA table_info(ips)"))
    if set(COLUMNS) - set(found):
        what = f"a table ips with columns {', '.join(found)}" if found else "no table ips"
        raise PorttrapError(
            f"{path} is not port_trap's {DB_FILE}: it has {what}, not ips({', '.join(COLUMNS)}); "
            "give port_trap's directory, or --no-history to import the configuration only"
        )


def convert(rows: Iterable[Sequence[Any]], name: str) -> History:
    """Rows (id, ts, delafter, ip, port, banned) as bans; a note for each row left out."""
    left_out: dict[str, list[int]] = {}
    good: list[_Row] = []
    count = 0
    for row in rows:
        count += 1
        parsed = _row(row)
        if isinstance(parsed, str):
            row_id = row[0] if type(row[0]) is int else count  # an id that is not one: its place
            left_out.setdefault(parsed, []).append(row_id)
        else:
            good.append(parsed)
    problems = [
        summary(name, "", ids, f"{why}: left out", unit="row id") for why, ids in left_out.items()
    ]
    return History(tuple(_bans(good)), count, tuple(problems))


def _row(row: Sequence[Any]) -> _Row | str:
    """One row checked, or what is wrong with it."""
    row_id, ts, delafter, ip, port, banned = row
    address = _address(ip)
    if address is None:
        return "ip is not an IP address"  # its text is never shown
    start, end = _seconds(ts), _seconds(delafter)
    if start is None or end is None:
        return "ts or delafter is not a time in seconds"
    if end < start:
        return f"delafter {brief(f'{end:.0f}')} is before ts {brief(f'{start:.0f}')}"
    if (problem := ban_problem(start, end)) is not None:
        return f"ts to delafter: {problem}"
    return _Row(row_id, address, start, end, _reason(port), _seconds(banned) == PERMANENT)


def _address(value: object) -> IPAddress | None:
    if not isinstance(value, str):
        return None
    try:
        return unmap(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _seconds(value: object) -> float | None:
    """An INTEGER column as port_trap filled it (it quoted its numbers: '1700000000')."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return float(value.strip())  # ASCII: "²".isdigit() too, which float() refuses
    return None


def _reason(port: object) -> str:
    """`port_trap:tcp/PORT`, from "PORT" or "IP:PORT" (an IPv6 address split at the last
    colon); just `port_trap` when no port can be read."""
    text = str(port).rpartition(":")[2].strip() if port is not None else ""
    return f"{REASON}:tcp/{int(text)}" if text.isascii() and text.isdigit() else REASON


def _bans(rows: list[_Row]) -> list[Ban]:
    """Each address's rows in time order, numbered as port_trap counted them; the newest of a
    permanently banned address never ends."""
    by_address: dict[IPAddress, list[_Row]] = defaultdict(list)
    for row in rows:
        by_address[row.address].append(row)
    bans = []
    for own in by_address.values():
        own.sort(key=lambda r: (r.ts, r.id))
        permanent = any(r.permanent for r in own)
        for count, row in enumerate(own, start=1):
            last = permanent and count == len(own)
            expires = None if last else row.delafter
            bans.append(Ban(as_network(row.address), row.ts, expires, count, row.reason))
    bans.sort(key=lambda b: (b.banned_at, str(b.target)))
    return bans
