"""The whole path, for real: trap sockets -> policy -> nftables -> SQLite -> CLI, with the daemon
running in its own network namespace and real packets from other namespaces."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable

import pytest
from daemon_env import (
    ALLOWED,
    ATK4,
    ATK4_B,
    ATK6,
    CLIENT,
    SERVICE_PORT,
    SRV4,
    SRV6,
    SRV_CLI,
    Env,
    announcements,
    tcp_works,
    udp_send,
)

from porttrap.firewall.ruleset import PROBE_TIMEOUT
from waiting import PATIENCE, holds_for, wait_until

pytestmark = pytest.mark.kernel

TRAPS = """
[traps]
tcp = ["2323"]
udp = ["6969"]
[allow]
addresses = ["198.51.100.3"]
"""


def hit_count(env: Env, address: str) -> int:
    return sum(1 for e in env.json("history", address, "-n", "1000") if e["what"] == "hit")


def test_scanner_is_dropped_everywhere_and_clients_keep_working(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS + '[ban]\ntime = "1h"\n')
    env.start()
    assert env.service_reachable(env.atk, ATK4)

    assert tcp_works(env.atk, ATK4, SRV4, 2323)  # the trap answers the handshake...
    wait_until(lambda: not env.service_reachable(env.atk, ATK4), PATIENCE, "v4 attacker dropped")
    assert not tcp_works(env.atk, ATK4, SRV4, 2323)  # ...and now nothing answers at all

    assert tcp_works(env.atk, ATK6, SRV6, 2323)
    wait_until(
        lambda: not env.service_reachable(env.atk, ATK6, SRV6), PATIENCE, "v6 attacker dropped"
    )

    udp_send(env.atk, ATK4_B, SRV4, 6969)  # a datagram's source can be forged: one counts...
    wait_until(lambda: hit_count(env, ATK4_B) == 1, PATIENCE, "first UDP hit stored")
    # (no connection from ATK4_B here: a client's datagrams are spared, forgeable as they are)
    assert not env.in_set("ban_v4", ATK4_B)
    udp_send(env.atk, ATK4_B, SRV4, 6969)  # ...the second in the window bans (confirm = 2)
    wait_until(lambda: env.in_set("ban_v4", ATK4_B), PATIENCE, "UDP prober banned")
    assert not env.service_reachable(env.atk, ATK4_B)
    wait_until(lambda: hit_count(env, ATK4_B) == 2, PATIENCE, "UDP hits stored")
    udp_send(env.atk, ATK4_B, SRV4, 6969)  # dropped in the kernel: the trap never sees it
    # a barrier, not a pause: a datagram sent after it, from a source no one bans (one is
    # counted, confirm = 2), reaches the same trap; once that one is stored, the dropped
    # one would have been as well, had it got through
    udp_send(env.cli, CLIENT, SRV_CLI, 6969)
    wait_until(lambda: hit_count(env, CLIENT) == 1, PATIENCE, "the datagram sent after it")
    outcomes = [e["outcome"] for e in env.json("history", ATK4_B) if e["what"] == "hit"]
    assert sorted(outcomes) == ["banned", "counted"]

    assert tcp_works(env.cli, ALLOWED, SRV_CLI, 2323)  # allow-listed: counted, never banned
    for source in (CLIENT, ALLOWED):
        assert env.service_reachable(env.cli, source, SRV_CLI)

    bans = {b["address"]: b for b in env.recorded_bans(3)}
    assert set(bans) == {ATK4, ATK4_B, ATK6}
    assert bans[ATK4]["reason"] == "trap:tcp/2323" and bans[ATK4_B]["reason"] == "trap:udp/6969"
    for ban in bans.values():
        assert ban["permanent"] is False and ban["ban_count"] == 1
        assert ban["expires_at"].endswith("Z") and ban["banned_at"] < ban["expires_at"]
    assert env.in_set("ban_v4", ATK4) and env.in_set("ban_v4", ATK4_B)
    assert env.in_set("ban_v6", ATK6)
    wait_until(lambda: hit_count(env, ALLOWED) == 1, PATIENCE, "allowed hit stored")
    allowed = env.json("history", ALLOWED)
    assert [(e["what"], e["outcome"]) for e in allowed] == [("hit", "allowed")]
    status = env.json("status")
    assert status["running"]
    assert status["bans"] == {"active": 3, "permanent": 0, "skipped_at_start": 0}
    assert "event=ban address=192.0.2.2" in env.log_text()


def test_escalation_then_permanent_across_kernel_expiries(
    env_factory: Callable[[str], Env],
) -> None:
    # 4 s, then 16 s. Each ban is seen as the kernel announces it (nft monitor), with its
    # timeout, and read back from the history, which keeps it after it ends: under CPU steal
    # a 4 s ban can be over before a listing of the set or `porttrap bans` shows it.
    env = env_factory(TRAPS + '[ban]\ntime = "4s"\nescalation = "quadratic"\npermanent_after = 3\n')
    env.start()

    def newest_ban_count() -> int | None:
        bans = [e for e in env.json("history", ATK4) if e["what"] == "ban"]
        return bans[0]["ban_count"] if bans else None

    with announcements(env) as kernel:
        for expected_count, length in ((1, 4), (2, 16)):
            assert tcp_works(env.atk, ATK4, SRV4, 2323)
            given = functools.partial(lambda s: s in kernel.timeouts(ATK4), length)
            wait_until(given, PATIENCE, f"ban {expected_count} in the kernel for {length} s")
            recorded = functools.partial(lambda n: newest_ban_count() == n, expected_count)
            wait_until(recorded, PATIENCE, f"ban {expected_count} recorded")
            # the kernel lifts the ban by itself when its timeout runs out
            reachable = functools.partial(env.service_reachable, env.atk, ATK4)
            wait_until(reachable, length + PATIENCE, "ban expired in kernel")
        assert tcp_works(env.atk, ATK4, SRV4, 2323)
        wait_until(lambda: env.permanent_in("ban_v4", ATK4), PATIENCE, "permanent ban in kernel")
        # each ban as the kernel got it (porttrap first adds a target with a short timeout,
        # then deletes it, to reset a timeout that an `add` would keep)
        assert [t for t in kernel.timeouts(ATK4) if t != PROBE_TIMEOUT] == [4, 16, None]
    (ban,) = env.recorded_bans(1)
    assert (ban["permanent"], ban["expires_at"], ban["ban_count"]) == (True, None, 3)
    history = [e for e in env.json("history", ATK4) if e["what"] == "ban"]
    durations = [e["ban_count"] for e in history]
    assert durations == [3, 2, 1]  # newest first
    # longer than the first ban: no timer of an earlier ban lifts the permanent one
    holds_for(lambda: not env.service_reachable(env.atk, ATK4), 5, "the permanent ban drops")
    assert "event=permanent-ban address=192.0.2.2" in env.log_text()


def test_restart_restores_bans_and_reconciles_the_kernel(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(TRAPS)
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "trap ban in kernel")
    env.porttrap("ban", "203.0.113.0/24", "--permanent")
    env.porttrap("ban", "-f", "-", "--for", "1h", stdin="198.51.100.77  # from a file\n")
    env.stop()

    assert env.in_set("ban_v4", ATK4), "stopping must leave bans in the kernel"
    assert not env.service_reachable(env.atk, ATK4)
    # someone edits porttrap's sets by hand while it is down
    env.srv.run(["nft", "delete", "element", "inet", "porttrap", "ban_v4", f"{{ {ATK4} }}"])
    env.srv.run(["nft", "add", "element", "inet", "porttrap", "ban_v4", "{ 198.51.100.99 }"])

    env.start()
    assert env.in_set("ban_v4", ATK4) and env.in_set("ban_v4", "198.51.100.77")
    assert env.permanent_in("ban_net_v4", "203.0.113.0/24")
    assert not env.in_set("ban_v4", "198.51.100.99"), "stray entry must be removed"
    assert not env.service_reachable(env.atk, ATK4)
    remaining = env.expires("ban_v4", ATK4)
    assert remaining is not None and 0 < remaining < 3600
    assert not env.permanent_in("ban_v4", "198.51.100.77")

    out = env.porttrap("unban", ATK4, "198.51.100.200").stdout
    assert f"unbanned {ATK4}" in out and "198.51.100.200 was not banned" in out
    assert env.service_reachable(env.atk, ATK4)
    assert {b["address"] for b in env.json("bans")} == {"203.0.113.0/24", "198.51.100.77"}


def test_admin_commands_refuse_what_would_lock_people_out(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.start()
    for target in (SRV4, "198.51.100.0/24", "127.0.0.1"):
        done = env.porttrap("ban", target, check=False)
        assert done.returncode == 5 and "refusing to ban" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    done = env.porttrap("ban", "198.51.100.7/24", "192.0.2.300", check=False)
    assert done.returncode == 2  # the daemon checks them too: a usage error
    assert "did you mean 198.51.100.0/24" in done.stderr and "192.0.2.300" in done.stderr
    assert env.json("bans") == []
    env.porttrap("ban", "203.0.113.0/24")
    done = env.porttrap("ban", "203.0.113.128/25", check=False)
    assert done.returncode == 5 and "overlaps the ban on 203.0.113.0/24" in done.stderr
    assert [b["address"] for b in env.json("bans")] == ["203.0.113.0/24"]
    assert env.service_reachable(env.cli, CLIENT, SRV_CLI)


def test_flush_removes_only_porttraps_table(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(TRAPS)
    env.srv.run(["nft", "add", "table", "inet", "other"])  # someone else's table
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "ban in kernel")
    refused = env.porttrap("flush", check=False)
    assert refused.returncode == 5 and "porttrap is running" in refused.stderr
    env.stop()
    env.porttrap("flush")
    assert env.srv.run(["nft", "list", "tables"]).split() == ["table", "inet", "other"]
    assert env.service_reachable(env.atk, ATK4)
    env.porttrap("flush")  # nothing left to remove: still fine


def test_no_trap_at_all_is_an_error_and_the_kernel_keeps_its_bans(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.start()
    env.porttrap("ban", "198.51.100.77", "--permanent")
    env.stop()
    # the only trap port is the one the protected host's real service listens on
    env.config.write_text(
        f'state_dir = "{env.state}"\n[traps]\ntcp = ["{SERVICE_PORT}"]\nudp = []\n'
    )
    first_run = len(env.log_text())
    env.start(wait=False)
    assert env.daemon is not None
    assert env.daemon.wait(timeout=20) == 1
    log = env.log_text()[first_run:]
    assert f"event=trap-skipped proto=tcp port={SERVICE_PORT}" in log and 'reason="in use"' in log
    assert "porttrap: error: no trap could be set" in log
    assert "event=restored" not in log  # refused before the kernel is touched
    assert env.permanent_in("ban_v4", "198.51.100.77")  # the first run's table, left as is


def test_flush_on_exit_leaves_no_table(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(TRAPS)
    env.start("--flush-on-exit")
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "ban in kernel")
    env.stop()
    assert env.srv.run(["nft", "list", "tables"]) == ""
    assert env.service_reachable(env.atk, ATK4)
    assert [b["address"] for b in env.json("bans")] == [ATK4]  # the database keeps it


def test_an_address_the_host_takes_on_is_unbanned_and_protected(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.start()
    env.porttrap("ban", "203.0.113.50", "--permanent")
    env.srv.run(["ip", "addr", "add", "203.0.113.50/32", "dev", "lo"])
    wait_until(
        lambda: env.json("bans") == [], PATIENCE, "ban lifted once the address is the host's"
    )
    assert not env.in_set("ban_v4", "203.0.113.50")
    assert "event=unban address=203.0.113.50 reason=" in env.log_text()
    done = env.porttrap("ban", "203.0.113.50", check=False)
    assert done.returncode == 5 and "is an address of this host" in done.stderr


def test_sighup_does_not_stop_the_daemon(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(TRAPS)
    env.start()
    assert env.daemon is not None
    os.kill(env.daemon.pid, signal.SIGHUP)
    wait_until(
        lambda: "event=reloaded changed=nothing" in env.log_text(), PATIENCE, "SIGHUP reload"
    )
    assert env.daemon.poll() is None and env.json("status")["running"]
    env.stop()


def test_without_a_daemon_commands_say_so(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(TRAPS)
    done = env.porttrap("ban", ATK4, check=False)
    assert done.returncode == 3
    assert "porttrap is not running" in done.stderr and "Traceback" not in done.stderr
    assert env.porttrap("status", check=False).returncode == 3


def test_a_firewall_reload_that_flushes_everything_is_repaired(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "ban in kernel")
    env.srv.run(["nft", "flush", "ruleset"])  # what `systemctl restart nftables` does
    assert env.service_reachable(env.atk, ATK4)
    wait_until(lambda: not env.service_reachable(env.atk, ATK4), 15, "ban put back")
    assert env.in_set("ban_v4", ATK4)
    assert "event=firewall-missing table=porttrap" in env.log_text()
