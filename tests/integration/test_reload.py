"""Reload for real: the daemon in its namespace re-reads an edited file (through `porttrap
reload` or SIGHUP), sets the new traps and rules, and keeps every ban and counter; an invalid
file is refused and the running configuration stays. And systemd's notify protocol, spoken to
a real datagram socket by the real daemon."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_env import ALLOWED, ATK4, ATK4_B, ATK6, CLIENT, SRV4, SRV6, SRV_CLI, Env, tcp_works

from waiting import PATIENCE
from waiting import wait_until as wait

pytestmark = pytest.mark.kernel

BASE = """
[ban]
time = "1h"
[traps]
{mode}
tcp = [{ports}]
udp = ["6969"]
[allow]
addresses = [{allow}]
"""


def config(ports: str = '"2323"', mode: str = "", allow: str = "") -> str:
    return BASE.format(ports=ports, mode=mode, allow=allow)


def rewrite(env: Env, text: str) -> None:
    env.config.write_text(f'state_dir = "{env.state}"\n{text}')


def hits(env: Env) -> int:
    return int(env.json("status")["hits"]["total"])


def two_seconds_gone(env: Env, address: str) -> float:
    """The seconds left on `address`'s ban in ban_v4, once the kernel shows 2 s of it gone.
    The kernel shows them in whole seconds: a reload within the same second as the ban would
    read 0 elapsed, and a reload that reset the ban to its full time would go unseen."""
    full = env.expires("ban_v4", address)
    assert full is not None
    wait(lambda: (env.expires("ban_v4", address) or full) <= full - 2, PATIENCE, "2 s gone")
    left = env.expires("ban_v4", address)
    assert left is not None
    return left


def test_reload_sets_new_traps_and_keeps_bans_and_counters(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(config())
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "trap ban in kernel")
    env.porttrap("ban", "203.0.113.0/24", "--permanent")
    before = two_seconds_gone(env, ATK4)
    counted = hits(env)

    rewrite(env, config(ports='"2424"', allow=f'"{ALLOWED}"'))
    done = env.porttrap("reload")
    assert "reloaded in" in done.stdout and "traps" in done.stdout and "allow" in done.stdout

    # every ban stayed, in the kernel and in the daemon, and so did the counters
    remaining = env.expires("ban_v4", ATK4)
    assert before is not None and remaining is not None and 0 <= before - remaining < 60
    assert env.permanent_in("ban_net_v4", "203.0.113.0/24")
    assert {b["address"] for b in env.json("bans")} == {ATK4, "203.0.113.0/24"}
    assert hits(env) == counted
    # 2323 is no trap any more, 2424 is one
    assert not tcp_works(env.cli, CLIENT, SRV_CLI, 2323)  # nothing listens: refused
    assert tcp_works(env.atk, ATK6, SRV6, 2424)
    wait(lambda: env.in_set("ban_v6", ATK6), PATIENCE, "the new trap bans")
    assert hits(env) == counted + 1
    assert tcp_works(env.cli, ALLOWED, SRV_CLI, 2424)  # newly allowed: never banned
    assert env.service_reachable(env.cli, ALLOWED, SRV_CLI)
    assert "event=reloaded changed=traps,allow" in env.log_text()


def test_an_invalid_config_is_refused_and_the_running_one_stays(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(config())
    env.start()
    env.porttrap("ban", "203.0.113.7", "--for", "1h")
    env.config.write_text(f'state_dir = "{env.state}"\n[traps]\ntcp = ["99999"]\n[ban]\nx = 1\n')

    done = env.porttrap("reload", check=False)  # checked by the command before it asks
    assert done.returncode == 2, done.stderr
    problems = [line for line in done.stderr.splitlines() if "config error" in line]
    assert len(problems) == 2, done.stderr  # every problem, each with where it is
    assert all(str(env.config) in line for line in problems)
    assert env.daemon is not None
    os.kill(env.daemon.pid, signal.SIGHUP)  # the daemon checks it too
    wait(lambda: "event=reload-refused" in env.log_text(), PATIENCE, "SIGHUP reload refused")
    assert env.log_text().count("event=config-error") == 2

    assert tcp_works(env.atk, ATK4, SRV4, 2323)  # the old traps still work...
    wait(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "old trap still bans")
    assert env.in_set("ban_v4", "203.0.113.7")  # ...and the bans are all there

    rewrite(env, config().replace("[allow]", '[firewall]\ntable = "other"\n[allow]'))
    done = env.porttrap("reload", check=False)
    assert done.returncode == 5 and "need a restart" in done.stderr
    assert "[firewall] table: porttrap -> other" in done.stderr
    assert env.json("status")["running"]


def test_sighup_reloads_and_an_allow_listed_ban_is_lifted(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(config())
    env.start()
    assert env.daemon is not None
    assert tcp_works(env.atk, ATK4_B, SRV4, 2323)
    wait(lambda: env.in_set("ban_v4", ATK4_B), PATIENCE, "banned")

    rewrite(env, config(ports='"2323", "2525"', allow=f'"{ATK4_B}"'))
    os.kill(env.daemon.pid, signal.SIGHUP)
    wait(lambda: "event=reloaded changed=traps,allow" in env.log_text(), PATIENCE, "SIGHUP reload")
    wait(lambda: not env.in_set("ban_v4", ATK4_B), PATIENCE, "allow-listed ban lifted")
    assert env.service_reachable(env.atk, ATK4_B)
    assert f'event=unban address={ATK4_B} reason="protected: ' in env.log_text()
    assert tcp_works(env.atk, ATK4, SRV4, 2525)  # the new trap
    wait(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "new trap bans")

    os.kill(env.daemon.pid, signal.SIGHUP)  # logrotate's SIGHUP: nothing changed
    wait(lambda: "event=reloaded changed=nothing" in env.log_text(), PATIENCE, "second SIGHUP")
    assert env.daemon.poll() is None


def test_stealth_rules_are_rebuilt_with_every_ban(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(config(mode='mode = { tcp = "stealth", udp = "connect" }'))
    env.start()
    env.porttrap("ban", ATK4, "--for", "1h")
    env.porttrap("ban", "203.0.113.0/24", "--permanent")
    assert 2323 in trap_ports(env)
    before = two_seconds_gone(env, ATK4)

    rewrite(env, config(ports='"2424"', mode='mode = { tcp = "stealth", udp = "connect" }'))
    env.porttrap("reload")
    assert trap_ports(env) == {2424}
    remaining = env.expires("ban_v4", ATK4)
    assert remaining is not None and 0 <= before - remaining < 60  # the time left, no new hour
    assert env.permanent_in("ban_net_v4", "203.0.113.0/24")
    for _ in range(2):  # a SYN can be forged: the second in the window bans (confirm = 2)
        tcp_works(env.atk, ATK6, SRV6, 2424, timeout=0.3)
    wait(lambda: env.in_set("ban_v6", ATK6), PATIENCE, "the rebuilt sensor reports the new trap")

    rewrite(env, config(ports='"2424"'))  # the sensor off: a restart's job
    done = env.porttrap("reload", check=False)
    assert done.returncode == 5 and "kernel sensor would be turned off" in done.stderr
    assert trap_ports(env) == {2424}


def trap_ports(env: Env) -> set[int]:
    """The ports in the kernel sensor's TCP trap set (an interval set: single ports here)."""
    ports: set[int] = set()
    for elem in env.nft_set("traps_tcp"):
        if isinstance(elem, int):
            ports.add(elem)
        else:
            low, high = elem["range"]
            ports.update(range(low, high + 1))
    return ports


def test_the_daemon_tells_systemd_ready_reloading_watchdog_and_stopping(
    env_factory: Callable[[str], Env], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
        env = env_factory(config())
        env.start(wait=False)
        assert env.daemon is not None
        ready = receive(sock, "READY=1")
        assert f"MAINPID={env.daemon.pid}" in ready.split("\n")  # `ip netns exec` execs
        assert "STATUS=" in ready and "trap sockets" in ready
        receive(sock, "WATCHDOG=1")
        receive(sock, "WATCHDOG=1")

        rewrite(env, config(ports='"2424"'))
        env.porttrap("reload")
        assert "MONOTONIC_USEC=" in receive(sock, "RELOADING=1")
        receive(sock, "READY=1")

        env.stop()
        receive(sock, "STOPPING=1")


def receive(sock: socket.socket, wanted: str) -> str:
    """The next datagram holding the line `wanted` (others, such as pings, are passed over)."""
    for _ in range(200):
        message = sock.recv(4096).decode()
        if wanted in message.split("\n"):
            return message
    raise AssertionError(f"no {wanted} in 200 datagrams")
