"""Issue 13, durability, with the real daemon in network namespaces: porttrap's ruleset
damaged by hand is rebuilt with every ban, and a state_dir that cannot be written (a real,
full tmpfs) loses no ban that `porttrap ban` acknowledged, across a restart."""

from __future__ import annotations

import os
import signal
import subprocess  # noqa: TID251 - test helper
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_env import ATK4, SRV4, Env, tcp_works, wait_until

from waiting import PATIENCE

pytestmark = pytest.mark.kernel

TRAPS = """
[traps]
tcp = ["2323"]
udp = ["6969"]
"""
REPAIR = 60  # seconds: the check runs every 5 s; generous for a loaded machine


def banned_everywhere(env: Env) -> bool:
    return (
        env.in_set("ban_v4", ATK4)
        and env.permanent_in("ban_net_v4", "203.0.113.0/24")
        and env.in_set("ban_v4", "198.51.100.77")
        and not env.service_reachable(env.atk, ATK4)
    )


@pytest.mark.parametrize(
    "damage",
    [
        [["nft", "flush", "table", "inet", "porttrap"]],
        [
            ["nft", "flush", "chain", "inet", "porttrap", "prerouting"],
            ["nft", "delete", "chain", "inet", "porttrap", "prerouting"],
        ],
        [["nft", "flush", "set", "inet", "porttrap", "ban_v4"]],
    ],
    ids=["flush-table", "delete-prerouting-chain", "flush-set"],
)
def test_a_damaged_ruleset_is_rebuilt_with_every_ban(
    env_factory: Callable[[str], Env], damage: list[list[str]]
) -> None:
    env = env_factory(TRAPS)
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "trap ban in kernel")
    env.porttrap("ban", "203.0.113.0/24", "--permanent")
    env.porttrap("ban", "198.51.100.77", "--for", "1h")
    assert banned_everywhere(env)
    for argv in damage:
        env.srv.run(argv)
    assert env.service_reachable(env.atk, ATK4), "the damage must have lifted the ban"
    wait_until(lambda: banned_everywhere(env), REPAIR, "ruleset rebuilt with every ban")
    remaining = env.expires("ban_v4", "198.51.100.77")
    assert remaining is not None and 3000 < remaining <= 3600, "the exact time left"
    assert "event=firewall-damaged table=porttrap" in env.log_text()


def test_a_flushed_set_among_many_bans_is_found_by_counting_and_refilled(
    env_factory: Callable[[str], Env],
) -> None:
    """Above 1,000 bans the check counts them instead of looking for each."""
    env = env_factory(TRAPS)
    env.start()
    many = "".join(f"2001:db8:ff::{n:x}\n" for n in range(1, 1201))
    env.porttrap("ban", "-f", "-", "--for", "1h", stdin=many)
    assert len(env.nft_set("ban_v6")) == 1200
    env.srv.run(["nft", "flush", "set", "inet", "porttrap", "ban_v6"])
    wait_until(lambda: len(env.nft_set("ban_v6")) == 1200, REPAIR, "ban_v6 refilled")
    assert 'problem="the kernel holds 0 bans of 1200"' in env.log_text()


def test_after_a_crash_the_kernels_bans_that_the_store_lacks_are_kept(
    env_factory: Callable[[str], Env],
) -> None:
    """`kill -9` leaves no mark of a clean stop: the start reads the kernel's bans and keeps
    those the store lacks (here one added by hand), with the kernel's time left. After a
    clean stop the store lacks nothing, and the start does not read them (test_daemon)."""
    env = env_factory(TRAPS)
    env.start()
    env.porttrap("ban", "198.51.100.77", "--for", "1h")
    os.kill(env.daemon_pid(), signal.SIGKILL)
    assert env.daemon is not None
    env.daemon.wait(timeout=20)
    env.srv.run(["nft", "add", "element", "inet", "porttrap", "ban_v4",
                 "{ 198.51.100.99 timeout 10m }"])  # fmt: skip
    env.start()
    assert {"198.51.100.77", "198.51.100.99"} <= listed(env)
    kept = env.expires("ban_v4", "198.51.100.99")
    assert kept is not None and 0 < kept <= 600
    assert "event=bans-kept-from-kernel count=1" in env.log_text()


@pytest.fixture
def full_disk_env(env_factory: Callable[[str], Env], tmp_path: Path) -> Iterator[Env]:
    """A daemon whose state_dir is a 4 MiB tmpfs in a private mount namespace, which a
    holder process (ours) keeps alive across restarts; the daemon and the CLI enter it."""
    env = env_factory(TRAPS)
    env.state.mkdir(mode=0o700)
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"]
    )
    try:
        env.wrap = ["nsenter", "-t", str(holder.pid), "-m"]
        wait_until(lambda: _mounted_ns(holder.pid), PATIENCE, "private mount namespace")
        _in(env, ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(env.state)])
        assert not env.state.is_mount(), "the tmpfs was mounted in the host's mount namespace"
        yield env
    finally:
        if env.daemon is not None and env.daemon.poll() is None:
            env.daemon.kill()
            env.daemon.wait(timeout=20)
        holder.kill()
        holder.wait(timeout=20)


def _mounted_ns(pid: int) -> bool:
    """Whether `pid` runs `sleep` in a mount namespace of its own: unshare execs it only once
    the namespace is made and private. (The links are compared, not resolved: resolving puts
    each process's own /proc/PID in front, and two different paths always differ.)"""
    proc = Path(f"/proc/{pid}")
    try:
        exe, ns = (proc / "exe").readlink(), (proc / "ns" / "mnt").readlink()
    except FileNotFoundError:  # not yet, or no longer
        return False
    return exe.name == "sleep" and ns != Path("/proc/self/ns/mnt").readlink()


def _in(env: Env, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*env.wrap, *argv], capture_output=True, text=True, check=False,
                          timeout=60)  # fmt: skip


def fill(env: Env) -> None:
    """Fill the state_dir's file system: every later write that needs a block fails."""
    _in(env, ["dd", "if=/dev/zero", f"of={env.state / 'fill'}", "bs=64k"])
    assert "No space left" in _in(env, ["dd", "if=/dev/zero", f"of={env.state / 'x'}",
                                       "bs=4k", "count=1"]).stderr  # fmt: skip


def free(env: Env) -> None:
    _in(env, ["rm", "-f", str(env.state / "fill"), str(env.state / "x")])


def store_ok(env: Env) -> bool:
    return bool(env.json("status")["store"]["ok"])


def listed(env: Env) -> set[str]:
    return {ban["address"] for ban in env.json("bans")}


def test_a_store_that_cannot_write_loses_no_acknowledged_ban(full_disk_env: Env) -> None:
    env = full_disk_env
    env.start()
    fill(env)

    first = env.porttrap("ban", "198.51.100.50", "--for", "1h", check=False)
    assert first.returncode == 4, first
    assert "in the kernel but not yet on disk" in first.stderr
    assert env.in_set("ban_v4", "198.51.100.50")
    wait_until(lambda: not store_ok(env), PATIENCE, "status shows the failing store")
    assert "event=store-failing" in env.log_text()

    free(env)  # the disk is usable again: the retried write goes through
    wait_until(lambda: store_ok(env), 60, "store recovered")
    assert "198.51.100.50" in listed(env)
    assert "event=store-recovered" in env.log_text()

    fill(env)
    second = env.porttrap("ban", "198.51.100.51", "--permanent", check=False)
    assert second.returncode == 4, second
    env.stop()  # the write is given up, the ban stays in the kernel
    assert "event=store-write-lost" in env.log_text()
    free(env)

    env.start()
    assert {"198.51.100.50", "198.51.100.51"} <= listed(env)
    assert env.permanent_in("ban_v4", "198.51.100.51")
    remaining = env.expires("ban_v4", "198.51.100.50")
    assert remaining is not None and 3000 < remaining <= 3600
    assert "event=bans-kept-from-kernel count=1" in env.log_text()
