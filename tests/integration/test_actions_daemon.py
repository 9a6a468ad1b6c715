"""Actions with the real daemon in a network namespace and real connections from another:
hooks really run with their placeholders; a slow or failing hook (even one started first)
does not keep the ban out of nftables; respond "command" and "log"; hosts.deny and a webhook
through a ban, an unban and a restart; running hooks on stop."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_env import ATK4, SRV4, Env, tcp_works

from netns import Netns
from scripts import python_script
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

TRAPS = '[traps]\ntcp = ["2323"]\nudp = []\n'
RECORDER = """\
import json, os, sys
with open({record!r}, "a") as out:
    env = {{k: v for k, v in os.environ.items() if k.startswith("PORTTRAP_")}}
    out.write(json.dumps({{"argv": sys.argv[1:], "env": env}}) + "\\n")
"""


class Recorder:
    """A hook script that appends its argv and PORTTRAP_* variables to a file."""

    def __init__(self, tmp_path: Path, name: str = "hook") -> None:
        self.record = tmp_path / f"{name}.jsonl"
        self.script = tmp_path / name
        python_script(self.script, RECORDER.format(record=str(self.record)))

    def calls(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def wait(self, count: int) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.calls()) >= count, PATIENCE, f"{count} calls of {self.script}")
        return self.calls()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_hooks_run_with_placeholders_in_argv_and_shell_forms(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    argv, shell = Recorder(tmp_path, "argv-hook"), Recorder(tmp_path, "shell-hook")
    env = env_factory(
        TRAPS + "[[actions.command]]\n"
        f'run = ["{argv.script}", "$TARGET$", "$PORT$", "$MODE$"]\n'
        "[[actions.command]]\nshell = true\nfirst = true\n"
        f'run = "{shell.script} $TARGET$ $PORT$ $MODE$ >/dev/null 2>&1"\n'
    )
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "ban in kernel")
    for hook in (argv, shell):
        (call,) = hook.wait(1)
        assert call["argv"] == [ATK4, "2323", "tcp"]
        assert call["env"]["PORTTRAP_EVENT"] == "ban"
        assert call["env"]["PORTTRAP_REASON"] == "trap:tcp/2323"
        assert call["env"]["PORTTRAP_BAN_COUNT"] == "1"
    status = env.json("status")["actions"]
    assert status["run"] == 2 and status["failed"] == 0


def test_a_slow_and_a_failing_hook_do_not_delay_the_ban(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    pidfile = tmp_path / "slow.pid"
    env = env_factory(
        TRAPS + '[[actions.command]]\nfirst = true\ntimeout = "15s"\n'
        f'run = ["/bin/sh", "-c", "echo $$ > {pidfile}; exec sleep 600"]\n'
        '[[actions.command]]\nfirst = true\nrun = ["/bin/false"]\n'
        '[[actions.command]]\nrun = ["/bin/sh", "-c", "exit 7"]\n'
    )
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "ban in kernel")
    wait_until(pidfile.exists, PATIENCE, "the slow hook started")
    pid = int(pidfile.read_text())
    assert alive(pid), "the ban is in the kernel while the slow hook still runs"
    assert not env.service_reachable(env.atk, ATK4)
    wait_until(lambda: not alive(pid), 40, "the slow hook killed at its timeout")
    wait_until(lambda: "timed out after 15s" in env.log_text(), PATIENCE, "timeout logged")
    log = env.log_text()
    assert (
        "event=action-failed action=command on=ban address=192.0.2.2 argv=/bin/false exit=1" in log
    )
    assert "argv=\"/bin/sh -c 'exit 7'\" exit=7" in log
    assert f"argv=\"/bin/sh -c 'echo $$ > {pidfile}; exec sleep 600'\"" in log
    status = env.json("status")["actions"]
    assert (status["run"], status["failed"], status["timed_out"]) == (3, 2, 1)


def test_respond_command_runs_the_hook_records_the_ban_and_leaves_nftables_empty(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    hook = Recorder(tmp_path)
    env = env_factory(
        TRAPS + '[ban]\nrespond = "command"\n'
        f'[[actions.command]]\nrun = ["{hook.script}", "$TARGET$", "$MODE$"]\n'
    )
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    (call,) = hook.wait(1)
    assert call["argv"] == [ATK4, "tcp"]
    (ban,) = env.recorded_bans(1)
    assert ban["address"] == ATK4 and ban["reason"] == "trap:tcp/2323"
    assert env.nft_set("ban_v4") == []
    assert env.service_reachable(env.atk, ATK4)  # banning is the command's job


def test_respond_log_bans_nothing_and_runs_no_ban_hook(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    ban_hook, hit_hook = Recorder(tmp_path, "ban-hook"), Recorder(tmp_path, "hit-hook")
    env = env_factory(
        TRAPS + '[ban]\nrespond = "log"\n'
        f'[[actions.command]]\nrun = ["{ban_hook.script}"]\n'
        f'[[actions.command]]\non = ["hit"]\nrun = ["{hit_hook.script}", "$TARGET$"]\n'
    )
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    (call,) = hit_hook.wait(1)
    assert call["argv"] == [ATK4] and call["env"]["PORTTRAP_OUTCOME"] == "logged"
    wait_until(lambda: len(env.json("history", ATK4)) == 1, PATIENCE, "hit stored")
    (entry,) = env.json("history", ATK4)
    assert (entry["what"], entry["outcome"]) == ("hit", "logged")
    assert env.json("bans") == [] and env.nft_set("ban_v4") == []
    assert ban_hook.calls() == []
    assert env.service_reachable(env.atk, ATK4)


class Webhook:
    """An HTTP server inside the protected namespace, on its documentation address."""

    def __init__(self, ns: Netns) -> None:
        self.received: list[dict[str, Any]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        with ns.inside():
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((SRV4, 0))
        listener.listen()
        self.server = ThreadingHTTPServer((SRV4, 0), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = listener
        self.server.daemon_threads = True
        self.url = f"http://{SRV4}:{listener.getsockname()[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str]]:
        return [(event["event"], event["address"]) for event in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_hosts_deny_and_a_webhook_through_ban_unban_and_restart(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    deny = tmp_path / "hosts.deny"
    deny.write_text("# the admin's\nsshd: 203.0.113.0/24\n")
    env = env_factory(TRAPS)
    hook = Webhook(env.srv)
    try:
        env.config.write_text(
            env.config.read_text() + f'[actions.hosts_deny]\nfile = "{deny}"\n'
            f'[[actions.webhook]]\nurl = "{hook.url}"\non = ["ban", "unban"]\n'
        )
        env.start()
        assert tcp_works(env.atk, ATK4, SRV4, 2323)
        wait_until(lambda: f"ALL: {ATK4}" in deny.read_text(), PATIENCE, "hosts.deny line")
        wait_until(lambda: hook.events() == [("ban", ATK4)], PATIENCE, "webhook of the ban")
        assert hook.received[0]["port"] == 2323 and hook.received[0]["mode"] == "tcp"

        env.porttrap("unban", ATK4)
        wait_until(lambda: f"ALL: {ATK4}" not in deny.read_text(), PATIENCE, "line removed")
        wait_until(lambda: len(hook.received) == 2, PATIENCE, "webhook of the unban")
        assert hook.events()[1] == ("unban", ATK4) and hook.received[1]["reason"] == "manual"
        assert deny.read_text() == "# the admin's\nsshd: 203.0.113.0/24\n"

        env.porttrap("ban", "198.51.100.77", "--for", "2s")
        wait_until(
            lambda: "ALL: 198.51.100.77" in deny.read_text(), PATIENCE, "line of an admin ban"
        )
        query = "SELECT expires_at FROM bans WHERE target = '198.51.100.77'"
        wait_until(lambda: bool(env.db(query)), PATIENCE, "the admin ban recorded")
        ((expires_at,),) = env.db(query)
        env.stop()  # the ban runs out while porttrap is down (by the clock and the kernel) ...
        wait_until(
            lambda: (
                time.time() > expires_at  # noqa: TID251 - the store's clock
                and not env.in_set("ban_v4", "198.51.100.77")
            ),
            PATIENCE,
            "the ban over",
        )
        env.start()  # ... and its line goes at start
        wait_until(lambda: "198.51.100.77" not in deny.read_text(), PATIENCE, "stale line removed")
        assert deny.read_text() == "# the admin's\nsshd: 203.0.113.0/24\n"
        assert deny.stat().st_mode & 0o777 == 0o644
    finally:
        hook.close()


def test_stopping_kills_a_hook_still_running_after_the_grace(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    pidfile = tmp_path / "slow.pid"
    env = env_factory(
        TRAPS + '[[actions.command]]\ntimeout = "10m"\n'
        f'run = ["/bin/sh", "-c", "echo $$ > {pidfile}; exec sleep 600"]\n'
    )
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(pidfile.exists, PATIENCE, "the hook started")
    pid = int(pidfile.read_text())
    env.stop()
    assert not alive(pid)
    assert "actions_dropped=0 actions_killed=1" in env.log_text()


def test_a_bulk_ban_is_one_notification_through_apprise(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    """Apprise's json:// posts to an HTTP server in the daemon's namespace (nothing leaves
    the machine): 300 bans of one request are one message, and stopping sends no other."""
    env = env_factory(TRAPS)
    endpoint = Webhook(env.srv)
    url = endpoint.url.replace("http://", "json://")
    try:
        env.config.write_text(
            env.config.read_text()
            + f'[[actions.notify]]\nurls = ["{url}"]\ngroup = "1s"\nevery = "1h"\n'
        )
        listed = tmp_path / "scanners.txt"
        listed.write_text("".join(f"198.51.100.{n}\n" for n in range(10, 160)) +
                          "".join(f"203.0.113.{n}\n" for n in range(10, 160)))  # fmt: skip
        env.start()
        env.porttrap("ban", "-f", str(listed), "--for", "1h", "--reason", "blocklist")
        wait_until(lambda: len(endpoint.received) >= 1, PATIENCE, "the burst's notification")
        (message,) = endpoint.received
        assert message["title"].endswith(": 300 ban")
        lines = message["message"].splitlines()
        assert lines[0] == "300 ban" and lines[-1] == "... and 280 more (porttrap history)"
        assert "(ban #1, manual: blocklist)" in lines[1]
        wait_until(lambda: "event=notified events=300" in env.log_text(), PATIENCE, "logged")
        env.stop()
        assert len(endpoint.received) == 1
    finally:
        endpoint.close()
