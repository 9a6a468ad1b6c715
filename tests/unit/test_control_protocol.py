"""The control protocol's checks: what the CLI makes of the daemon's answer, and the ban
durations a request may carry (tests/fuzz/test_fuzz_control.py fuzzes both)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from porttrap.core import requests
from porttrap.daemon import control
from porttrap.errors import PorttrapError, RemoteConfigError, UsageError


def test_the_daemon_s_answer_is_returned_when_ok() -> None:
    assert control.answer_of(b'{"ok": true, "count": 1}\n') == {"ok": True, "count": 1}


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"", "the daemon closed the control connection without an answer"),
        (b"\xff\xfe\n", "the daemon's answer is not JSON"),
        (b"HTTP/1.1 400\n", "the daemon's answer is not JSON"),
        (b"[]\n", "the daemon's answer is not a JSON object: b'[]\\n'"),
        (b'{"ok": false, "error": "no"}\n', "no"),
    ],
)
def test_what_is_not_an_answer_or_a_refusal_is_a_porttrap_error(data: bytes, said: str) -> None:
    with pytest.raises(PorttrapError) as caught:
        control.answer_of(data)
    assert str(caught.value).startswith(said)


def test_a_refused_reload_gives_the_problems() -> None:
    with pytest.raises(RemoteConfigError) as caught:
        control.answer_of(b'{"ok": false, "error": "invalid", "problems": ["a:1: bad"]}\n')
    assert caught.value.problems == ["a:1: bad"]


@pytest.mark.parametrize("duration", [math.inf, math.nan, 1e308, 0, -1])
def test_a_ban_duration_the_fuzzer_found_is_refused(duration: float) -> None:
    with pytest.raises(UsageError, match=r"^bad ban duration: "):
        requests.ban({"targets": ["198.51.100.7"], "for": duration})


def test_a_request_nested_too_deeply_is_answered() -> None:
    server = control.ControlServer(Path("/nonexistent"), {"ban": lambda _request: {}})
    line = b'{"cmd": "ban", "targets": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    answer = asyncio.run(server._answer(line))
    assert answer == {"ok": False, "error": "bad request: JSON nested too deeply"}
