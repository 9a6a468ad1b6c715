"""Fuzzing what porttrap reads back from its database: rows as a damaged file, another
program or an older porttrap may have left them. SQLite keeps any type in any column of these
tables (no STRICT), so each value is drawn from every storage class: NULL, 64-bit integers,
floats, text (also bytes that are not UTF-8, cast to text) and blobs; mostly the values
porttrap writes, mutated.

The promise: each row converts or raises BadRow (rows.py); every read of the store returns
its result, skipping bad rows, even with text that is not UTF-8 (read with U+FFFD in its
place: such an address is a bad row). Budget and a longer campaign: see fuzzing.py."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from fuzzing import budget, call
from hypothesis import given
from hypothesis import strategies as st

from porttrap.model import Ban
from porttrap.report.figures import Period
from porttrap.store import rows
from porttrap.store.base import StoredBan
from porttrap.store.sqlite import SQLiteStore

NOW = 1_800_000_000.0


class NotUtf8(bytes):
    """Bytes stored as TEXT (CAST): text that Python cannot decode."""


def values(usual: list[Any]) -> st.SearchStrategy[Any]:
    """A column's value: one porttrap writes there, or anything SQLite can hold."""
    anything = st.one_of(
        st.none(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),  # SQLite stores NaN as NULL
        st.text(max_size=12),
        st.binary(max_size=8),
        st.binary(min_size=1, max_size=6).map(lambda b: NotUtf8(b"\xff" + b)),
    )
    return st.integers(0, 2).flatmap(lambda n: st.sampled_from(usual) if n else anything)


TIMES: list[Any] = [NOW - 60, NOW, NOW + 3600, 0.0, -1.0, 1e300, 2**62, "1800000000", 9.0e15]
ADDRESSES: list[Any] = [
    "198.51.100.7",
    "2001:db8::7",
    "::ffff:192.0.2.88",
    "0.0.0.0",
    "fe80::1%eth0",
    "x",
    "",
]
HIT_COLUMNS: list[list[Any]] = [
    TIMES, ADDRESSES, [40000, 0, 65535, 65536, -1], ["192.0.2.1", "2001:db8::1"], [23, 0, 70000],
    ["tcp", "udp", "TCP", "icmp"], ["connect", "syn", "udp", ""], ["banned", "hit", "allowed", "x"],
]  # fmt: skip
BAN_COLUMNS: list[list[Any]] = [
    ["198.51.100.7", "203.0.113.0/24", "203.0.113.1/24", "2001:db8::/48", "::ffff:192.0.2.88", "x"],
    TIMES, [None, *TIMES], [1, 2, 0, -1, 2**63 - 1], ["trap:tcp/23", "admin", ""],
    ["verified", "unverified", "x"],
]  # fmt: skip
LIFT_COLUMNS: list[list[Any]] = [[None, NOW - 30, NOW + 30, "x"], [None, "expired", "admin", 7]]

hit_rows = st.tuples(*[values(column) for column in HIT_COLUMNS])
ban_rows = st.tuples(*[values(column) for column in BAN_COLUMNS])
stored_rows = st.tuples(*[values(column) for column in BAN_COLUMNS + LIFT_COLUMNS])


def plain(value: Any) -> Any:
    """What Python's sqlite3 gives back for a value it stored."""
    return value.decode("utf-8", "replace") if isinstance(value, NotUtf8) else value


@budget(600)
@given(hit_rows, ban_rows, stored_rows)
def test_a_row_converts_or_is_a_bad_row(
    hit: tuple[Any, ...], ban: tuple[Any, ...], stored: tuple[Any, ...]
) -> None:
    for convert, row in (
        (rows.hit_from, hit),
        (rows.ban_from, ban),
        (rows.stored_ban_from, stored),
    ):
        try:
            result = call(lambda: convert(tuple(plain(v) for v in row)))  # noqa: B023
        except rows.BadRow as err:
            assert str(err)
        else:
            assert isinstance(result, tuple | Ban | StoredBan)


# -- whole reads of a database holding such rows -------------------------------------------------

_INSERT_HIT = (
    "INSERT INTO hits (at, source, source_port, local, port, proto, kind, outcome) VALUES ({})"
)
_INSERT_BAN = """INSERT INTO bans (target, banned_at, expires_at, ban_count, reason, evidence,
    lifted_at, lifted_reason) VALUES ({})"""


def _insert(conn: sqlite3.Connection, sql: str, row: tuple[Any, ...]) -> None:
    marks = ", ".join("CAST(? AS TEXT)" if isinstance(v, NotUtf8) else "?" for v in row)
    params = [bytes(v) if isinstance(v, NotUtf8) else v for v in row]
    with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL: SQLite refuses the row
        conn.execute(sql.format(marks), params)


def read_everything(path: Path) -> None:
    """Every read porttrap makes of a database, each of which must work, skipping bad rows."""
    with SQLiteStore.open(path, readonly=True) as store:
        for read in (
            lambda: store.active_bans(NOW),
            lambda: store.bans_to_restore(NOW, NOW - 86400),
            lambda: store.bans_since(0.0),
            lambda: store.counts(NOW),
            lambda: store.history(None, limit=50),
            lambda: store.history(ip_network("203.0.113.0/24"), limit=50),
            lambda: store.history(ip_network("198.51.100.7/32"), limit=50),
            lambda: store.report_figures(Period.of(NOW - 86400, NOW + 3600), top=5),
        ):
            call(read)


def store_property(data: bytes) -> None:
    """A recorded case: JSON {"hits": [[...8 values]], "bans": [[...8 values]]}; a value
    {"not-utf8": "hex"} is bytes stored as text."""
    raw = json.loads(data)

    def value(v: Any) -> Any:
        return NotUtf8(bytes.fromhex(v["not-utf8"])) if isinstance(v, dict) else v

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "porttrap.db"
        SQLiteStore.open(path).close()
        with sqlite3.connect(path) as conn:
            for hit in raw["hits"]:
                _insert(conn, _INSERT_HIT, tuple(value(v) for v in hit))
            for ban in raw["bans"]:
                _insert(conn, _INSERT_BAN, tuple(value(v) for v in ban))
        read_everything(path)


@budget(160)
@given(st.lists(hit_rows, max_size=4), st.lists(stored_rows, max_size=4))
def test_every_read_of_a_database_of_such_rows_works_or_says_why(
    hits: list[tuple[Any, ...]], bans: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "porttrap.db"
        SQLiteStore.open(path).close()
        with sqlite3.connect(path) as conn:
            for hit in hits:
                _insert(conn, _INSERT_HIT, hit)
            for ban in bans:
                _insert(conn, _INSERT_BAN, ban)
        read_everything(path)


PROPERTIES = {"store": store_property}
