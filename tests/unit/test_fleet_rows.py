"""Rows of the fleet's shared log (porttrap.fleet.rows): every host writes there, so each row
is hostile until checked. Each sample below is a row and the problem expected beside it; a
property test shows that no row of any content makes `parse` raise."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porttrap.fleet.rows import COLUMNS, SELECT_AFTER, lag, parse
from porttrap.model import Ban, Evidence, FleetEntry, FleetKind

NOW = 1_800_000_000.0  # the database's clock at the read
AT = NOW - 0.25  # the row's commit


def row(**changes: Any) -> tuple[Any, ...]:
    """A good ban row (as SELECT_AFTER reads it) with `changes`."""
    values = {
        "id": 17,
        "host": "web-1",
        "kind": "ban",
        "target": "203.0.113.7/32",
        "ban_id": "b-42",
        "banned_at": NOW - 10,
        "expires_at": NOW + 590,
        "ban_count": 2,
        "reason": "trap tcp/23",
        "evidence": "verified",
        "at": AT,
        "now": NOW,
    }
    assert set(changes) <= set(values)
    values |= changes
    return tuple(values[column] for column in COLUMNS)


def test_a_good_ban_row_is_an_entry_with_its_ban_and_lag() -> None:
    target = IPv4Network("203.0.113.7/32")
    assert parse(row()) == FleetEntry(
        id=17,
        host="web-1",
        kind=FleetKind.BAN,
        target=target,
        ban=Ban(target, NOW - 10, NOW + 590, 2, "trap tcp/23", Evidence.VERIFIED),
    )
    assert lag(row()) == 0.25


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"target": "2001:db8:7::/48", "evidence": "unverified", "expires_at": None},
         (IPv6Network("2001:db8:7::/48"), None, Evidence.UNVERIFIED)),
        ({"target": "::ffff:203.0.113.7/128"}, (IPv4Network("203.0.113.7/32"), NOW + 590, None)),
        ({"target": IPv4Network("198.51.100.0/24")}, (IPv4Network("198.51.100.0/24"), None, None)),
        ({"target": "10.0.0.0/8"}, (IPv4Network("10.0.0.0/8"), None, None)),  # a private /8
        ({"target": "2001:db8::/32"}, (IPv6Network("2001:db8::/32"), None, None)),
        ({"banned_at": NOW + 86000}, (None, None, None)),  # a host's clock ahead, < 1 day
        ({"ban_count": 1_000_000, "reason": ""}, (None, None, None)),
    ],
)  # fmt: skip
def test_good_rows_of_every_shape(changes: dict[str, Any], expected: tuple[Any, ...]) -> None:
    entry = parse(row(**changes))
    assert isinstance(entry, FleetEntry), entry
    assert entry.ban is not None
    target, expires_at, evidence = expected
    if target is not None:
        assert entry.target == entry.ban.target == target
    if expires_at is not None or "expires_at" in changes:
        assert entry.ban.expires_at == expires_at
    if evidence is not None:
        assert entry.ban.evidence is evidence


@pytest.mark.parametrize("kind", ["unban", "unban-fleet"])
def test_an_unban_ignores_its_ban_columns_whatever_they_hold(kind: str) -> None:
    hostile = row(kind=kind, banned_at=float("nan"), ban_count=-5, reason="\x1b[2J", evidence=3)
    entry = parse(hostile)
    assert isinstance(entry, FleetEntry), entry
    assert (entry.kind, entry.ban, entry.target) == (
        FleetKind(kind),
        None,
        IPv4Network("203.0.113.7/32"),
    )


def test_the_lag_is_the_databases_clock_only_and_never_negative() -> None:
    assert lag(row(at=NOW - 3)) == 3
    assert lag(row(at=NOW + 3)) == 0
    assert lag(row(at="yesterday")) is None
    assert lag(()) is None


HOSTILE = [
    # (changes, the problem's expected text)
    ({"target": "0.0.0.0/0"}, "0.0.0.0/0 is wider than /8"),
    ({"target": "::/0"}, "::/0 is wider than /32"),
    ({"target": "100.0.0.0/7"}, "wider than /8"),
    ({"target": "2001:db8::/31"}, "wider than /32"),
    ({"target": "::ffff:0:0/96"}, "0.0.0.0/0 is wider than /8"),  # all of IPv4, mapped
    ({"target": "127.0.0.1/32"}, "127.0.0.1 is in 127.0.0.0/8"),
    ({"target": "::1/128"}, "::1 is in ::1/128"),
    ({"target": "::/32"}, "is in ::/128"),
    ({"target": "0.0.0.0/32"}, "0.0.0.0 is in 0.0.0.0/8"),
    ({"target": "224.0.0.1/32"}, "in 224.0.0.0/4"),
    ({"target": "255.255.255.255/32"}, "in 240.0.0.0/4"),
    ({"target": "ff02::1/128"}, "in ff00::/8"),
    ({"target": "fe80::1/128"}, "in fe80::/10"),
    ({"target": "169.254.1.1/32"}, "in 169.254.0.0/16"),
    ({"target": "203.0.113.7/24"}, "not an address or network"),  # host bits
    ({"target": "example.com"}, "not an address or network"),
    ({"target": "203.0.113.7\n"}, "not an address or network"),
    ({"target": "1" * 10_000}, "not an address or network"),
    ({"target": None}, "target None is not an address or network"),
    ({"target": b"\xcb\x00q\x07"}, "not an address or network"),
    ({"id": 0}, "id 0 is not a positive 64-bit integer"),
    ({"id": -1}, "id -1 is not"),
    ({"id": 2**63}, "is not a positive 64-bit integer"),
    ({"id": True}, "id True is not"),
    ({"id": "17"}, "id '17' is not"),
    ({"id": 17.0}, "id 17.0 is not"),
    ({"host": "web 1"}, "host 'web 1' is not a host name"),
    ({"host": ""}, "host '' is not a host name"),
    ({"host": "-web"}, "is not a host name"),
    ({"host": "a" * 64}, "is not a host name"),
    ({"host": "web-1\n"}, "is not a host name"),
    ({"host": None}, "host None is not a host name"),
    ({"kind": "BAN"}, "kind 'BAN' is not one of ban, unban, unban-fleet"),
    ({"kind": "delete"}, "is not one of"),
    ({"kind": None}, "is not one of"),
    ({"ban_id": ""}, "ban_id '' is not 1 to 64 printable characters"),
    ({"ban_id": "x" * 65}, "is not 1 to 64 printable characters"),
    ({"ban_id": "a\x00b"}, "is not 1 to 64 printable"),
    ({"ban_id": 42}, "ban_id 42 is not"),
    ({"banned_at": float("nan")}, "banned_at nan is not a finite number"),
    ({"banned_at": float("inf")}, "banned_at inf is not a finite number"),
    ({"banned_at": -1.0}, "banned_at"),
    ({"banned_at": 2.0**40, "expires_at": None}, "banned_at"),
    ({"banned_at": "1800000000"}, "banned_at '1800000000' is not a number"),
    ({"banned_at": None}, "banned_at None is not a number"),
    ({"banned_at": 10**400}, "banned_at 1000"),
    ({"banned_at": NOW + 86400 + 60, "expires_at": None}, "86460 s ahead of the database"),
    ({"expires_at": NOW + 3651 * 86400}, "longer than 3650d"),
    ({"expires_at": float("-inf")}, "expires_at -inf is not a finite number"),
    ({"expires_at": 2.0**33}, "expires_at"),
    ({"expires_at": True}, "expires_at True is not a number"),
    ({"ban_count": 0}, "ban_count 0 is not a whole number of at least 1"),
    ({"ban_count": -3}, "ban_count -3 is not"),
    ({"ban_count": 1_000_001}, "ban_count 1000001 is above 1,000,000"),
    ({"ban_count": 2.0}, "ban_count 2.0 is not a whole number"),
    ({"ban_count": None}, "ban_count None is not"),
    ({"ban_count": False}, "ban_count False is not"),
    ({"reason": "x" * 201}, "is not up to 200 printable characters"),
    ({"reason": "trap\nBANNED 0.0.0.0/0"}, "is not up to 200 printable"),  # a forged log line
    ({"reason": "\x1b[31mred"}, "is not up to 200 printable"),
    ({"reason": "rtl\u202eevil"}, "is not up to 200 printable"),
    ({"reason": None}, "reason None is not"),
    ({"evidence": "VERIFIED"}, "evidence 'VERIFIED' is not verified or unverified"),
    ({"evidence": None}, "evidence None is not verified or unverified"),
    ({"evidence": "admin"}, "is not verified or unverified"),
    ({"at": None}, "at None is not a number"),
    ({"at": float("nan")}, "at nan is not a finite number"),
    ({"now": "later"}, "the database's clock (now) 'later' is not a number"),
]


@pytest.mark.parametrize(("changes", "problem"), HOSTILE, ids=[str(c)[:60] for c, _ in HOSTILE])
def test_a_hostile_row_is_refused_with_its_id_host_and_problem(
    changes: dict[str, Any], problem: str
) -> None:
    found = parse(row(**changes))
    assert isinstance(found, str), f"accepted: {found}"
    assert problem in found
    if "id" not in changes and "host" not in changes:
        assert found.startswith("fleet log row 17 from web-1: ")


def test_a_row_of_the_wrong_shape_is_refused() -> None:
    assert parse(row()[:-1]) == "fleet log row 17 from web-1: not a row of 12 columns"
    assert parse(()) == "fleet log row ? from ?: not a row of 12 columns"
    assert str(parse("not a row")).endswith(": not a row of 12 columns")


def test_a_bad_id_or_host_is_shown_cut_in_the_problem() -> None:
    found = parse(row(host="h" * 500))
    assert isinstance(found, str) and len(found) < 200
    assert found.startswith("fleet log row 17 from 'hhhhh")


def test_the_query_reads_the_columns_in_parses_order() -> None:
    selected = SELECT_AFTER.split(" FROM porttrap.log")[0].removeprefix("SELECT ")
    names = [part.strip().split("::")[0] for part in selected.split(", ")]
    assert names[:10] == list(COLUMNS[:10])
    assert names[10:] == ["extract(epoch FROM at)", "extract(epoch FROM clock_timestamp())"]


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparison")

    __hash__ = None  # type: ignore[assignment]


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=80),
    st.binary(max_size=20),
    st.sampled_from(["ban", "unban", "unban-fleet", "web-1", "verified", "unverified"]),
    st.builds(ip_network, st.sampled_from(["203.0.113.0/24", "::/0", "127.0.0.1", "fe80::/64"])),
    st.just(Unprintable()),
    st.lists(st.integers(), max_size=3),
)


@given(st.tuples(*[ANYTHING] * len(COLUMNS)))
def test_parse_never_raises_on_any_row(values: tuple[Any, ...]) -> None:
    assert isinstance(parse(values), FleetEntry | str)


@given(st.lists(st.integers(0, len(COLUMNS) - 1), max_size=4, unique=True), st.data())
def test_parse_never_raises_on_a_good_row_with_any_columns_replaced(
    columns: list[int], data: st.DataObject
) -> None:
    values = list(row())
    for column in columns:
        values[column] = data.draw(ANYTHING)
    found = parse(tuple(values))
    assert isinstance(found, FleetEntry | str)
    if isinstance(found, FleetEntry) and found.ban is not None:
        assert found.ban.ban_count >= 1 and found.target.prefixlen >= 8


BANS = st.fixed_dictionaries(
    {
        "id": st.integers(1, 2**63 - 1),
        "target": st.ip_addresses(network="203.0.113.0/24").map(str)
        | st.ip_addresses(network="2001:db8::/32").map(str),
        "banned_at": st.floats(0, 2.0**32 - 86400 * 3651),
        "length": st.one_of(st.none(), st.floats(0, 3650 * 86400)),
        "ban_count": st.integers(1, 1_000_000),
        "reason": st.text(st.characters(codec="utf-8").filter(str.isprintable), max_size=200),
        "evidence": st.sampled_from(Evidence),
    }
)


@given(BANS)
def test_every_ban_a_host_can_publish_reads_back_as_it_was(ban: dict[str, Any]) -> None:
    length, evidence = ban.pop("length"), ban.pop("evidence")
    start = ban["banned_at"]
    expires_at = None if length is None else start + length
    values = row(**ban, expires_at=expires_at, evidence=evidence.value, now=start, at=start)
    found = parse(values)
    assert isinstance(found, FleetEntry), found
    target = ip_network(ban["target"])
    assert found.ban == Ban(target, start, expires_at, ban["ban_count"], ban["reason"], evidence)
