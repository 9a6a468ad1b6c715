"""The daemon with `backend = "ipset"`, for real: a connect to a trap bans the source in ipset,
the drop holds, a restart puts the ban back, an accept put before porttrap's jump is undone by
the daemon's own check, and `porttrap flush` removes porttrap's sets and chain only."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_env import ATK4, ATK6, SRV4, SRV6, Env, tcp_works, wait_until

from netns import Netns

pytestmark = pytest.mark.kernel

CONFIG = """
[traps]
tcp = ["2323"]
udp = []
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


def first_in_raw_prerouting(env: Env) -> str:
    rule = env.srv.run(["iptables", "-t", "raw", "-S", "PREROUTING", "1"])
    return rule.strip().removeprefix("-A PREROUTING ")


def test_trap_bans_in_ipset_and_a_restart_restores_the_ban(env: Env) -> None:
    env.start()
    assert "backend=ipset" in env.log_text()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: in_set(env, ATK4), 5, "trap ban in porttrap_v4")
    wait_until(lambda: not env.service_reachable(env.atk, ATK4), 5, "v4 attacker dropped")
    assert tcp_works(env.atk, ATK6, SRV6, 2323)
    wait_until(lambda: in_set(env, ATK6), 5, "trap ban in porttrap_v6")
    assert {ban["address"] for ban in env.recorded_bans(2)} == {ATK4, ATK6}
    env.stop()

    assert in_set(env, ATK4), "stopping must leave bans in the kernel"
    env.srv.run(["ipset", "del", "porttrap_v4", ATK4])  # lost while porttrap is down
    env.srv.run(["ipset", "add", "porttrap_v4", "198.51.100.99"])  # and a stray one
    env.start()
    assert in_set(env, ATK4) and in_set(env, ATK6)
    assert not in_set(env, "198.51.100.99"), "stray entry must be removed"
    assert not env.service_reachable(env.atk, ATK4)

    # someone puts an accept before porttrap's jump: the 5 s check puts the jump back first
    env.srv.run(["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT"])
    wait_until(lambda: first_in_raw_prerouting(env) == "-j porttrap", 15, "jump first again")
    assert "event=firewall-missing" in env.log_text()
    assert not env.service_reachable(env.atk, ATK4)


def test_flush_removes_porttraps_sets_and_chain_only(env: Env) -> None:
    env.srv.run(["ipset", "create", "other", "hash:ip"])
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: in_set(env, ATK4), 5, "trap ban in porttrap_v4")
    env.stop()
    assert "porttrap_clients_v4" in env.srv.run(["ipset", "list", "-n"])  # the watch's too
    done = env.porttrap("flush")
    assert "removed ipset sets porttrap_v4, porttrap_v6, porttrap_clients_v4" in done.stdout
    assert "chains raw porttrap, security porttrap_in, porttrap_out, porttrap_mark" in done.stdout
    assert env.srv.run(["ipset", "list", "-n"]).split() == ["other"]
    for iptables in ("iptables", "ip6tables"):
        for table in ("raw", "security"):
            assert "porttrap" not in env.srv.run([iptables, "-t", table, "-S"])
    wait_until(lambda: env.service_reachable(env.atk, ATK4), 5, "attacker let through")
