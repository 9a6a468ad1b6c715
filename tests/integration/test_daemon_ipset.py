"""The daemon with `backend = "ipset"`, for real: a connect to a trap bans the source in ipset,
the drop holds, a restart puts the ban back, a flushed set is filled again, an accept put
before porttrap's jump is undone by
the daemon's own check, a client of the host is never banned by datagrams forged in its name
(the watch marks them) while a stranger is, and `porttrap flush` removes porttrap's sets and
chains only."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crafted import Probe, send
from daemon_env import (
    ATK4,
    ATK4_B,
    ATK6,
    CLIENT,
    SERVICE_PORT,
    SRV4,
    SRV6,
    SRV_CLI,
    Env,
    open_socket,
    tcp_works,
    udp_send,
)

from netns import Netns
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

CONFIG = """
[traps]
tcp = ["2323"]
udp = ["6969"]
[ban]
time = "1h"
[firewall]
backend = "ipset"
"""


@pytest.fixture
def env(netns_factory: Callable[[], Netns], tmp_path: Path) -> Iterator[Env]:
    made = Env(netns_factory, tmp_path, CONFIG)
    yield made
    if made.log.exists():  # on failure, show what the daemon said
        print(made.log_text())


def in_set(env: Env, address: str) -> bool:
    set_name = "porttrap_v6" if ":" in address else "porttrap_v4"
    listing = env.srv.run(["ipset", "list", set_name], timeout=10)
    return any(line.split()[:1] == [address] for line in listing.splitlines())


def hits_from(env: Env, address: str) -> list[Any]:
    return [e for e in env.json("history", address) if e["what"] == "hit"]


def watch_in_place(env: Env) -> bool:
    marks = env.srv.run(["ip6tables", "-t", "security", "-S", "porttrap_mark"]).splitlines()
    first = env.srv.run(["iptables", "-t", "security", "-S", "INPUT", "1"]).strip()
    return len(marks) > 1 and first == "-A INPUT -j porttrap_in"


def first_in_raw_prerouting(env: Env) -> str:
    rule = env.srv.run(["iptables", "-t", "raw", "-S", "PREROUTING", "1"])
    return rule.strip().removeprefix("-A PREROUTING ")


def test_trap_bans_in_ipset_and_a_restart_restores_the_ban(env: Env) -> None:
    env.start()
    assert "backend=ipset" in env.log_text()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: in_set(env, ATK4), PATIENCE, "trap ban in porttrap_v4")
    wait_until(lambda: not env.service_reachable(env.atk, ATK4), PATIENCE, "v4 attacker dropped")
    assert tcp_works(env.atk, ATK6, SRV6, 2323)
    wait_until(lambda: in_set(env, ATK6), PATIENCE, "trap ban in porttrap_v6")
    assert {ban["address"] for ban in env.recorded_bans(2)} == {ATK4, ATK6}
    env.stop()

    assert in_set(env, ATK4), "stopping must leave bans in the kernel"
    env.srv.run(["ipset", "del", "porttrap_v4", ATK4])  # lost while porttrap is down
    env.srv.run(["ipset", "add", "porttrap_v4", "198.51.100.99"])  # and a stray one
    env.start()
    assert in_set(env, ATK4) and in_set(env, ATK6)
    assert not in_set(env, "198.51.100.99"), "stray entry must be removed (a clean stop)"
    assert not env.service_reachable(env.atk, ATK4)

    # someone flushes porttrap's set: the check finds the bans missing and rebuilds
    env.srv.run(["ipset", "flush", "porttrap_v4"])
    assert env.service_reachable(env.atk, ATK4)
    wait_until(lambda: in_set(env, ATK4), 60, "set refilled")
    assert "event=firewall-damaged" in env.log_text()
    assert not env.service_reachable(env.atk, ATK4)

    # someone puts an accept before porttrap's jump: the 5 s check puts the jump back first
    env.srv.run(["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT"])
    wait_until(lambda: first_in_raw_prerouting(env) == "-j porttrap", 15, "jump first again")
    assert "event=firewall-missing" in env.log_text()
    assert not env.service_reachable(env.atk, ATK4)

    # the watch's chains too: a flushed one is made again, an accept before its jump moved
    env.srv.run(["ip6tables", "-t", "security", "-F", "porttrap_mark"])
    env.srv.run(["iptables", "-t", "security", "-I", "INPUT", "1", "-j", "ACCEPT"])
    wait_until(lambda: watch_in_place(env), 15, "the watch's chains again")
    assert env.log_text().count("event=firewall-missing") >= 2


def test_flush_removes_porttraps_sets_and_chain_only(env: Env) -> None:
    env.srv.run(["ipset", "create", "other", "hash:ip"])
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: in_set(env, ATK4), PATIENCE, "trap ban in porttrap_v4")
    env.stop()
    assert "porttrap_clients_v4" in env.srv.run(["ipset", "list", "-n"])  # the watch's too
    done = env.porttrap("flush")
    assert "removed ipset sets porttrap_v4, porttrap_v6, porttrap_clients_v4" in done.stdout
    assert "chains raw porttrap, security porttrap_in, porttrap_out, porttrap_mark" in done.stdout
    assert env.srv.run(["ipset", "list", "-n"]).split() == ["other"]
    for iptables in ("iptables", "ip6tables"):
        for table in ("raw", "security"):
            assert "porttrap" not in env.srv.run([iptables, "-t", table, "-S"])
    wait_until(lambda: env.service_reachable(env.atk, ATK4), PATIENCE, "attacker let through")


def outcomes(env: Env, address: str) -> list[str]:
    return sorted(h["outcome"] for h in hits_from(env, address))


def members(env: Env, set_name: str) -> list[str]:
    lines = env.srv.run(["ipset", "list", set_name]).splitlines()
    return [line.split()[0] for line in lines[lines.index("Members:") + 1 :] if line.strip()]


def test_datagrams_in_a_clients_or_gateways_name_never_ban_it_a_strangers_ban_them(
    env: Env,
) -> None:
    """The watch (ipset sets, security-table rules) knows the client by its TCP connection
    and the gateway from the routes the daemon reads, and marks the datagrams that carry
    their addresses; the UDP trap reads the mark."""
    env.start()
    assert "porttrap_clients_v4" in env.srv.run(["ipset", "list", "-n"])
    with open_socket(env.cli, CLIENT, socket.SOCK_STREAM) as live:
        live.settimeout(5)
        live.connect((SRV_CLI, SERVICE_PORT))  # a real client: the kernel records it
        assert live.recv(5) == b"hello"
        forged = [Probe(CLIENT, SRV4, 6969, "udp", sport=41000 + n) for n in range(3)]
        send(env.atk, forged, inter=0.05)  # from the attacker's side, in the client's name
        wait_until(lambda: len(hits_from(env, CLIENT)) == 3, PATIENCE, "forged datagrams recorded")
    assert outcomes(env, CLIENT) == ["client"] * 3
    assert not in_set(env, CLIENT)
    assert env.service_reachable(env.cli, CLIENT, SRV_CLI)

    env.srv.run(["ip", "route", "add", "203.0.113.0/24", "via", ATK4])  # ATK4: a gateway now
    wait_until(lambda: members(env, "porttrap_gateways_v4") == [ATK4], PATIENCE, "the gateway set")
    for _ in range(3):
        udp_send(env.atk, ATK4, SRV4, 6969)
    wait_until(lambda: len(hits_from(env, ATK4)) == 3, PATIENCE, "the gateway's datagrams recorded")
    assert outcomes(env, ATK4) == ["peer"] * 3
    assert not in_set(env, ATK4)

    for _ in range(2):  # a stranger's two datagrams ban it (confirm = 2)
        udp_send(env.atk, ATK4_B, SRV4, 6969)
    wait_until(lambda: in_set(env, ATK4_B), PATIENCE, "the stranger banned")
    wait_until(  # the kernel first, the database a moment later
        lambda: outcomes(env, ATK4_B) == ["banned", "counted"],
        PATIENCE,
        "the stranger's hits stored",
    )
    assert not env.service_reachable(env.atk, ATK4_B)

    env.srv.run(["ip", "route", "del", "203.0.113.0/24"])
    wait_until(lambda: members(env, "porttrap_gateways_v4") == [], PATIENCE, "the gateway gone")
