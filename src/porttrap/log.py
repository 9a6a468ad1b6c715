"""One line per event, with stable key=value fields, to stderr (journald keeps it).

    event=ban address=198.51.100.7 until=2026-11-22T05:00:00Z ban_count=2 reason=trap:tcp/23

Values with spaces or quotes are double-quoted; field names never change between releases.

`event()` hands each handler the event's name and fields as data (on the record, besides the
key=value text), so every output format renders from them: porttrap's own lines, JSON, and
the lines of PortSentry and net-bouncer that fail2ban filters match (`porttrap.logformats`).
`configure()` sets the outputs of `[log]` (stderr, files, syslog); `reopen()` reopens the
files after logrotate moved them (SIGHUP).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from porttrap import units
from porttrap.config.schema import Config, LogFormat, LogOutput
from porttrap.logformats import (
    HEADERLESS,
    RENDERERS,
    Context,
    LogEvent,
    Render,
    json_line,
    syslog_header,
)
from porttrap.logoutputs import SYSLOG_ADDRESS, FileOutput, LineStream, SyslogOutput

LOGGER = logging.getLogger("porttrap")
iso = units.iso  # the log lines' time format
EVENT_ATTR = "porttrap_event"  # LogRecord attributes that carry the event as data
FIELDS_ATTR = "porttrap_fields"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip
_PAIR = re.compile(r'([^ =]+)=("(?:[^"\\]|\\.)*"|[^ ]*)')  # fields() joins with spaces
_UNESCAPE = re.compile(r"\\(.)")


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


def parse_fields(text: str) -> tuple[str, dict[str, str]] | None:
    """The name and fields of a `fields()` line (values as text); None for any other text.
    Only for records logged as preformatted text (`LOGGER.exception(fields(...))`)."""
    pairs = [(m.group(1), _unquote(m.group(2))) for m in _PAIR.finditer(text)]
    if not pairs or pairs[0][0] != "event":
        return None
    return pairs[0][1], dict(pairs[1:])


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


def event(name: str, level: int = logging.INFO, **values: Any) -> None:
    """Log one event line; handlers also get `name` and `values` as data."""
    if LOGGER.isEnabledFor(level):
        extra = {EVENT_ATTR: name, FIELDS_ATTR: values}
        LOGGER.log(level, fields(name, **values), extra=extra)


def event_of(record: logging.LogRecord, traceback: str | None = None) -> LogEvent:
    """The event a record carries: its data when `event()` logged it; else the fields of its
    text when that is a `fields()` line; else a "message" event with the text."""
    name = getattr(record, EVENT_ATTR, None)
    values = getattr(record, FIELDS_ATTR, None)
    if isinstance(name, str) and isinstance(values, dict):
        return LogEvent(name, record.levelno, record.created, values, traceback)
    text = record.getMessage()
    parsed = parse_fields(text)
    name, values = parsed if parsed is not None else ("message", {"text": text})
    return LogEvent(name, record.levelno, record.created, values, traceback)


# -- formatters --------------------------------------------------------------------------


class _Formatter(logging.Formatter):
    """porttrap's own lines: `level=info event=... k=v`, without a timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        text = record.getMessage()
        if not text.startswith("event="):
            text = fields("message", text=text)
        line = f"level={level} {text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        traceback = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(event_of(record, traceback), record.levelname.lower())


class _CompatFormatter(logging.Formatter):
    """The lines of another program's format; "" when it has none for the event (outputs
    write nothing then). `header`: start each line as syslog would in a file."""

    def __init__(self, render: Render, context: Context, *, header: bool) -> None:
        super().__init__()
        self._render = render
        self._context = context
        self._header = header

    def format(self, record: logging.LogRecord) -> str:
        lines = self._render(event_of(record), self._context)
        if self._header and lines:
            header = syslog_header(record.created, self._context)
            lines = [header + line for line in lines]
        return "\n".join(lines)


def formatter(kind: LogFormat, context: Context, *, header: bool = False) -> logging.Formatter:
    """The formatter of one format; `header`: a file output (see _CompatFormatter)."""
    if kind is LogFormat.PORTTRAP:
        return _Formatter()
    if kind is LogFormat.JSON:
        return _JsonFormatter()
    return _CompatFormatter(RENDERERS[kind], context, header=header and kind in HEADERLESS)


# -- set-up ------------------------------------------------------------------------------


def setup(verbose: bool = False) -> None:
    """Send porttrap's events to stderr, one line each (no timestamps: journald adds them)."""
    handler = LineStream(sys.stderr)
    handler.setFormatter(_Formatter())
    _install([handler], logging.DEBUG if verbose else logging.INFO)


def configure(config: Config, verbose: bool = False, syslog_address: str = SYSLOG_ADDRESS) -> None:
    """Send events to the outputs of `config.log`; `verbose` (run -v) forces debug.

    Compatible formats take info and above whatever the level: their lines are the alerts a
    fail2ban jail reads, and debug events (unverified hits that did not ban) never reach
    them. Every output is opened first: a file or syslog that cannot be opened raises
    PorttrapError (what, where, how to fix it) and the outputs in use stay as they were."""
    level = logging.DEBUG if verbose else LEVELS[config.log.level]
    context = Context(config.modes, config.ban, None, socket.gethostname().split(".")[0],
                      os.getpid())  # fmt: skip
    handlers: list[logging.Handler] = []
    try:
        for index, output in enumerate(config.log.outputs):
            handlers.append(_output(output, index, context, level, syslog_address))
    except BaseException:
        for handler in handlers:
            handler.close()
        raise
    _install(handlers, min(handler.level for handler in handlers))


def _output(
    output: LogOutput, index: int, context: Context, level: int, syslog_address: str
) -> logging.Handler:
    handler: logging.Handler
    if output.to == "stderr":
        handler = LineStream(sys.stderr)
    elif output.to == "syslog":
        handler = SyslogOutput(syslog_address, output.facility, index)
    else:
        handler = FileOutput(Path(output.to), index)
    file = output.to not in ("stderr", "syslog")
    handler.setFormatter(formatter(output.format, context, header=file))
    handler.setLevel(logging.INFO if output.format in RENDERERS else level)
    return handler


def _install(handlers: Sequence[logging.Handler], level: int) -> None:
    """Replace the root logger's outputs; files and syslog sockets replaced are closed (other
    handlers, such as a test runner's, are left as they are)."""
    root = logging.getLogger()
    old = list(root.handlers)
    root.handlers[:] = list(handlers)
    root.setLevel(level)
    for handler in old:
        if isinstance(handler, FileOutput | SyslogOutput) and handler not in handlers:
            handler.close()


def _files() -> Iterator[FileOutput]:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, FileOutput):
            yield handler


def reopen() -> int:
    """Reopen every log file by its path (after logrotate renamed it); how many were reopened.
    A file that cannot be reopened keeps its old one and says so (event=log-reopen-failed)."""
    count = 0
    for handler in _files():
        try:
            handler.reopen()
        except OSError as err:
            event("log-reopen-failed", logging.ERROR, path=handler.path, error=err.strerror)
            continue
        count += 1
    return count
