"""Fuzzing the TOML config loader (`config.loader.load_text`, and the line finder behind its
messages) with configs built from the schema: every section and key it knows, some it does
not, each holding a value that fits, one that nearly does, or one of TOML's other types; the
recorded configs of tests/data/config, mutated a line at a time; deep nesting.

The promise: a `Config`, or a ConfigError whose every problem has a message and, when it names
a line, one that is in the file. Nothing else, never a hang, little memory. Budget and a longer
campaign: see fuzzing.py."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any

from fuzzing import budget, call, patterns_match_quickly
from hypothesis import given
from hypothesis import strategies as st

from porttrap.config import loader
from porttrap.config.actions import COMMAND_KEYS, HOSTS_DENY_KEYS, WEBHOOK_KEYS
from porttrap.config.actions import KEYS as ACTION_KEYS
from porttrap.config.fleet import KEYS as FLEET_KEYS
from porttrap.config.logsection import KEYS as LOG_KEYS
from porttrap.config.logsection import OUTPUT_KEYS
from porttrap.config.metrics import KEYS as METRICS_KEYS
from porttrap.config.schema import Config
from porttrap.config.traps import ADVANCED_KEYS, ENTRY_KEYS
from porttrap.config.traps import KEYS as TRAP_KEYS
from porttrap.errors import ConfigError

DATA = Path(__file__).parent.parent / "data" / "config"
PATH = Path("/etc/porttrap/porttrap.toml")

# Values people write, and their near misses: the edges of every parser in config.fields.
TEXTS = [
    "", " ", "30s", "1h30m", "0s", "0", "-1s", "1.5h", "1e20s", "9" * 400 + "s", "9" * 5000,
    "1w" * 300, "nan", "inf", "23", "0", "65536", "1-65535", "65535-1", " 5900 - 5910 ", "1-",
    "tcp", "udp", "TCP", "connect", "stealth", "advanced", "ban", "log", "command", "quadratic",
    "none", "nftables", "ipset", "auto", "dry-run", "porttrap", "a" * 40, "stderr", "syslog",
    "json", "porttrap", "portsentry", "daemon", "local7", "debug", "info", "true", "/var/lib/x",
    "relative/dir", "/etc/hosts.deny", "ALL: $TARGET$", "http://192.0.2.1:8080/hook",
    "https://[2001:db8::1]/x", "ftp://x", "192.0.2.1:9100", "[2001:db8::1]:9100", "::",
    "0.0.0.0", "192.0.2.0/24", "192.0.2.1/24", "2001:db8::/32", "::ffff:192.0.2.88",
    "::ffff:192.0.2.0/120", "203.0.113.5", "fe80::1%eth0", "198\\.51\\.100\\.[0-9]+", "(",
    "(a+)+$", "[", "\u201c23\u201d", "\u00a0", "\x00", "\x7f", "e\u0301", "\U0001f600", "$TARGET$",
    "ban,unban", "hit", "permanent-ban", "X-Token: a", "%", "%s%n",
    "postgresql://porttrap@db.example.net/porttrap?sslmode=verify-full", "postgres://u:pw@h/d",
    "postgresql://[2001:db8::5]:5432/x?password=p", "postgresql://h:99999999/d", "web-1",
]  # fmt: skip
INTS = [-(2**63), -1, 0, 1, 2, 3, 22, 100, 1000, 1023, 1024, 65535, 65536, 2**31, 2**63 - 1]
FLOATS = [0.0, -0.0, 0.5, 1e300, -1e300, math.inf, -math.inf, math.nan, 5e-324]

scalars = st.one_of(
    st.sampled_from(TEXTS),
    st.text(max_size=20),
    st.sampled_from(INTS),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from(FLOATS),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(TEXTS[:20]) | st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)

SECTIONS: dict[str, tuple[str, ...]] = {
    "traps": TRAP_KEYS,
    "traps.advanced": ADVANCED_KEYS,
    "kernel": loader.KERNEL_KEYS,
    "ban": loader.BAN_KEYS,
    "allow": ("addresses", "patterns"),
    "actions": ACTION_KEYS,
    "actions.hosts_deny": HOSTS_DENY_KEYS,
    "firewall": ("backend", "table"),
    "store": ("hit_retention", "hit_rate", "hit_rows"),
    "log": LOG_KEYS,
    "metrics": METRICS_KEYS,
    "protect": ("ssh_ports",),
    "fleet": FLEET_KEYS,
}
ARRAYS: dict[str, tuple[str, ...]] = {  # arrays of tables and their keys
    "traps.port": ENTRY_KEYS,
    "actions.command": COMMAND_KEYS,
    "actions.webhook": WEBHOOK_KEYS,
    "log.output": OUTPUT_KEYS,
}


def keys(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    return (
        st.sampled_from(known)
        | st.sampled_from(known).map(lambda k: k + "s")
        | st.text(min_size=1, max_size=10)
    )


def value_for() -> st.SearchStrategy[Any]:
    """Mostly a value of the right kind for some key, or a list of them; else anything."""
    fitting = st.sampled_from(TEXTS) | st.sampled_from(INTS) | st.booleans()
    return st.one_of(fitting, st.lists(fitting, max_size=5), values)


@st.composite
def schema_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A config as TOML data: known sections with known (and some unknown) keys."""
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["state_dir"] = draw(value_for())
    for name in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=6, unique=True)):
        table = _table(data, name)
        for key in draw(st.lists(keys(SECTIONS[name]), max_size=5, unique=True)):
            table[key] = draw(value_for())
    for name in draw(st.lists(st.sampled_from(sorted(ARRAYS)), max_size=2, unique=True)):
        entries = [
            {
                key: draw(value_for())
                for key in draw(st.lists(keys(ARRAYS[name]), max_size=5, unique=True))
            }
            for _ in range(draw(st.integers(1, 3)))
        ]
        parent, _, last = name.rpartition(".")
        _table(data, parent)[last] = entries
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.text(min_size=1, max_size=8))] = draw(values)
    return data


def _table(data: dict[str, Any], dotted: str) -> dict[str, Any]:
    for part in dotted.split("."):
        found = data.setdefault(part, {})
        if not isinstance(found, dict):  # a value drawn for a key that is also a section
            found = data[part] = {}
        data = found
    return data


# -- TOML text -----------------------------------------------------------------------------------


def key(name: str) -> str:
    bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    return name if bare else json.dumps(name)


def inline(value: Any) -> str:
    """`value` as a TOML inline value."""
    if isinstance(value, list):
        return "[" + ", ".join(inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key(k)} = {inline(v)}" for k, v in value.items()) + "}"
    return scalar(value)


def scalar(value: Any) -> str:
    if isinstance(value, bool | str):
        return json.dumps(value)  # true, false, or a basic string: JSON's escapes are TOML's
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


def render(data: dict[str, Any], headers: bool, prefix: str = "") -> list[str]:
    """TOML text for `data`: tables under [headers] and arrays of tables as [[headers]] when
    `headers`, else inline."""
    lines, later = [], []
    for name, value in data.items():
        dotted = f"{prefix}.{key(name)}" if prefix else key(name)
        if headers and isinstance(value, dict):
            later.append([f"[{dotted}]", *render(value, headers, dotted)])
        elif (
            headers
            and isinstance(value, list)
            and value
            and all(isinstance(v, dict) for v in value)
        ):
            for entry in value:
                later.append([f"[[{dotted}]]", *render(entry, False, dotted)])
        else:
            lines.append(f"{key(name)} = {inline(value)}")
    return lines + [line for block in later for line in block]


# -- the property --------------------------------------------------------------------------------


def loads_or_says_why(text: str) -> None:
    try:
        config = call(lambda: loader.load_text(text, PATH))
    except ConfigError as err:
        assert err.problems
        last = text.count("\n") + 1
        for problem in err.problems:
            assert problem.message
            assert problem.line is None or 1 <= problem.line <= last, problem
        assert str(err)
    else:
        assert isinstance(config, Config)
        patterns_match_quickly(config.allow.patterns)
        assert all(math.isfinite(number) for number in numbers(config)), config


def numbers(value: object) -> list[float]:
    """Every float in a loaded config: each must be finite."""
    if isinstance(value, float):
        return [value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [n for f in dataclasses.fields(value) for n in numbers(getattr(value, f.name))]
    if isinstance(value, tuple):
        return [n for item in value for n in numbers(item)]
    return []


def config_property(data: bytes) -> None:
    loads_or_says_why(data.decode("utf-8"))


@budget(600)
@given(schema_configs(), st.booleans())
def test_configs_built_from_the_schema_load_or_say_why(data: dict[str, Any], headers: bool) -> None:
    loads_or_says_why("\n".join(render(data, headers)) + "\n")


RECORDED = [
    path.read_text(encoding="utf-8")
    for path in sorted(DATA.glob("*.toml"))
    if path.name != "not-utf8.toml"  # the loader's reader refuses it before load_text
]


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """A recorded config with lines dropped, repeated, swapped in from another, or changed."""
    lines = draw(st.sampled_from(RECORDED)).splitlines()
    pool = [line for text in RECORDED for line in text.splitlines()]
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(lines)))
        how = draw(st.sampled_from(["drop", "repeat", "insert", "value", "chars"]))
        if how == "drop" and at < len(lines):
            del lines[at]
        elif how == "repeat" and at < len(lines):
            lines.insert(at, lines[at])
        elif how == "insert":
            lines.insert(at, draw(st.sampled_from(pool)))
        elif how == "value" and at < len(lines) and "=" in lines[at]:
            name = lines[at].split("=", 1)[0]
            lines[at] = f"{name}= {inline(draw(value_for()))}"
        elif how == "chars" and at < len(lines):
            line = lines[at]
            cut = draw(st.integers(0, len(line)))
            lines[at] = (
                line[:cut] + draw(st.text(max_size=4)) + line[cut + draw(st.integers(0, 3)) :]
            )
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))


@st.composite
def one_key_configs(draw: st.DrawFn) -> str:
    """A section with one to three of its keys, each with a value people write or nearly do."""
    name = draw(st.sampled_from(sorted(SECTIONS)))
    chosen = draw(st.lists(st.sampled_from(SECTIONS[name]), min_size=1, max_size=3, unique=True))
    fitting = st.sampled_from(TEXTS) | st.sampled_from(INTS) | st.sampled_from(FLOATS)
    lines = [f"{k} = {inline(draw(fitting | st.lists(fitting, max_size=3)))}" for k in chosen]
    return "\n".join([f"[{name}]", *lines]) + "\n"


@budget(600)
@given(one_key_configs())
def test_each_key_with_the_values_people_write_loads_or_says_why(text: str) -> None:
    loads_or_says_why(text)


@budget(600)
@given(mutated_configs())
def test_recorded_configs_mutated_load_or_say_why(text: str) -> None:
    loads_or_says_why(text)


@budget(60)
@given(
    st.integers(1, 3000),
    st.sampled_from(["[", "{a = ", "[[", "{"]),
    st.sampled_from(["ban.time", "allow.addresses", "x"]),
)
def test_deep_nesting_loads_or_says_why(depth: int, opener: str, where: str) -> None:
    closer = {"[": "]", "{a = ": "}", "[[": "]]", "{": "}"}[opener]
    section, _, name = where.rpartition(".")
    head = f"[{section}]\n" if section else ""
    loads_or_says_why(f"{head}{name} = {opener * depth}1{closer * depth}\n")


PROPERTIES = {"config": config_property}
