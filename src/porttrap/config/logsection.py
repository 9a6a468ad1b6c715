"""The `[log]` section: the level, and `[[log.output]]` tables (where lines go, in which format).

Checked without touching the file system: whether a file can be opened, or syslog reached, is
known only when the daemon starts (and is an error then, see porttrap.logoutputs).
"""

from __future__ import annotations

import difflib
import os.path
from collections.abc import Iterable
from pathlib import Path

from porttrap.config import fields
from porttrap.config.fields import Problems, Section
from porttrap.config.schema import LogConfig, LogFormat, LogOutput

KEYS = ("level", "output")
OUTPUT_KEYS = ("to", "format", "facility")
LEVELS = ("debug", "info", "warning", "error")
STREAMS = ("stderr", "syslog")
# The facilities of Linux's syslog.h (SysLogHandler also knows a few of other systems).
FACILITIES = ("auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news",
              "syslog", "user", "uucp", *(f"local{n}" for n in range(8)))  # fmt: skip
_TO_EXAMPLE = '"stderr", "syslog" or an absolute file path such as "/var/log/porttrap.log"'


def build_log(section: Section) -> LogConfig:
    """The `[log]` section; problems for every wrong key (defaults stand in for them)."""
    section.check_keys(KEYS)
    level = section.get("level", _level, LogConfig().level)
    if "output" not in section.table:
        return LogConfig(level=level)
    outputs = _outputs(section.table["output"], section.problems)
    return LogConfig(level=level, outputs=outputs or LogConfig().outputs)


def _level(value: object) -> str:
    if isinstance(value, str) and value in LEVELS:
        return value
    raise ValueError(fields.choice_message(value, LEVELS))


def _outputs(value: object, problems: Problems) -> tuple[LogOutput, ...]:
    if not isinstance(value, list):
        problems.add(
            "log.output",
            f"expected [[log.output]] tables, each with to and format, got {fields.show(value)}",
        )
        return ()
    if not value:
        problems.add(
            "log.output",
            "an empty list would leave porttrap without a log: leave output out for the "
            "default (stderr), or add a [[log.output]] table",
        )
        return ()
    found = [(index, _output(index, item, problems)) for index, item in enumerate(value)]
    valid = [(index, output) for index, output in found if output is not None]
    _check_files(valid, problems)
    return tuple(output for _, output in valid)


def _output(index: int, item: object, problems: Problems) -> LogOutput | None:
    """One `[[log.output]]` table; None when anything in it is wrong (problems say what)."""
    key = f"log.output[{index}]"
    if not isinstance(item, dict):
        problems.add(key, f"expected a table with to and format, got {fields.show(item)}")
        return None
    before, default = len(problems), LogOutput()
    section = Section(item, key, problems)
    section.check_keys(OUTPUT_KEYS)
    problems_before_to = len(problems)
    to = section.get("to", _to, default.to)
    valid_to = len(problems) == problems_before_to
    form = section.get("format", fields.one_of(LogFormat), default.format)
    facility = section.get("facility", _facility, default.facility)
    if "facility" in item and to != "syslog" and valid_to:
        problems.add(
            f"{key}.facility",
            f"facility is for syslog outputs only, and this one writes to {fields.show(to)}; "
            'remove it, or set to = "syslog"',
        )
    if len(problems) > before:
        return None
    return LogOutput(to=to, format=form, facility=facility)


def _to(value: object) -> str:
    if isinstance(value, str) and value in STREAMS:
        return value
    if isinstance(value, str) and Path(value).is_absolute():
        return os.path.normpath(value)
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value.strip().lower(), STREAMS, n=1)
        hint = f"; did you mean {fields.show(close[0])}?" if close else ""
        hint = hint or ("; a file path must be absolute" if value else "")
    raise ValueError(f"expected {_TO_EXAMPLE}, got {fields.show(value)}{hint}")


def _facility(value: object) -> str:
    if isinstance(value, str) and value in FACILITIES:
        return value
    raise ValueError(fields.choice_message(value, FACILITIES))


def _check_files(outputs: Iterable[tuple[int, LogOutput]], problems: Problems) -> None:
    """Two outputs writing one file would interleave two formats in it."""
    owners: dict[str, int] = {}
    for index, output in outputs:
        if output.to in STREAMS:
            continue
        other = owners.setdefault(output.to, index)
        if other != index:
            problems.add(
                f"log.output[{index}].to",
                f"{output.to} is already written by log.output[{other}]; two outputs in one "
                "file would mix their lines: give each output a file of its own",
            )
