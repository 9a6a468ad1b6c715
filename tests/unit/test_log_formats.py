"""Each log format against recorded events: tests/data/logs/NAME.events.json, with the exact lines
of every output stored beside it (NAME.OUTPUT.log). The compatible lines were checked against
PortSentry's source (portsentry.c, portsentry_io.c: Log and WriteBlocked) and net-bouncer's
README; fail2ban's own matching of them is tests/integration/test_fail2ban.py."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logsamples import OUTPUTS, SCENARIOS, render, sample
from porttrap import log
from porttrap.config.schema import LogFormat
from porttrap.logformats import (
    Context,
    LogEvent,
    history_lines,
    net_bouncer_lines,
    packet_type,
    portsentry_lines,
    syslog_header,
)
from porttrap.model import Outcome

CONTEXT = Context(tz=UTC, hostname="gate", pid=4242)


@pytest.mark.parametrize("output", list(OUTPUTS))
@pytest.mark.parametrize("name", SCENARIOS)
def test_recorded_events_give_the_stored_lines(name: str, output: str) -> None:
    scenario = sample(name)
    assert render(scenario, (output,))[output] == scenario.expected(output)


def test_porttrap_lines_are_what_the_daemon_always_wrote() -> None:
    """The porttrap format is rendered from the key=value text event() has always built."""
    lines = render(sample("connect"), ("porttrap",))["porttrap"]
    assert lines[2] == (
        "level=info event=hit src=198.51.100.7 sport=51234 dst=203.0.113.1 port=23 "
        "proto=tcp kind=connect outcome=banned"
    )
    assert 'reason="in use" holder="rpcbind pid=412"' in lines[-2]


# --- what compatible formats leave out ---


SPARED = [o for o in Outcome if o not in (Outcome.BANNED, Outcome.COUNTED,
                                          Outcome.ALREADY_BANNED, Outcome.LOGGED)]  # fmt: skip


@pytest.mark.parametrize("outcome", SPARED)
def test_no_compatible_line_names_a_source_porttrap_would_not_ban(outcome: Outcome) -> None:
    """fail2ban would ban whatever address such a line names: the allow list, the host itself."""
    hit = hit_event(outcome)
    for render_lines in (portsentry_lines, history_lines, net_bouncer_lines):
        assert render_lines(hit, CONTEXT) == []


def test_debug_events_never_reach_compatible_outputs() -> None:
    """Unverified hits that did not ban (a forged flood) are debug events: none is written."""
    lines = render(sample("stealth"), ("net-bouncer",))["net-bouncer"]
    assert not any("192.0.2.98" in line or "192.0.2.99" in line for line in lines)


@pytest.mark.parametrize("name", ["start", "trap-set", "unban", "ban-expired", "message"])
def test_events_without_a_compatible_line_write_nothing(name: str) -> None:
    event = LogEvent(name, logging.INFO, 0.0, {"address": "198.51.100.7", "src": "198.51.100.7"})
    for render_lines in (portsentry_lines, history_lines, net_bouncer_lines):
        assert render_lines(event, CONTEXT) == []


def test_an_admin_ban_has_no_portsentry_block_line() -> None:
    """PortSentry only blocked on its traps; `porttrap ban` has no line of its own there."""
    event = LogEvent("ban", logging.INFO, 0.0, {"address": "198.51.100.7", "reason": "manual"})
    assert portsentry_lines(event, CONTEXT) == []


def hit_event(outcome: Outcome) -> LogEvent:
    fields = {"src": "198.51.100.7", "port": 23, "proto": "tcp", "kind": "connect",
              "outcome": outcome}  # fmt: skip
    return LogEvent("hit", logging.INFO, 1795334400.0, fields)


# --- PortSentry's packet names ---


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("syn", "TCP SYN/Normal scan"),
        ("fin", "TCP FIN scan"),
        ("null", "TCP NULL scan"),
        ("xmas", "TCP XMAS scan"),
        ("other FSRPAU", "TCP XMAS scan"),  # PortSentry tests FIN, URG and PSH first
        ("other SEC", "TCP SYN/Normal scan"),  # ECN bits are not among PortSentry's six
        ("other EC", "TCP NULL scan"),
        ("ack", "Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 1 PSH: 0 URG: 0 RST: 0"),
        ("other R", "Unknown Type: TCP Packet Flags: SYN: 0 FIN: 0 ACK: 0 PSH: 0 URG: 0 RST: 1"),
    ],
)
def test_probe_classes_get_portsentrys_packet_names(kind: str, name: str) -> None:
    assert packet_type(kind) == name


# --- the syslog header of file outputs ---


def test_the_syslog_header_pads_the_day_as_syslog_does() -> None:
    # 2026-03-07 09:05:02 UTC
    assert syslog_header(1772874302.9, CONTEXT) == "Mar  7 09:05:02 gate porttrap[4242]: "


def test_local_time_follows_the_context_time_zone() -> None:
    plus_two = Context(tz=timezone(timedelta(hours=2)))
    event = hit_event(Outcome.BANNED)
    assert net_bouncer_lines(event, plus_two)[0].startswith("2026-11-22 10:00:00.000 ")
    assert history_lines(event, plus_two)[0].startswith("1795334400 - 11/22/2026 10:00:00 ")


# --- json ---


def test_json_keeps_field_types_and_drops_none() -> None:
    (line,) = render(sample("connect"), ("json",))["json"][10:11]
    assert json.loads(line) == {
        "ts": "2026-11-22T08:01:21.001Z",
        "level": "info",
        "event": "permanent-ban",
        "fields": {"address": "203.0.113.9", "ban_count": 3, "reason": "trap:udp/69"},
    }


def test_json_of_a_preformatted_record_with_a_traceback() -> None:
    """Callers that log `fields()` text (LOGGER.exception) still get their name and fields."""
    formatter = log.formatter(LogFormat.JSON, CONTEXT)
    text = log.fields("trap-error", proto="tcp", port=23, address="::")
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
        record = log.LOGGER.makeRecord("porttrap", logging.ERROR, __file__, 1, text, (), info)
    parsed = json.loads(formatter.format(record))
    assert (parsed["event"], parsed["fields"]) == (
        "trap-error",
        {"proto": "tcp", "port": "23", "address": "::"},
    )
    assert parsed["traceback"].endswith("ValueError: boom")


def test_json_of_another_librarys_message() -> None:
    formatter = log.formatter(LogFormat.JSON, CONTEXT)
    record = logging.getLogger("asyncio").makeRecord(
        "asyncio", logging.ERROR, __file__, 1, "Task %s failed", ("x",), None
    )
    parsed = json.loads(formatter.format(record))
    assert (parsed["event"], parsed["fields"]) == ("message", {"text": "Task x failed"})


# --- parse_fields is the inverse of fields ---

_NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True)
_VALUES = st.text(st.characters(codec="utf-8"), max_size=20)


@given(
    name=_NAMES,
    values=st.dictionaries(_NAMES.filter(lambda n: n not in ("event", "name")), _VALUES),
)
def test_parse_fields_reads_back_what_fields_wrote(name: str, values: dict[str, str]) -> None:
    parsed = log.parse_fields(log.fields(name, **values))
    assert parsed == (name, values)


def test_parse_fields_refuses_other_text() -> None:
    assert log.parse_fields("Task exception was never retrieved") is None
