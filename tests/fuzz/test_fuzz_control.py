"""Fuzzing the control socket's protocol, both ends. The daemon's end: a request line (JSON,
built from the commands and fields the protocol has, with values of every JSON type, and
broken lines) through the control server's answering, its request checks (core/requests.py)
and the pure core that carries out bans and unbans. The CLI's end: what the daemon answers,
mutated.

The promise: the daemon answers every line with {"ok": true, ...} or {"ok": false, "error":
text} and never raises; a ban it makes has finite times; the CLI gets the answer or a
PorttrapError. Budget and a longer campaign: see fuzzing.py."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from fuzzing import budget, call, mutated_bytes
from hypothesis import given
from hypothesis import strategies as st

from porttrap.config.schema import Config
from porttrap.core import requests
from porttrap.core.commands import Answer, Command, Refuse
from porttrap.core.core import Core
from porttrap.daemon import control
from porttrap.errors import PorttrapError, Refused, RemoteConfigError, UsageError
from porttrap.model import Ban

NOW = 1_800_000_000.0

TARGETS = [
    "198.51.100.7", "2001:db8::7", "203.0.113.0/24", "203.0.113.1/24", "::ffff:192.0.2.88",
    "0.0.0.0/0", "::/0", "127.0.0.1", "::1", "fe80::1%eth0", " 192.0.2.1 ", "192.0.2.256", "",
    "2001:db8::/129", "x", "\u0663.1.1.1",
]  # fmt: skip
NUMBERS = [0, -1, 1, 60, 3600, 1e300, -1e300, 2**63, 10**400, 1e-300, math.inf, -math.inf, math.nan]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(NUMBERS),
    st.text(max_size=12), st.sampled_from(TARGETS),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def requests_json(draw: st.DrawFn) -> dict[str, Any]:
    """A request as the protocol has them: a command, its fields (right type or not)."""
    request: dict[str, Any] = {}
    commands = ["ban", "ban", "ban", "unban", "top", "status", "reload", "bans", ""]
    request["cmd"] = draw(mostly(st.sampled_from(commands), json_values))
    if draw(st.integers(0, 3)):
        targets = st.lists(st.sampled_from(TARGETS), min_size=1, max_size=3)
        request["targets"] = draw(mostly(targets, st.lists(json_scalars, max_size=3) | json_values))
    if draw(st.integers(0, 3)):
        request["for"] = draw(mostly(st.sampled_from(NUMBERS), json_values))
    if draw(st.booleans()):
        request["permanent"] = draw(mostly(st.booleans(), json_values))
    if draw(st.booleans()):
        request["limit"] = draw(
            mostly(st.sampled_from([0, 1, 10, 100, 101, -1, 1.5, True]), json_values)
        )
    if draw(st.integers(0, 9)) == 0:
        del request["cmd"]
    return request


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` three times in four, `other` the rest."""
    return st.integers(0, 3).flatmap(lambda n: usual if n else other)


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    """One line as a client sends it: JSON (Python's, which writes NaN and Infinity as JSON
    readers accept them), perhaps mutated, or not JSON at all; or deeply nested."""
    how = draw(st.sampled_from(["request"] * 6 + ["any", "mutated", "nested", "bytes"]))
    if how == "nested":
        depth = draw(st.integers(1, 100_000))
        return b'{"cmd": "ban", "targets": ' + b"[" * depth + b"]" * depth + b"}\n"
    if how == "bytes":
        return draw(st.binary(max_size=60)) + b"\n"
    value = draw(requests_json()) if how != "any" else draw(json_values)
    line = json.dumps(value).encode()
    if how == "mutated":
        line = draw(mutated_bytes(line))
    return line + b"\n"


class Daemon:
    """The daemon's control handlers, as daemon/shell.py wires them, on a real pure Core;
    the commands a ban or unban produced are kept for the property to check."""

    def __init__(self) -> None:
        self.core = Core(Config(), started_at=NOW)
        self.produced: list[Command] = []
        self.handlers: dict[str, control.Handler] = {
            "status": lambda _request: {"pid": 1},
            "top": lambda request: {"limit": requests.top_limit(request)},
            "ban": lambda request: self.answer(self.core.handle(requests.ban(request), NOW)),
            "unban": lambda request: self.answer(self.core.handle(requests.unban(request), NOW)),
        }

    def answer(self, left: list[Command]) -> dict[str, Any]:
        """As DaemonShell.answer: the Answer's payload, or the Refuse raised."""
        self.produced += left
        for command in left:
            if isinstance(command, Refuse):
                raise (UsageError if command.usage else Refused)(command.message)
            if isinstance(command, Answer):
                return dict(command.payload)
        raise AssertionError(f"no answer among {left}")


def bans_in(value: object) -> list[Ban]:
    """Every Ban inside the commands (their fields, lists and tuples)."""
    if isinstance(value, Ban):
        return [value]
    if isinstance(value, list | tuple):
        return [b for item in value for b in bans_in(item)]
    slots = getattr(type(value), "__slots__", ())
    return [b for name in slots for b in bans_in(getattr(value, name, None))]


def daemon_property(line: bytes) -> None:
    daemon = Daemon()
    server = control.ControlServer(Path("/nonexistent/control.sock"), daemon.handlers)
    answer = call(lambda: asyncio.run(server._answer(line)))
    assert isinstance(answer.get("ok"), bool), answer
    if not answer["ok"]:
        assert isinstance(answer.get("error"), str) and answer["error"], answer
    json.dumps(answer)  # what _serve sends
    for ban in bans_in(daemon.produced):
        assert math.isfinite(ban.banned_at), ban
        assert ban.expires_at is None or math.isfinite(ban.expires_at), ban


@budget(800)
@given(request_lines())
def test_every_request_line_gets_an_answer(line: bytes) -> None:
    daemon_property(line)


ANSWERS = [
    b'{"ok": true, "count": 1, "bans": [{"target": "198.51.100.7"}]}\n',
    b'{"ok": false, "error": "bad request: give at least one address or network"}\n',
    b'{"ok": false, "error": "invalid configuration", "problems": ["a:1: [ban.time] bad"]}\n',
    b'{"ok": true, "pid": 1, "bans": 0}\n',
]


def cli_property(data: bytes) -> None:
    try:
        answer = call(lambda: control.answer_of(data))
    except RemoteConfigError as err:
        assert all(isinstance(p, str) for p in err.problems)
    except PorttrapError as err:
        assert str(err)
    else:
        assert answer.get("ok")


@budget(600)
@given(
    st.one_of(
        st.sampled_from(ANSWERS).flatmap(mutated_bytes),
        st.binary(max_size=80),
        json_values.map(lambda v: json.dumps(v).encode()),
    )
)
def test_the_cli_reads_any_answer_or_says_what_is_wrong(data: bytes) -> None:
    cli_property(data)


PROPERTIES = {"control": daemon_property, "control-answer": cli_property}
