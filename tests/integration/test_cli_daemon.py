"""The CLI conventions of issue 16 against a real daemon, nftables and SQLite in a namespace:
the admin's --reason everywhere a reason shows, an unban of an address inside a banned
network, history of an address with the network holding it, `unban --all`, what flush says,
and the exit codes of refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from daemon_env import Env

pytestmark = pytest.mark.kernel

TRAPS = """
[traps]
tcp = ["2323"]
udp = []
"""
NET, INSIDE, LONE = "203.0.113.0/24", "203.0.113.9", "198.51.100.77"
WHY = "scanned the mail server; ticket 4711"


def test_reason_held_by_and_unban_all(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(TRAPS)
    env.start()
    done = env.porttrap("ban", NET, "--permanent", "--reason", WHY)
    assert done.stdout.startswith(f"banned {NET} until permanent")
    env.porttrap("ban", LONE, "--for", "1h")

    # the reason, everywhere a reason is shown
    reasons = {b["address"]: b["reason"] for b in env.json("bans")}
    assert reasons == {NET: f"manual: {WHY}", LONE: "manual"}
    assert f"manual: {WHY}" in env.porttrap("bans").stdout
    assert f"manual: {WHY}" in env.porttrap("history").stdout
    assert [e["reason"] for e in env.json("history", NET)] == [f"manual: {WHY}"]

    # an address inside the network: its history holds the network's ban, and its unban says
    # which ban holds it and how to lift it (exit 5: it stays banned)
    assert [(e["what"], e["address"]) for e in env.json("history", INSIDE)] == [("ban", NET)]
    done = env.porttrap("unban", INSIDE, check=False)
    assert done.returncode == 5, done.stderr
    assert done.stdout == (
        f"{INSIDE} is still banned: it is inside the ban on {NET}, which holds it; lift that "
        f"with `porttrap unban {NET}` (and ban the rest again)\n"
    )
    assert env.in_set("ban_net_v4", NET)  # the network ban stays whole

    # unban --all: refused without a terminal unless --yes; then every ban goes
    done = env.porttrap("unban", "--all", stdin="", check=False)
    assert done.returncode == 5 and "add --yes to confirm" in done.stderr
    assert len(env.json("bans")) == 2
    done = env.porttrap("unban", "--all", "--yes")
    assert sorted(done.stdout.splitlines()) == sorted(
        [f"unbanned {NET}", f"unbanned {LONE}", "lifted 2 ban(s)"]
    )
    assert env.json("bans") == [] and not env.in_set("ban_net_v4", NET)
    done = env.porttrap("unban", "--all", "--yes")
    assert done.stdout == "nothing to lift: there were no active bans\n"

    # flush: what it removed, then that there was nothing
    refused = env.porttrap("flush", check=False)
    assert refused.returncode == 5 and "porttrap is running" in refused.stderr
    env.porttrap("ban", LONE)
    env.stop()
    done = env.porttrap("flush")
    assert done.stdout == (
        "removed nftables table inet porttrap, holding 1 ban(s) (bans stay in the database)\n"
    )
    done = env.porttrap("flush")
    assert done.stdout == (
        "nothing to remove: nftables table inet porttrap not in the kernel (bans stay in the "
        "database)\n"
    )
    # and the commands that need the daemon say it is not running, with exit 3
    for command in (["ban", LONE], ["unban", LONE], ["reload"], ["status"]):
        done = env.porttrap(*command, check=False)
        assert done.returncode == 3 and "porttrap is not running" in done.stdout + done.stderr
