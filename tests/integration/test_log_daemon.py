"""`[log]` outputs and `[traps] banner` on the real daemon in its network namespace: scanners from
another namespace read the banner and get banned; every output file gets its lines; a rename
and a real SIGHUP (what logrotate does) move the next lines to new files; fail2ban's own
fail2ban-regex then finds exactly the scanners, never the allow-listed client nor the host."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_env import ALLOWED, ATK4, ATK6, SRV4, SRV6, SRV_CLI, Env, open_socket

from fail2ban_regex import Fail2ban, find
from netns import Netns
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

BANNER = "SSH-2.0-OpenSSH_9.2\r\n"
PORT = 2323
FILES = {  # output file -> format
    "porttrap.json": "json",
    "alerts.log": "portsentry",
    "portsentry.history": "portsentry-history",
    "net-bouncer.log": "net-bouncer",
}


def config(logs: Path) -> str:
    outputs = "".join(
        f'[[log.output]]\nto = "{logs / name}"\nformat = "{form}"\n' for name, form in FILES.items()
    )
    return (
        f'[traps]\ntcp = ["{PORT}"]\nudp = []\nbanner = "SSH-2.0-OpenSSH_9.2\\r\\n"\n'
        f'[allow]\naddresses = ["{ALLOWED}"]\n'
        f'[log]\n[[log.output]]\nto = "stderr"\n{outputs}'
    )


@pytest.fixture
def env(netns_factory: Callable[[], Netns], tmp_path: Path) -> Iterator[Env]:
    logs = tmp_path / "logs"
    logs.mkdir()
    made = Env(netns_factory, tmp_path, config(logs))
    yield made
    if made.log.exists():  # on failure, show what the daemon said
        print(made.log_text())


def banner_of(ns: Netns, source: str, host: str) -> bytes:
    """Connect from `source` in `ns` to the trap, read until the trap closes."""
    with open_socket(ns, source, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect((host, PORT))
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_outputs_banner_logrotate_and_fail2ban(env: Env, tmp_path: Path) -> None:
    fail2ban = find()
    logs = tmp_path / "logs"
    env.start()
    assert env.daemon is not None

    assert banner_of(env.cli, ALLOWED, SRV_CLI) == BANNER.encode()  # every trap connection
    assert banner_of(env.srv, SRV4, SRV4) == BANNER.encode()  # the host itself: own-address
    assert banner_of(env.atk, ATK4, SRV4) == BANNER.encode()
    env.recorded_bans(1)
    wait_until(lambda: len(lines(logs / "net-bouncer.log")) == 1, PATIENCE, "first scanner's line")

    for name in FILES:  # logrotate: rename, then SIGHUP
        (logs / name).rename(logs / f"{name}.1")
    os.kill(env.daemon.pid, signal.SIGHUP)
    wait_until(lambda: "event=log-reopened files=4" in env.log_text(), PATIENCE, "files reopened")
    wait_until(lambda: "event=reloaded changed=nothing" in env.log_text(), PATIENCE, "reloaded")

    assert banner_of(env.atk, ATK6, SRV6) == BANNER.encode()
    env.recorded_bans(2)
    wait_until(lambda: len(lines(logs / "net-bouncer.log")) == 1, PATIENCE, "second scanner's line")
    env.stop()

    for name in FILES:
        before, after = "\n".join(lines(logs / f"{name}.1")), "\n".join(lines(logs / name))
        assert ATK4 in before and ATK6 not in before, name
        assert ATK6 in after and ATK4 not in after, name
        assert stat_mode(logs / name) == 0o640
    own = [json.loads(line) for line in lines(logs / "porttrap.json.1")]
    outcomes = {e["fields"]["src"]: e["fields"]["outcome"] for e in own if e["event"] == "hit"}
    assert outcomes == {ALLOWED: "allowed", SRV4: "own-address", ATK4: "banned"}
    assert_fail2ban_finds_the_scanners(fail2ban, logs, tmp_path)


def assert_fail2ban_finds_the_scanners(fail2ban: Fail2ban, logs: Path, tmp_path: Path) -> None:
    filters = fail2ban.filters(tmp_path)
    checks = {
        "portsentry.history": fail2ban.stock_filters / "portsentry.conf",
        "net-bouncer.log": filters / "net-bouncer.conf",
        "alerts.log": filters / "portsentry-attackalert.conf",
    }
    for name, filter_file in checks.items():
        joined = tmp_path / f"all-{name}"
        joined.write_text((logs / f"{name}.1").read_text() + (logs / name).read_text())
        hosts = [match.host for match in fail2ban.matches(joined, filter_file)]
        assert hosts == [ATK4, ATK6], name


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
