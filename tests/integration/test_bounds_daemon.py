"""Values out of bounds against the real daemon (issue 13): a ban "for" 10^12 weeks, NaN and
Infinity on the control socket, and rows out of bounds planted in the database. Each is
answered or skipped; the daemon keeps running, its kernel table and database hold only sound
bans, and it starts again."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import pytest
from daemon_env import Env

pytestmark = pytest.mark.kernel

TRAPS = '[traps]\ntcp = ["2323"]\nudp = []\n'
TEN_YEARS = 3650 * 86400


def control(env: Env, line: bytes) -> dict[str, Any]:
    """One raw request on the daemon's control socket (a path: reachable from any network
    namespace) and its answer, as a client that bypasses the CLI's own checks would send it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(env.state / "control.sock"))
        sock.sendall(line + b"\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data, f"no answer to {line[:80]!r}"
    answer: dict[str, Any] = json.loads(data)
    return answer


def ban_rows(env: Env) -> list[str]:
    return [row[0] for row in env.db("SELECT target FROM bans ORDER BY id")]


def test_a_ban_for_10_to_the_12_weeks_is_refused_and_the_daemon_keeps_going(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.start()
    done = env.porttrap("ban", "--for", "1000000000000w", "198.51.100.77", check=False)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "is longer than 3650d (10 years)" in done.stderr and "--permanent" in done.stderr
    # the same value from a client that skips the CLI's check: the daemon refuses it too
    request = {"cmd": "ban", "targets": ["198.51.100.77"], "for": 6.048e17}
    answer = control(env, json.dumps(request).encode())
    assert answer["ok"] is False and "is longer than 3650d" in answer["error"]
    assert ban_rows(env) == [] and env.nft_set("ban_v4") == []

    env.porttrap("ban", "--for", "3650d", "198.51.100.78")  # the longest there is: held
    remaining = env.expires("ban_v4", "198.51.100.78")
    assert remaining is not None and TEN_YEARS - 60 < remaining <= TEN_YEARS
    env.stop()
    env.start()
    assert [b["address"] for b in env.json("bans")] == ["198.51.100.78"]
    remaining = env.expires("ban_v4", "198.51.100.78")
    assert remaining is not None and TEN_YEARS - 120 < remaining <= TEN_YEARS
    assert "Traceback" not in env.log_text()


def test_nan_infinity_and_wrong_types_on_the_control_socket_are_answered(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.start()
    head = b'{"cmd": "ban", "targets": ["198.51.100.77"], '
    refused = {
        head + b'"for": NaN}': "NaN is not a number JSON allows",
        head + b'"for": Infinity}': "Infinity is not a number JSON allows",
        head + b'"for": -Infinity}': "-Infinity is not a number JSON allows",
        head + b'"for": 1e400}': "is longer than 3650d",
        head + b'"for": true}': '"for" is a number of seconds',
        head + b'"permanent": "no"}': '"permanent" must be true or false',
        b'{"cmd": "ban", "targets": [3325256781]}': "is not an address in a string",
        b"[" * 100_000 + b"]" * 100_000: "JSON nested too deeply",
    }
    for line, problem in refused.items():
        answer = control(env, line)
        assert answer["ok"] is False and problem in answer["error"], (line[:60], answer)
    # nothing of them was half-applied: no ban anywhere, and the next request goes through
    assert ban_rows(env) == [] and env.nft_set("ban_v4") == []
    answer = control(env, head + b'"for": 3600}')
    assert answer["ok"] is True and answer["bans"][0]["address"] == "198.51.100.77"
    assert env.json("bans")[0]["address"] == "198.51.100.77"
    assert env.expires("ban_v4", "198.51.100.77") is not None
    env.stop()
    env.start()
    assert not env.permanent_in("ban_v4", "198.51.100.77")  # NaN never became "for good"
    assert "Traceback" not in env.log_text()


def plant(env: Env, target: str, banned_at: float, expires_at: float | None) -> None:
    """A row as damage, a hand edit or an older porttrap could have left it."""
    with closing(sqlite3.connect(env.state / "porttrap.db")) as conn, conn:
        conn.execute(
            "INSERT INTO bans (target, banned_at, expires_at, ban_count, reason) "
            "VALUES (?, ?, ?, 1, 'manual')",
            (target, banned_at, expires_at),
        )


def test_a_restart_skips_and_reports_bad_rows_and_restores_the_rest(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.start()
    env.porttrap("ban", "--for", "1h", "198.51.100.77")
    env.porttrap("ban", "--permanent", "203.0.113.0/24")
    env.stop()
    now = time.time()  # noqa: TID251 - a row's times, as the daemon wrote them
    plant(env, "198.51.100.88", now, now + 6.048e17)  # what --for 10^12 weeks left
    plant(env, "198.51.100.89", now, float("inf"))
    plant(env, "198.51.100.90", 1e300, None)
    plant(env, "198.51.100.91", now, now + TEN_YEARS + 3600)

    env.start()
    assert env.in_set("ban_v4", "198.51.100.77")
    assert env.permanent_in("ban_net_v4", "203.0.113.0/24")
    for bad in ("198.51.100.88", "198.51.100.89", "198.51.100.90", "198.51.100.91"):
        assert not env.in_set("ban_v4", bad)
    log = env.log_text()
    assert log.count("event=store-bad-row table=bans") == 4, log
    assert "event=restore-skipped rows=4" in log
    status = env.json("status")
    assert status["bans"]["skipped_at_start"] == 4
    assert "4 database rows could not be read at start" in env.porttrap("status").stdout
    listed = env.porttrap("bans")
    assert "198.51.100.77" in listed.stdout and "203.0.113.0/24" in listed.stdout
    assert "198.51.100.88" not in listed.stdout and "store-bad-row" in listed.stderr
    assert "Traceback" not in log + listed.stderr
