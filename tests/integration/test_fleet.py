"""A fleet of five real daemons, each in its own network namespace on one bridge, sharing bans
through a real PostgreSQL cluster: a trap touched on one host bans the scanner on every other
(IPv4 and IPv6), admin bans and unbans travel, the local protection wins, escalation counts
fleet-wide, and a hostile row never reaches a kernel."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fleet_env import ATK4, ATK4_B, ATK6, FleetLab, Host

from waiting import PATIENCE, holds_for, wait_until

pytestmark = pytest.mark.kernel

FLEET_SIZE = 5


def unreachable(host: Host) -> Callable[[], bool]:
    return lambda: not host.reachable_from_scanner()


def holds_copy_of(host: Host, address: str, origin: str) -> Callable[[], bool]:
    """Whether `host` holds a ban of `address` adopted from `origin`."""

    def held() -> bool:
        bans = [b for b in host.bans() if b["address"] == address]
        return any(b["reason"].endswith(f"(fleet: {origin})") for b in bans)

    return held


def test_a_trap_touched_on_one_host_bans_the_scanner_on_every_other(fleet_lab: FleetLab) -> None:
    hosts = fleet_lab.add(FLEET_SIZE)
    first, others = hosts[0], hosts[1:]
    assert all(h.reachable_from_scanner() for h in others)
    fleet_lab.touch_trap(first)
    fleet_lab.everywhere(ATK4)
    for host in others:
        wait_until(unreachable(host), PATIENCE, f"the scanner's packets dropped on {host.name}")
        (ban,) = [b for b in host.bans() if b["address"] == ATK4]
        assert ban["reason"] == "trap:tcp/2323 (fleet: web-1)"
        assert ban["evidence"] == "verified"
    # IPv6, touched on another host
    fleet_lab.touch_trap(hosts[2], ATK6)
    fleet_lab.everywhere(ATK6)
    assert not hosts[4].reachable_from_scanner(ATK6)
    assert hosts[2].json("fleet", "status")["link"]["published"] >= 1
    # What the fleet shows: who banned whom, and every host with its heartbeat
    fleet_bans = {(b["address"], b["host"]) for b in hosts[4].json("bans", "--fleet")}
    assert fleet_bans == {(ATK4, "web-1"), (ATK6, "web-3")}
    (row,) = hosts[1].json("history", "--fleet", ATK4)
    assert (row["host"], row["kind"], row["reason"]) == ("web-1", "ban", "trap:tcp/2323")
    status = hosts[0].porttrap("fleet", "status").stdout
    assert "link: connected" in status and "0 behind" in status, status
    for host in hosts:
        assert host.name in status
    known = {h["name"]: h for h in hosts[0].json("fleet", "status")["hosts"]}
    assert set(known) == {h.name for h in hosts}
    assert known["web-1"]["bans"] == 1 and known["web-3"]["bans"] == 1
    assert all(h["last_seen"] is not None for h in known.values())


def test_an_admin_ban_and_unban_travel_and_unban_fleet_lifts_every_hosts_own(
    fleet_lab: FleetLab,
) -> None:
    hosts = fleet_lab.add(FLEET_SIZE)
    hosts[0].porttrap("ban", "203.0.113.9")
    fleet_lab.everywhere("203.0.113.9")
    hosts[0].porttrap("unban", "203.0.113.9")
    fleet_lab.everywhere("203.0.113.9", present=False)
    # Two hosts' own bans of one address (web-2's the newer, so the others hold its copy): a
    # plain unban on web-1 lifts web-1's ban and copies of it only; unban --fleet lifts all.
    hosts[0].porttrap("ban", ATK4_B)
    fleet_lab.everywhere(ATK4_B)
    hosts[1].porttrap("ban", ATK4_B)
    for host in hosts[2:]:
        wait_until(holds_copy_of(host, ATK4_B, "web-2"), PATIENCE, f"web-2's ban on {host.name}")
    hosts[0].porttrap("unban", ATK4_B)
    fleet_lab.everywhere(ATK4_B, [hosts[0]], present=False)
    holds_for(lambda: all(h.banned(ATK4_B) for h in hosts[1:]), 2.0,
              "the other hosts keep web-2's ban")  # fmt: skip
    hosts[3].porttrap("unban", "--fleet", ATK4_B)
    fleet_lab.everywhere(ATK4_B, present=False)


def test_the_local_protection_wins_and_the_refusal_is_in_the_history(fleet_lab: FleetLab) -> None:
    allowed = fleet_lab.add(1, extra=f'[allow]\naddresses = ["{ATK4_B}"]\n')[0]
    hosts = [allowed, *fleet_lab.add(2)]
    banning, elsewhere = hosts[1], hosts[2]
    banning.porttrap("ban", ATK4_B, allowed.v4)
    fleet_lab.everywhere(ATK4_B, [elsewhere])
    fleet_lab.everywhere(allowed.v4, [elsewhere])
    history = allowed.json("history", ATK4_B)
    assert any(str(e.get("reason")).startswith(f"refused here: {ATK4_B} is on the allow list")
               for e in history), history  # fmt: skip
    own = allowed.json("history", allowed.v4)
    assert any("an address of this host" in str(e) for e in own), own
    assert not allowed.banned(ATK4_B) and not allowed.banned(allowed.v4)
    assert allowed.reachable_from_scanner(ATK4_B)
    assert "event=fleet-ban-refused" in allowed.log_text()


def test_escalation_continues_across_hosts(fleet_lab: FleetLab) -> None:
    hosts = fleet_lab.add(3, time="3s")  # the second ban: 3 s * 2**2 = 12 s
    fleet_lab.touch_trap(hosts[0])
    fleet_lab.everywhere(ATK4)
    fleet_lab.everywhere(ATK4, present=False)  # 3 s later, gone everywhere
    fleet_lab.touch_trap(hosts[1])  # the second ban anywhere
    wait_until(lambda: hosts[1].banned(ATK4), PATIENCE, "the second ban on web-2")
    (second,) = [b for b in hosts[1].bans() if b["address"] == ATK4]
    assert second["ban_count"] == 2
    fleet_lab.everywhere(ATK4, [hosts[2]])
    (copy,) = [b for b in hosts[2].bans() if b["address"] == ATK4]
    assert copy["ban_count"] == 2 and copy["reason"].endswith("(fleet: web-2)")


def test_a_hostile_row_in_the_log_never_reaches_a_kernel(fleet_lab: FleetLab) -> None:
    hosts = fleet_lab.add(2)
    fleet_lab.db("INSERT INTO porttrap.log (host, kind, target, ban_id, banned_at, expires_at, "
           "ban_count, reason, evidence) VALUES ('web-1', 'ban', '0.0.0.0/0', 'x', "
           "extract(epoch from now()), NULL, 1, 'everyone', 'verified')")  # fmt: skip
    hosts[0].porttrap("ban", "203.0.113.10")  # a good row after it
    fleet_lab.everywhere("203.0.113.10")
    assert "event=fleet-row-refused" in hosts[1].log_text()
    assert (
        hosts[1].json("fleet", "status")["link"]["refused_rows"] >= 1
    )  # (again after a reconnect)
    assert hosts[1].reachable_from_scanner()


def test_a_host_that_joins_gets_every_active_fleet_ban(fleet_lab: FleetLab) -> None:
    first = fleet_lab.add(1)[0]
    for n in range(1, 21):
        first.porttrap("ban", f"203.0.113.{n}")
    first.porttrap("unban", "203.0.113.20")
    late = fleet_lab.add(1)[0]
    wait_until(lambda: len(late.bans()) == 19, PATIENCE, "19 fleet bans on the new host")
    assert not late.banned("203.0.113.20")
    assert late.banned("203.0.113.1")
