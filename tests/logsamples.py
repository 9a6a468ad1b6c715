"""Recorded event samples (tests/data/logs/NAME.events.json) and what each log output writes for
them, through the real path: `log.event()` -> the logging record -> an output's formatter and
level. The expected text of each output is stored beside the sample (NAME.OUTPUT.log)."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from porttrap import log
from porttrap.config.schema import BanPolicy, LogFormat, Modes, Respond, TrapMode
from porttrap.logformats import RENDERERS, Context
from porttrap.model import Outcome, Proto

DATA = Path(__file__).parent / "data" / "logs"
SCENARIOS = ("connect", "stealth", "respond")
# output name -> (format, written to a file). "portsentry" is the stderr and syslog form.
OUTPUTS = {
    "porttrap": (LogFormat.PORTTRAP, False),
    "json": (LogFormat.JSON, False),
    "portsentry": (LogFormat.PORTSENTRY, False),
    "portsentry-file": (LogFormat.PORTSENTRY, True),
    "portsentry-history": (LogFormat.PORTSENTRY_HISTORY, True),
    "net-bouncer": (LogFormat.NET_BOUNCER, True),
}
HOSTNAME, PID = "gate", 4242
_ADDRESS_FIELDS = ("src", "dst")


@dataclass(frozen=True)
class Sample:
    name: str
    context: Context
    events: list[dict[str, Any]]

    def expected(self, output: str) -> list[str]:
        path = DATA / f"{self.name}.{output}.log"
        return path.read_text(encoding="utf-8").splitlines()


def sample(name: str) -> Sample:
    data = json.loads((DATA / f"{name}.events.json").read_text(encoding="utf-8"))
    spec = data["context"]
    context = Context(
        modes=Modes(tcp=TrapMode(spec["tcp"]), udp=TrapMode(spec["udp"])),
        ban=BanPolicy(
            respond_tcp=Respond(spec["respond_tcp"]), respond_udp=Respond(spec["respond_udp"])
        ),
        tz=UTC,
        hostname=HOSTNAME,
        pid=PID,
    )
    return Sample(name, context, data["events"])


def typed(fields: dict[str, Any]) -> dict[str, Any]:
    """Fields with the types the daemon logs them with (addresses, enums), from JSON."""
    values = dict(fields)
    for key in _ADDRESS_FIELDS:
        if key in values:
            values[key] = ipaddress.ip_address(values[key])
    if "proto" in values:
        values["proto"] = Proto(values["proto"])
    if "outcome" in values:
        values["outcome"] = Outcome(values["outcome"])
    return values


class _Capture(logging.Handler):
    """An output that keeps its lines; `at` is the time every record gets (the sample's)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.at = 0.0

    def handle(self, record: logging.LogRecord) -> bool:
        record.created = self.at
        record.msecs = (self.at * 1000) % 1000
        return bool(super().handle(record))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if text:
            self.lines.extend(text.split("\n"))


@contextmanager
def _outputs(context: Context, names: tuple[str, ...]) -> Iterator[dict[str, _Capture]]:
    """Capturing outputs on porttrap's logger, levelled as `log.configure` levels them with
    `run -v`: porttrap and json take debug events, compatible formats info and above."""
    captures: dict[str, _Capture] = {}
    for name in names:
        kind, file = OUTPUTS[name]
        capture = _Capture()
        capture.setFormatter(log.formatter(kind, context, header=file))
        capture.setLevel(logging.INFO if kind in RENDERERS else logging.DEBUG)
        captures[name] = capture
        log.LOGGER.addHandler(capture)
    level, propagate = log.LOGGER.level, log.LOGGER.propagate
    log.LOGGER.setLevel(logging.DEBUG)
    log.LOGGER.propagate = False
    try:
        yield captures
    finally:
        log.LOGGER.setLevel(level)
        log.LOGGER.propagate = propagate
        for capture in captures.values():
            log.LOGGER.removeHandler(capture)


def render(scenario: Sample, names: tuple[str, ...] = tuple(OUTPUTS)) -> dict[str, list[str]]:
    """The lines each output writes for the sample's events, in order."""
    with _outputs(scenario.context, names) as captures:
        for item in scenario.events:
            for capture in captures.values():
                capture.at = item["at"]
            level = logging.getLevelNamesMapping()[item["level"].upper()]
            log.event(item["name"], level, **typed(item["fields"]))
    return {name: capture.lines for name, capture in captures.items()}
