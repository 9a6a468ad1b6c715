"""Parsing and printing of the small units people write in configs and on the command line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")

# The bounds of every time and duration porttrap takes in, from the config, the command line,
# the control socket, imports and its own database: one place, so that no entry point lets
# through a value the kernel refuses or a date that cannot be shown (a 10^12-week ban once
# wedged the daemon: nftables refused it at every start).


@dataclass(frozen=True, slots=True)
class Longest:
    """The longest duration of one kind, in seconds, and as messages name it."""

    seconds: float
    text: str
    hint: str = ""

    def refusal(self, shown: str) -> str:
        """Why `shown` (a duration as given, or its seconds) is refused."""
        return f"{shown} is longer than {self.text}, the longest porttrap takes{self.hint}"


# The longest ban, and the longest time of anything else that runs (a kernel timeout, a
# command's time limit). Every backend holds it: nftables keeps a timeout in 64 bits of
# nanoseconds (584 years), ipset re-arms a ban longer than its 24.8 days
# (porttrap.firewall.rearm). A ban meant to last longer is a permanent one, and only a
# permanent one: nothing longer is ever turned into "permanent" without the admin saying so.
MAX_BAN = Longest(
    3650 * 86400.0, "3650d (10 years)", "; a ban that should never end is a permanent one"
)
# How far back a look-back reaches (`forget_after`, `hit_retention`, `report --since`): further
# than 1970, so that "never forget" can be written (the port_trap import writes 5200w).
MAX_LOOKBACK = Longest(36500 * 86400.0, "36500d (100 years)")
# Times are seconds since 1970 and before 2106 (2^32 s): a later one in a row is damage, not a
# date, and every time porttrap derives from an accepted one stays far inside what the kernel
# (584 years from now) and the date functions (year 9999) take.
LAST_TIME = 2.0**32


def duration_problem(seconds: float, longest: Longest = MAX_BAN) -> str | None:
    """What is wrong with `seconds` as a duration (None: nothing): it must be a number of
    seconds above zero and at most `longest`. Every comparison with NaN is False, so NaN (like
    infinity) fails; a 400-digit int compares exactly, without overflowing a float."""
    if not seconds > 0:
        return f"a duration must be a number of seconds above zero, got {_cut(seconds)}"
    if not seconds <= longest.seconds:
        return longest.refusal(f"a duration of {_cut(seconds)} seconds")
    return None


def bounded(seconds: float, longest: Longest = MAX_BAN) -> float:
    """`seconds` checked by `duration_problem`, as a float; ValueError with the problem."""
    problem = duration_problem(seconds, longest)
    if problem is not None:
        raise ValueError(problem)
    return float(seconds)


def time_problem(at: float) -> str | None:
    """What is wrong with `at` as a time in seconds since 1970 (None: nothing)."""
    if not 0 <= at < LAST_TIME:
        return f"{_cut(at)} is not a time from 1970 to 2106 in seconds"
    return None


def _cut(value: object) -> str:
    return brief(repr(value))


def brief(text: str) -> str:
    """A value for a message: a 400-digit one cut short rather than printed whole."""
    return text if len(text) <= 24 else f"{text[:12]}...({len(text)} characters)"


class TooLong(ValueError):
    """A duration that reads well but is longer than the longest of its kind."""


def parse_duration(text: str, longest: Longest = MAX_BAN) -> float:
    """'30s', '10m', '1h', '1d', '1w', or combined '1h30m', to seconds, at most `longest`.
    Raises ValueError."""
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ValueError("empty duration; expected e.g. 30s, 10m, 1h, 1d, 1w")
    pos, total = 0, 0.0
    # Each part matched where the last ended: finditer would try every position of a long
    # run of digits, which takes quadratic time (seconds for 5,000 digits).
    while match := _PART.match(compact, pos):
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact):
        raise ValueError(f"bad duration {text!r}; expected e.g. 30s, 10m, 1h, 1d, 1w or 1h30m")
    if total <= 0:
        raise ValueError(f"duration {text!r} must be more than zero")
    if not total <= longest.seconds:
        raise TooLong(longest.refusal(f"duration {_cut(text)}"))
    return total


def format_duration(seconds: float) -> str:
    """3700 -> '1h1m40s'; the inverse of parse_duration for whole seconds."""
    rest = round(seconds)
    if rest <= 0:
        return "0s"
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_ports(text: str | int) -> range:
    """'23', 23 or '5900-5910' to a range of ports 1-65535. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"expected a port or a range such as '5900-5910', got {text!r}")
    if isinstance(text, int):
        low = high = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
        if not match:
            raise ValueError(f"expected a port or a range such as '5900-5910', got {text!r}")
        low = int(match.group(1))
        high = int(match.group(2) or low)
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise ValueError(f"ports are 1-65535, got {text!r}")
    if high < low:
        raise ValueError(f"range {text!r} ends before it starts")
    return range(low, high + 1)


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC ('2026-11-22T05:00:00Z'); None stays None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
