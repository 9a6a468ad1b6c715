"""One line per event, with stable key=value fields, to stderr (journald keeps it).

    event=ban address=198.51.100.7 until=2026-11-22T05:00:00Z ban_count=2 reason=trap:tcp/23

Values with spaces or quotes are double-quoted; field names never change between releases.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER = logging.getLogger("porttrap")


def _quote(value: object) -> str:
    text = "" if value is None else str(value)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def fields(name: str, **values: Any) -> str:
    """'event=NAME k=v ...' with None values left out."""
    parts = [f"event={name}"]
    parts += [f"{key}={_quote(value)}" for key, value in values.items() if value is not None]
    return " ".join(parts)


def event(name: str, level: int = logging.INFO, **values: Any) -> None:
    """Log one event line."""
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, fields(name, **values))


def iso(at: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC ('2026-11-22T05:00:00Z'); None stays None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        text = record.getMessage()
        if not text.startswith("event="):
            text = fields("message", text=text)
        line = f"level={level} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(verbose: bool = False) -> None:
    """Send porttrap's events to stderr, one line each (no timestamps: journald adds them)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
