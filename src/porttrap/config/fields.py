"""Checking single config values. Each parser takes a raw TOML value and returns the typed value
or raises ValueError with a message that says what is expected; `Problems` turns those into
`ConfigProblem`s with the key and its line, so one run reports every problem in the file."""

from __future__ import annotations

import contextlib
import difflib
import enum
import importlib
import ipaddress
import json
import re
import warnings
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from porttrap.config.locate import line_of, locate
from porttrap.errors import ConfigProblem
from porttrap.model import IPAddress, IPNetwork, Proto, unmap, unmap_written
from porttrap.units import (
    MAX_BAN,
    MAX_LOOKBACK,
    Longest,
    TooLong,
    brief,
    parse_duration,
    parse_ports,
)

T = TypeVar("T")
E = TypeVar("E", bound=enum.StrEnum)
Table = dict[str, Any]
Parser = Callable[[object], T]

_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")
# The largest count any key takes (a queue, a rate, a number of rows): a 400-digit one would
# overflow where it is used (a C size, a float), long after the config was said to be OK.
MAX_COUNT = 2**31 - 1
_ZERO_DURATION = re.compile(r"\s*(0+(\.0*)?\s*[smhdwSMHDW]\s*)+")


class Problems:
    """Every problem found in one config text, each placed on its line when it can be found."""

    def __init__(self, path: Path | None, text: str) -> None:
        self._path = path
        self._text = text
        self._lines: dict[str, int] | None = None
        self._found: list[ConfigProblem] = []

    def __len__(self) -> int:
        return len(self._found)

    def add(self, key: str, message: str) -> None:
        if self._lines is None:
            self._lines = locate(self._text)
        self._found.append(ConfigProblem(self._path, line_of(self._lines, key), key, message))

    def under(self, sections: Iterable[str]) -> bool:
        """Whether a problem was found in one of the top-level `sections` (or in no key)."""
        tops = set(sections)
        return any(not p.key or p.key.split(".")[0].split("[")[0] in tops for p in self._found)

    def sorted(self) -> list[ConfigProblem]:
        """In file order; problems without a line last, each group in the order found."""
        return sorted(self._found, key=lambda p: (p.line is None, p.line or 0))


def traps_key(data: Table, names: Sequence[str]) -> str:
    """The key a problem of the [traps] section is shown at: the first of `names` the file
    sets there, else the section."""
    traps = data.get("traps")
    if isinstance(traps, dict):
        for name in names:
            if name in traps:
                return f"traps.{name}"
    return "traps"


def show(value: object) -> str:
    """A value as it would look in TOML, for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return str(value)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@dataclass(frozen=True, slots=True)
class Section:
    """One TOML table being checked: its values, its dotted key, and where problems go."""

    table: Table
    key: str
    problems: Problems

    def check_keys(self, known: Collection[str]) -> None:
        """Unknown keys are errors: a typo must not silently leave a default in force."""
        for name in self.table:
            if name not in known:
                self.problems.add(join(self.key, name), unknown_key_message(name, known))

    def sub(self, name: str) -> Section:
        """The sub-table `name`; empty when missing or (with a problem) not a table."""
        key = join(self.key, name)
        value = self.table.get(name, {})
        if not isinstance(value, dict):
            self.problems.add(key, f"expected a table such as [{key}], got {show(value)}")
            value = {}
        return Section(value, key, self.problems)

    def get(self, name: str, parse: Parser[T], default: T) -> T:
        """`parse(table[name])`; `default` when the key is missing or (with a problem) invalid."""
        if name not in self.table:
            return default
        try:
            return parse(self.table[name])
        except ValueError as exc:
            self.problems.add(join(self.key, name), str(exc))
            return default

    def need(self, name: str, parse: Parser[T]) -> T | None:
        """`parse(table[name])`; None, with a problem, when the key is missing or invalid."""
        if name not in self.table:
            self.problems.add(join(self.key, name), f"missing {show(name)}; this key is required")
            return None
        return self.get(name, parse, None)

    def items(self, name: str, parse: Parser[T], example: str) -> list[T]:
        """Each valid item of the array `name`; a problem for a non-array or each bad item."""
        key, value = join(self.key, name), self.table.get(name, [])
        if not isinstance(value, list):
            self.problems.add(key, f"expected a list such as {example}, got {show(value)}")
            return []
        return list(_valid_items(value, key, parse, self.problems))


def unknown_key_message(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key {show(name)}; did you mean {show(close[0])}?"
    return f"unknown key {show(name)}; expected one of: {', '.join(known)}"


def _valid_items(
    values: list[object], key: str, parse: Parser[T], problems: Problems
) -> Iterable[T]:
    for index, value in enumerate(values):
        try:
            yield parse(value)
        except ValueError as exc:
            problems.add(f"{key}[{index}]", str(exc))


def duration(value: object) -> float:
    """'30s', '1h30m' ... or a whole number of seconds; more than zero, at most `MAX_BAN`."""
    total = _duration_seconds(value, MAX_BAN)
    if total <= 0:
        raise ValueError(f"a duration must be more than zero, got {show(value)}")
    return total


def duration_or_zero(value: object) -> float:
    """Like `duration`, but 0 (or "0s") is allowed: for a time whose zero turns something off."""
    total = _duration_seconds(value, MAX_BAN)
    if total < 0:
        raise ValueError(f"a duration cannot be negative, got {show(value)}; write 0 for none")
    return total


# The longest hold: below TCP's initial retransmission timeout (1 s, RFC 6298), so that a held
# SYN gets its verdict before the client sends it again; and every new client pays it.
HOLD_LONGEST = 0.5
_HOLD = re.compile(r"(\d{1,6}(?:\.\d{1,6})?)(ms|s)")


def hold_time(value: object) -> float:
    """`[kernel] hold`: "5ms", "0.01s", or 0 / "0" (off); at most `HOLD_LONGEST`, in seconds."""
    if (value == 0 and not isinstance(value, bool)) or value in ("0", "0s", "0ms"):
        return 0.0
    match = _HOLD.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            f'expected a hold such as "5ms" or "0.01s", or "0" for none, got {brief(show(value))}'
        )
    seconds = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    if not 0 < seconds <= HOLD_LONGEST:
        raise ValueError(
            f"a hold must be more than 0 and at most {format_hold(HOLD_LONGEST)} (below TCP's "
            f"1 s SYN retransmission, and every new client waits it), got {show(value)}"
        )
    return seconds


def format_hold(seconds: float) -> str:
    """A hold as the config writes it: 0.005 -> '5ms'."""
    return f"{round(seconds * 1000, 3):g}ms" if seconds else "0"


def lookback(value: object) -> float:
    """Like `duration`, for how far back something reaches: at most `MAX_LOOKBACK`."""
    total = _duration_seconds(value, MAX_LOOKBACK)
    if total <= 0:
        raise ValueError(f"a duration must be more than zero, got {show(value)}")
    return total


def _duration_seconds(value: object, longest: Longest) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        if value > longest.seconds:  # before float(): a 400-digit int overflows it
            raise TooLong(longest.refusal(f"{brief(str(value))} seconds"))
        return float(value)
    if isinstance(value, str) and _ZERO_DURATION.fullmatch(value):
        return 0.0
    if isinstance(value, str):
        try:
            return parse_duration(value, longest)
        except TooLong:
            raise  # it says why
        except ValueError:
            pass
    raise ValueError(f"expected a duration such as 30s, 10m, 1h, 1d, 1w, got {brief(show(value))}")


def ports(value: object) -> range:
    """A port (23, "23") or a range ("5900-5910") of ports 1-65535."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return parse_ports(value)
    backwards = _RANGE.fullmatch(value) if isinstance(value, str) else None
    if backwards and int(backwards[1]) > int(backwards[2]):
        fixed = f"{int(backwards[2])}-{int(backwards[1])}"
        raise ValueError(f"the range {show(value)} ends before it starts; write {show(fixed)}")
    raise ValueError(
        f'expected a port 1-65535 such as 23 or a range such as "5900-5910", got {show(value)}'
    )


def at_least(minimum: int) -> Parser[int]:
    """A whole number from `minimum` to MAX_COUNT."""

    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value > MAX_COUNT:
                raise ValueError(
                    f"expected a whole number of at most {MAX_COUNT}, got {brief(show(value))}"
                )
            if value >= minimum:
                return value
        raise ValueError(f"expected a whole number of at least {minimum}, got {show(value)}")

    return parse


def between(low: int, high: int) -> Parser[int]:
    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise ValueError(f"expected a whole number from {low} to {high}, got {brief(show(value))}")

    return parse


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        fixed = value.strip().lower()
        raise ValueError(f"expected true or false without quotes, got {show(value)}; write {fixed}")
    raise ValueError(f"expected true or false, got {show(value)}")


def one_of(choices: type[E]) -> Parser[E]:
    names = [choice.value for choice in choices]

    def parse(value: object) -> E:
        if isinstance(value, str) and value in names:
            return choices(value)
        raise ValueError(choice_message(value, names))

    return parse


def choice_message(value: object, names: Sequence[str]) -> str:
    listed = ", ".join(show(name) for name in names)
    hint = difflib.get_close_matches(value.lower(), names, n=1) if isinstance(value, str) else []
    guess = f"; did you mean {show(hint[0])}?" if hint else ""
    return f"expected one of {listed}, got {show(value)}{guess}"


def per_protocol(
    section: Section, name: str, choices: type[E], default: E, example: str
) -> dict[Proto, E]:
    """`name = "x"` for both protocols, or `name = { tcp = "x", udp = "y" }` for each one
    (a protocol left out keeps `default`); `example` is such a table, for messages."""
    value = section.table.get(name)
    if isinstance(value, dict):
        table = Section(value, join(section.key, name), section.problems)
        table.check_keys([proto.value for proto in Proto])
        return {proto: table.get(proto.value, one_of(choices), default) for proto in Proto}
    return dict.fromkeys(Proto, section.get(name, _one_or_table(choices, example), default))


def _one_or_table(choices: type[E], example: str) -> Parser[E]:
    def parse(value: object) -> E:
        if isinstance(value, str):
            return one_of(choices)(value)
        names = ", ".join(show(choice.value) for choice in choices)
        raise ValueError(
            f"expected one of {names}, or a table such as {example}, got {show(value)}"
        )

    return parse


def proto(value: object) -> Proto:
    return one_of(Proto)(value)


def absolute_path(value: object) -> Path:
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value)
    raise ValueError(f'expected an absolute path such as "/var/lib/porttrap", got {show(value)}')


def table_name(value: object) -> str:
    if isinstance(value, str) and _TABLE_NAME.fullmatch(value):
        return value
    raise ValueError(
        "expected an nftables table name: a letter, then up to 31 letters, digits or _, "
        f'such as "porttrap", got {show(value)}'
    )


def address(value: object) -> IPAddress:
    """One local address, IPv4 or IPv6 (an IPv4-mapped one as IPv4: `unmap`)."""
    try:
        if isinstance(value, str):
            return unmap(ipaddress.ip_address(value))
    except ValueError:
        pass
    raise ValueError(
        f'expected a single address such as "203.0.113.5" or "2001:db8::5", got {show(value)}'
    )


def pattern(value: object) -> str:
    """A regular expression (Python's `re`), matched against the whole text of an address."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a regular expression in a string, got {show(value)}")
    try:
        with warnings.catch_warnings():
            # Python warns about some patterns ("[[:digit:]]") that a later Python may read
            # differently; it reads them as today, as port_trap did (the importer notes it).
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(value)
    except re.error as err:
        raise ValueError(f"{show(value)} is not a valid regular expression: {err}") from None
    if nested_repeat(value):
        raise ValueError(f"{show(value)} {NESTED_REPEAT}")
    return value


NESTED_REPEAT = (
    "repeats a part that itself repeats or has alternatives, such as (a+)+ or (a|b)*: "
    "matching one address can take hours; write it without the nested repeat, or list the "
    "networks in [allow] addresses"
)
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})
_LONG_REPEAT = 16  # a part repeated more times than this counts as repeated without bound


def nested_repeat(pattern: str) -> bool:
    """Whether `pattern` (valid) repeats without bound a part that repeats or branches, the
    shape whose backtracking takes exponential time, (.*)*x on a 40-character text for hours."""
    parser: Any = importlib.import_module("re._parser")  # re's own parser: its tree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # said once, where it is compiled
        tree = parser.parse(pattern)
    return _nested(tree, repeated=False)


def _nested(tree: Any, repeated: bool) -> bool:
    """Whether `tree` has a repeat or a branch, inside a repeat when `repeated`."""
    for op, arguments in tree.data:
        if str(op) in _REPEATS:
            _, high, body = arguments
            if (repeated and high > 1) or _nested(body, repeated or high > _LONG_REPEAT):
                return True
        elif (str(op) == "BRANCH" and repeated) or any(
            _nested(part, repeated) for part in _subtrees(arguments)
        ):
            return True
    return False


def _subtrees(value: Any) -> Iterable[Any]:
    if hasattr(value, "data"):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _subtrees(item)


def network(value: object) -> IPNetwork:
    """An address (as a /32 or /128) or a network in CIDR notation, IPv4 or IPv6 (an
    IPv4-mapped one as IPv4: `unmap_network`)."""
    if isinstance(value, str):
        try:
            written = ipaddress.ip_network(value, strict=True)
        except ValueError:
            _raise_if_host_bits(value)
        else:
            return unmap_written(written)
    raise ValueError(
        'expected an address or a network such as "192.0.2.0/24" or "2001:db8::7", '
        f"got {show(value)}"
    )


def _raise_if_host_bits(value: str) -> None:
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return
    single = value.split("/", 1)[0]
    raise ValueError(
        f"{show(value)} has host bits set: write the network {show(str(loose))}, "
        f"or {show(single)} for the single address"
    )
