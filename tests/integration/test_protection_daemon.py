"""Services win over traps, and a config the host cannot run is refused (issue 13), with the
real daemon in namespaces: per-family traps keep their ban time and fire in every mode, a port
in use on one IP family is no trap on either, more sockets than the descriptor limit allows is
refused, and descriptors running out while it runs make a bounded log."""

from __future__ import annotations

import socket
import subprocess  # noqa: TID251 - prlimit on the daemon
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crafted import Probe, send
from daemon_env import (
    ATK4,
    ATK6,
    CLIENT,
    PORTTRAP,
    SERVICE,
    SRV4,
    SRV6,
    SRV_CLI,
    Env,
    tcp_works,
)

from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

H = 3600
FAMILY_TRAPS = """
tcp = ["2323"]
udp = []
[[traps.port]]
port = 2400
proto = "tcp"
address = "::"
ban = "2h"
[[traps.port]]
port = 2401
proto = "tcp"
address = "0.0.0.0"
ban = "3h"
[ban]
time = "1h"
unverified_max_time = "1d"
"""


def ban_lengths(env: Env) -> dict[str, float]:
    return dict(env.db("SELECT target, expires_at - banned_at FROM bans"))


@pytest.mark.parametrize("mode", ["connect", "stealth"])
def test_a_trap_on_one_family_fires_with_its_own_ban_time(
    env_factory: Callable[[str], Env], mode: str
) -> None:
    env = env_factory(f'[traps]\nmode = "{mode}"\n{FAMILY_TRAPS}')
    env.start()
    if mode == "connect":
        assert tcp_works(env.atk, ATK6, SRV6, 2400)
        assert not tcp_works(env.atk, ATK4, SRV4, 2400)  # not trapped on IPv4: closed
    else:  # a forgeable probe bans at the second (confirm)
        send(env.atk, [Probe(ATK6, SRV6, 2400, "syn")] * 2, inter=0.05)
    wait_until(lambda: env.in_set("ban_v6", ATK6), PATIENCE, "IPv6 scanner banned")
    if mode == "connect":
        assert tcp_works(env.atk, ATK4, SRV4, 2401)
    else:
        send(env.atk, [Probe(ATK4, SRV4, 2401, "syn")] * 2, inter=0.05)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "IPv4 scanner banned")
    assert {b["address"] for b in env.recorded_bans(2)} == {ATK4, ATK6}
    assert ban_lengths(env) == {ATK6: 2 * H, ATK4: 3 * H}


def test_a_port_in_use_on_one_family_is_no_trap_on_either(
    env_factory: Callable[[str], Env],
) -> None:
    """A service on IPv4 only: porttrap leaves its port alone on IPv6 too, so the service's
    IPv6 clients (once it listens there, or its clients trying) are never banned."""
    env = env_factory('[traps]\ntcp = ["2323", "2500"]\nudp = []\n')
    service = "import socket, time\ns = socket.create_server(('0.0.0.0', 2500))\ntime.sleep(600)"
    env.srv.start([sys.executable, "-c", service])
    wait_until(lambda: tcp_works(env.atk, ATK4, SRV4, 2500), PATIENCE, "IPv4-only service up")
    env.start()
    traps: dict[str, Any] = env.json("status")["traps"]
    skipped = {(t["port"], t["address"]): t["reason"] for t in traps["skipped"]}
    assert skipped[(2500, "0.0.0.0")] == "in use"
    assert skipped[(2500, "::")].startswith("in use on 0.0.0.0")
    assert {(t["port"], t["address"]) for t in traps["set"]} == {(2323, "0.0.0.0"), (2323, "::")}
    assert not tcp_works(env.atk, ATK6, SRV6, 2500)  # closed on IPv6: no trap answers
    assert tcp_works(env.atk, ATK4, SRV4, 2500)
    assert env.json("bans") == []


def test_more_sockets_than_the_descriptor_limit_allows_is_refused(
    env_factory: Callable[[str], Env],
) -> None:
    """300 TCP ports in connect mode are 600 sockets: with a hard limit of 512 the daemon
    would run out of descriptors (its control socket first); it refuses to start instead."""
    env = env_factory('[traps]\ntcp = ["3000-3299"]\nudp = []\n')
    argv = ["ip", "netns", "exec", env.srv.name, "prlimit", "--nofile=512:512", "--",
            *PORTTRAP, "run", "-c", str(env.config)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "[traps.tcp] connect mode needs 600 sockets" in done.stderr
    assert "allows 512 descriptors" in done.stderr
    assert 'mode = "stealth" or "advanced"' in done.stderr
    assert env.srv.run(["nft", "list", "tables"]).strip() == ""  # refused before the kernel


def test_connect_traps_inside_ip_local_port_range_are_refused(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory('[traps]\ntcp = ["2323", "40000-40009"]\nudp = []\n')
    done = env.porttrap("run", check=False)
    assert done.returncode == 2, done.stderr
    assert "[traps.tcp] TCP 40000-40009 of [traps] tcp are inside" in done.stderr
    assert "ip_local_port_range (32768-60999)" in done.stderr  # the namespace's own
    assert env.srv.run(["nft", "list", "tables"]).strip() == ""


UDP_ECHO = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7001))
while True:
    data, peer = s.recvfrom(64)
    s.sendto(data, peer)
"""


def test_stealth_traps_in_ip_local_port_range_let_the_hosts_own_connections_through(
    env_factory: Callable[[str], Env],
) -> None:
    """Why stealth and advanced traps there are not refused: replies to the host's own
    connections, sent from such a port, are established (or related) and pass the sensor
    untouched; nobody is blocked or banned."""
    env = env_factory('[traps]\nmode = "stealth"\ntcp = ["2323", "40000"]\nudp = ["40001"]\n')
    env.cli.start([sys.executable, "-c", SERVICE % 7000])
    env.cli.start([sys.executable, "-c", UDP_ECHO])
    env.start()
    with env.srv.inside():
        tcp = socket.socket()
        udp = socket.socket(type=socket.SOCK_DGRAM)
    with tcp, udp:
        tcp.settimeout(5)
        tcp.bind((SRV_CLI, 40000))  # the source port the kernel could have picked
        wait_until(lambda: tcp.connect_ex((CLIENT, 7000)) == 0, PATIENCE, "client's service up")
        assert tcp.recv(5) == b"hello"
        udp.settimeout(5)
        udp.bind((SRV_CLI, 40001))
        udp.sendto(b"ping", (CLIENT, 7001))
        assert udp.recvfrom(64)[0] == b"ping"
    assert env.json("history") == []
    assert env.json("bans") == []


def open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def limits(pid: int) -> tuple[int, int]:
    """The soft and hard RLIMIT_NOFILE of process `pid`."""
    argv = ["prlimit", "--pid", str(pid), "--nofile", "--raw", "--noheadings",
            "--output=SOFT,HARD"]  # fmt: skip
    soft, hard = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return int(soft), int(hard)


def set_limits(pid: int, soft: int, hard: int) -> None:
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={soft}:{hard}"], check=True)


def test_descriptors_running_out_make_one_warning_not_a_flood(
    env_factory: Callable[[str], Env],
) -> None:
    """A running daemon whose descriptors run out (its soft limit lowered to what it holds)
    while a scanner connects to 40 trap ports: trap accepts back off with one WARNING, not a
    line per port per second; once descriptors are back, the next accept bans the scanner."""
    env = env_factory('[traps]\ntcp = ["4000-4039"]\nudp = []\n')
    env.start()
    pid = env.daemon_pid()
    hard = limits(pid)[1]
    set_limits(pid, open_descriptors(pid), hard)
    before = len(env.log_text())
    for port in range(4000, 4040):  # completed by the kernel, waiting in the backlog
        assert tcp_works(env.atk, ATK4, SRV4, port)
    wait_until(lambda: "event=trap-backoff" in env.log_text()[before:], PATIENCE, "a backoff")
    set_limits(pid, hard, hard)
    wait_until(
        lambda: env.in_set("ban_v4", ATK4), PATIENCE, "scanner banned once descriptors are back"
    )
    written = env.log_text()[before:]
    warnings = [line for line in written.splitlines() if "event=trap-backoff" in line]
    assert len(warnings) == 1, written  # one WARNING for the 40 sockets (DEBUG is not on)
    assert len(written) < 20_000, written
