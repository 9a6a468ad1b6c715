"""Fuzzing the importers: PortSentry's files (portsentry.conf, /etc/default/portsentry, the
ignore files) and port_trap's (list_of_ports.txt, for_permanent_ban.txt, whitelist.txt and the
rows of datatrap.db). The inputs are the recorded setups of tests/data/legacy, their lines
mutated and mixed, with settings, ports, addresses and patterns as people write them and nearly
do (typographic quotes, Unicode digits, octal, huge numbers, regular expressions that backtrack).

The promise: `convert` returns a config that porttrap loads (the CLI refuses to write one that
does not, calling it an importer bug), with notes; datatrap rows become valid bans or notes.
Never another exception, never a hang. Budget and a longer campaign: see fuzzing.py."""

from __future__ import annotations

import contextlib
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from fuzzing import budget, call, patterns_match_quickly
from hypothesis import given
from hypothesis import strategies as st

from porttrap.config import loader
from porttrap.config.fields import Problems
from porttrap.config.legacy import datatrap, port_trap, portsentry
from porttrap.config.legacy.notes import Conversion, SourceFile
from porttrap.config.legacy.portsentry_files import KEYS as PORTSENTRY_KEYS
from porttrap.errors import ConfigError

LEGACY = Path(__file__).parent.parent / "data" / "legacy"
ODD = [
    "\u201c",
    "\u201d",
    "\u00b2",
    "\u0663",
    "\u00a0",
    "\u2013",
    "\ufeff",
    "\x00",
    "\t",
    "\\",
    "'",
    '"',
    "$",
    "#",
]
NUMBERS = [
    "0",
    "1",
    "2",
    "3",
    "-1",
    "07",
    "08",
    "0x1F",
    "0X",
    "1e3",
    "9" * 400,
    "9" * 30,
    "\u00b2",
    "\u0663",
    "1.5",
    " 3 ",
]


def lines_of(pattern: str) -> list[str]:
    return [line for path in sorted(LEGACY.glob(pattern)) for line in path.read_text().splitlines()]


def words(extra: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(extra + ODD + NUMBERS) | st.text(max_size=6)


@st.composite
def mutated_lines(
    draw: st.DrawFn, pool: list[str], made: st.SearchStrategy[str], most: int = 12
) -> str:
    """A file of up to `most` lines from `pool` (recorded files) and `made`, some with
    characters changed."""
    lines = draw(st.lists(st.sampled_from(pool) | made, max_size=most))
    for _ in range(draw(st.integers(0, 3))):
        if lines:
            at = draw(st.integers(0, len(lines) - 1))
            cut = draw(st.integers(0, len(lines[at])))
            odd = draw(st.sampled_from(ODD) | st.text(max_size=3))
            lines[at] = lines[at][:cut] + odd + lines[at][cut + draw(st.integers(0, 2)) :]
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


def loads(conversion: Conversion) -> None:
    """The config is valid TOML (`porttrap import` calls anything else its own bug), every value
    in it is one porttrap takes, and its patterns match quickly; what porttrap refuses in it
    is a ConfigError (the import lists it: the old tool's settings may protect nothing)."""
    data = tomllib.loads(conversion.toml)
    problems = Problems(None, conversion.toml)
    config = call(lambda: loader._config(data, problems, None))  # the values, before protection
    assert not len(problems), problems.sorted()
    patterns_match_quickly(config.allow.patterns)
    with contextlib.suppress(ConfigError):
        call(lambda: loader.load_text(conversion.toml, None))
    assert all(str(note) for note in conversion.notes)


# -- PortSentry ----------------------------------------------------------------------------------

PORT_LISTS = [
    "1,11,15",
    "1-1024",
    "5900-5910,23",
    "0",
    "65536",
    "65535-1",
    "23,,23",
    " 23 , 24 ",
    "a,b",
    "1-",
    "-1",
]


@st.composite
def portsentry_setting(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(sorted(PORTSENTRY_KEYS)) | st.sampled_from(["tcp_ports", "FOO"]))
    value = draw(
        st.sampled_from(PORT_LISTS) | words([]) | st.lists(words([]), max_size=4).map(",".join)
    )
    quote = draw(st.sampled_from(['"', '"', "\u201c", "'", ""]))
    close = {"\u201c": "\u201d"}.get(quote, quote)
    space = draw(st.sampled_from(["", " "]))
    return f"{key}{space}={space}{quote}{value}{close}"


@st.composite
def mode_line(draw: st.DrawFn) -> str:
    key = draw(st.sampled_from(["TCP_MODE", "UDP_MODE", "tcp_mode"]))
    mode = draw(
        st.sampled_from(["tcp", "udp", "stcp", "sudp", "atcp", "audp", "", "ATCP"]) | words([])
    )
    return f'{key}="{mode}"'


ADDRESSES = [
    "192.0.2.7",
    "192.0.2.0/24",
    "192.0.2.7/24",
    "0.0.0.0",
    "0.0.0.0/0",
    "127.0.0.1",
    "::",
    "::1",
    "2001:db8::/32",
    "::ffff:192.0.2.88",
    "192.0.2.0/33",
    "192.0.2.0/\u00b2",
    "fe80::1%eth0",
    "/",
    "localhost",
]


@st.composite
def portsentry_files(draw: st.DrawFn) -> portsentry.PortSentryFiles:
    conf = draw(mutated_lines(lines_of("portsentry/*/portsentry.conf"), portsentry_setting()))
    defaults = draw(st.none() | mutated_lines(lines_of("portsentry/*/default"), mode_line()))
    ignore_made = st.sampled_from(ADDRESSES) | words(ADDRESSES)
    ignores = draw(
        st.lists(
            mutated_lines(lines_of("portsentry/*/portsentry.ignore*"), ignore_made), max_size=2
        )
    )
    return portsentry.PortSentryFiles(
        conf=SourceFile("/etc/portsentry/portsentry.conf", conf),
        defaults=None if defaults is None else SourceFile("/etc/default/portsentry", defaults),
        defaults_name="/etc/default/portsentry",
        ignore=tuple(
            SourceFile(f"/etc/portsentry/ignore{i}", text) for i, text in enumerate(ignores)
        ),
    )


def portsentry_property(data: bytes) -> None:
    """A recorded case: JSON {"conf": text, "defaults": text or null, "ignore": [text...]}."""
    raw: dict[str, Any] = json.loads(data)
    files = portsentry.PortSentryFiles(
        conf=SourceFile("portsentry.conf", raw["conf"]),
        defaults=None if raw["defaults"] is None else SourceFile("default", raw["defaults"]),
        defaults_name="default",
        ignore=tuple(SourceFile(f"ignore{i}", text) for i, text in enumerate(raw["ignore"])),
    )
    loads(call(lambda: portsentry.convert(files)))


@budget(500)
@given(portsentry_files())
def test_portsentry_setups_import_as_a_config_that_loads(files: portsentry.PortSentryFiles) -> None:
    loads(call(lambda: portsentry.convert(files)))


# -- port_trap -----------------------------------------------------------------------------------


@st.composite
def port_trap_word(draw: st.DrawFn) -> str:
    spot = draw(
        st.sampled_from(["23", "0", "65535", "70000", "\u00b23", "abc", ""])
        | st.integers(0, 99999).map(str)
    )
    if draw(st.booleans()):
        spot = (
            draw(
                st.sampled_from(
                    [
                        "203.0.113.5",
                        "2001:db8::5",
                        "[2001:db8::5]",
                        "0.0.0.0",
                        "::",
                        "::ffff:192.0.2.1",
                        "x" * 40,
                    ]
                )
            )
            + ":"
            + spot
        )
    parts = [spot, draw(st.sampled_from(NUMBERS) | st.integers(0, 99999).map(str))]
    if draw(st.booleans()):
        parts.append(draw(st.sampled_from(["6", "4", ""])))
    return "#".join(parts[: draw(st.integers(1, len(parts)))])


PATTERNS = [
    "192.0.2.7", "^198\\.51\\.100\\.[0-9]+$", "203\\.0\\.113\\.(1|2)", "2001:db8:1:",
    "(?i)2001:DB8:2", "[0-9+", "\\d+\\.\\d+\\.\\d+\\.\\d*7", ".*", "(.*)*x", "(a|aa)+$",
    "(\\d+)+\\.$", "(?x) 1 # c", "[\\d.]{1,39}", "1{2,}", "\\", "()", "|", "$", "^$",
    "(?P<a>1)(?P=a)", "[^\\W\\d]", "\u00b2", "(?<=1)2", ".{0,1000}", "(?i)(?s)..", "\\Z",
    "[[:digit:]]",
]  # fmt: skip


@st.composite
def port_trap_files(draw: st.DrawFn) -> port_trap.PortTrapFiles:
    ports = draw(
        mutated_lines(
            lines_of("port_trap/*/list_of_ports.txt"),
            st.lists(port_trap_word(), min_size=1, max_size=3).map(" ".join),
        )
    )
    permanent = draw(
        st.none() | mutated_lines(lines_of("port_trap/*/for_permanent_ban.txt"), words(NUMBERS))
    )
    patterns = st.sampled_from(PATTERNS) | words(PATTERNS)
    allowed = draw(st.none() | mutated_lines(lines_of("port_trap/*/whitelist.txt"), patterns, 4))
    return port_trap.PortTrapFiles(
        ports=SourceFile("/opt/port_trap/list_of_ports.txt", ports),
        permanent=None
        if permanent is None
        else SourceFile("/opt/port_trap/for_permanent_ban.txt", permanent),
        whitelist=None if allowed is None else SourceFile("/opt/port_trap/whitelist.txt", allowed),
    )


def port_trap_property(data: bytes) -> None:
    """A recorded case: JSON {"ports": text, "permanent": text or null, "whitelist": ...}."""
    raw: dict[str, Any] = json.loads(data)
    files = port_trap.PortTrapFiles(
        ports=SourceFile("list_of_ports.txt", raw["ports"]),
        permanent=None
        if raw["permanent"] is None
        else SourceFile("for_permanent_ban.txt", raw["permanent"]),
        whitelist=None
        if raw["whitelist"] is None
        else SourceFile("whitelist.txt", raw["whitelist"]),
    )
    loads(call(lambda: port_trap.convert(files)))


@budget(120)  # each whitelist entry costs up to 150,000 pattern tests
@given(port_trap_files())
def test_port_trap_setups_import_as_a_config_that_loads(files: port_trap.PortTrapFiles) -> None:
    loads(call(lambda: port_trap.convert(files)))


# -- datatrap.db rows ----------------------------------------------------------------------------

sqlite_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 8, 1_700_000_000, 1_700_003_600]),
    st.floats(),
    st.sampled_from(["1700000000", " 1700000000 ", "9" * 400, "\u00b2", "\u0663", "8", "1e9", ""]),
    st.sampled_from(
        ["192.0.2.7", " 198.51.100.7 ", "2001:db8::7", "::ffff:192.0.2.7", "0.0.0.0", "x"]
    ),
    st.sampled_from(
        ["23", "203.0.113.5:23", "2001:db8::5:2323", "\u00b2", ":", "99999999999999999999"]
    ),
    st.text(max_size=10),
    st.binary(max_size=8),
)


def datatrap_property(data: bytes) -> None:
    """A recorded case: JSON rows, each [id, ts, delafter, ip, port, banned]."""
    check_history(json.loads(data))


def check_history(rows: list[list[Any]]) -> None:
    history = call(lambda: datatrap.convert(rows, "datatrap.db"))
    assert history.rows == len(rows)
    assert len(history.bans) == len(rows) or history.problems  # rows left out are noted
    for ban in history.bans:
        assert math.isfinite(ban.banned_at)
        assert ban.expires_at is None or math.isfinite(ban.expires_at)
        assert ban.ban_count >= 1


@budget(600)
@given(st.lists(st.lists(sqlite_values, min_size=6, max_size=6), max_size=8))
def test_datatrap_rows_become_bans_or_notes(rows: list[list[Any]]) -> None:
    check_history(rows)


PROPERTIES = {
    "portsentry": portsentry_property,
    "port_trap": port_trap_property,
    "datatrap": datatrap_property,
}
