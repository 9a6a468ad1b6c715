"""Parsing and printing of the small units people write in configs and on the command line."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """'30s', '10m', '1h', '1d', '1w', or combined '1h30m', to seconds. Raises ValueError."""
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
