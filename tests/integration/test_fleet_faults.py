"""The fleet when things go wrong: PostgreSQL stopped for 30 s while two hosts decide bans; one
host's link cut and restored; a host killed with SIGKILL while bans wait in its outbox; a host
restarted with no database at all. Each host goes on protecting itself, and nothing decided
is lost."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fleet_env import ATK4, ATK4_B, ATK6, FleetLab, Host

from waiting import PATIENCE, holds_for, wait_until

pytestmark = pytest.mark.kernel

DOWN_FOR = 30.0  # seconds PostgreSQL stays stopped (the scenario)


def link(host: Host) -> dict[str, object]:
    return host.link()


def disconnected(host: Host) -> Callable[[], bool]:
    return lambda: link(host).get("connected") is False


def outbox_holds(host: Host, count: int) -> Callable[[], bool]:
    return lambda: link(host).get("outbox") == count


@pytest.mark.timeout(DOWN_FOR + 10 * 30)  # the outage itself, then ordinary waits
def test_postgresql_stopped_for_30_s_while_two_hosts_ban_loses_nothing(fleet_lab: FleetLab) -> None:
    hosts = fleet_lab.add(4)
    fleet_lab.cluster.stop()
    for host in hosts[:2]:
        wait_until(disconnected(host), PATIENCE, f"{host.name} sees the database gone")
    fleet_lab.touch_trap(hosts[0])  # each host still protects itself
    hosts[1].porttrap("ban", "203.0.113.30")
    fleet_lab.touch_trap(hosts[1], ATK6)
    assert hosts[0].banned(ATK4) and hosts[1].banned("203.0.113.30")
    assert not hosts[2].banned(ATK4)  # nothing can travel meanwhile
    wait_until(outbox_holds(hosts[1], 2), PATIENCE, "web-2's two bans in its outbox")
    # The database stays away 30 s; each host goes on holding its own bans meanwhile.
    holds_for(lambda: hosts[0].banned(ATK4) and not fleet_lab.cluster.running, DOWN_FOR,
              "web-1 holds its ban while the database is down")  # fmt: skip
    fleet_lab.cluster.start()
    fleet_lab.reconnected()
    for address in (ATK4, "203.0.113.30", ATK6):
        fleet_lab.everywhere(address)
    for host in hosts:
        wait_until(outbox_holds(host, 0), PATIENCE, f"{host.name}'s outbox empty")
    assert "event=fleet-lost" in hosts[0].log_text()
    assert hosts[0].log_text().count("event=fleet-lost") == 1  # once, however long it lasted
    assert "event=fleet-connected" in hosts[0].log_text()


def test_a_host_whose_link_is_cut_catches_up_when_it_returns(fleet_lab: FleetLab) -> None:
    hosts = fleet_lab.add(3)
    cut = hosts[2]
    device = _device(cut)
    cut.netns.run(["ip", "link", "set", device, "down"])
    hosts[0].porttrap("ban", "203.0.113.40")
    fleet_lab.touch_trap(hosts[1], ATK4_B)
    fleet_lab.everywhere("203.0.113.40", hosts[:2])
    assert not cut.banned("203.0.113.40")
    cut.netns.run(["ip", "link", "set", device, "up"])
    fleet_lab.reconnected([cut])  # the same connection, or a new one after its back-off
    fleet_lab.everywhere("203.0.113.40", [cut])
    fleet_lab.everywhere(ATK4_B, [cut])


def test_a_host_killed_with_bans_in_its_outbox_publishes_them_after_restart(
    fleet_lab: FleetLab,
) -> None:
    hosts = fleet_lab.add(2)
    victim = hosts[0]
    fleet_lab.cluster.stop()
    wait_until(disconnected(victim), PATIENCE, "web-1 sees the database gone")
    victim.porttrap("ban", "203.0.113.50")
    fleet_lab.touch_trap(victim)
    wait_until(outbox_holds(victim, 2), PATIENCE, "two bans in web-1's outbox")
    victim.kill()
    fleet_lab.cluster.start()
    victim.start(wait=False)
    fleet_lab.reconnected()
    fleet_lab.everywhere("203.0.113.50")
    fleet_lab.everywhere(ATK4)


def test_a_host_restarted_without_the_database_keeps_its_fleet_bans(fleet_lab: FleetLab) -> None:
    hosts = fleet_lab.add(2)
    hosts[0].porttrap("ban", "203.0.113.60")
    fleet_lab.everywhere("203.0.113.60")
    hosts[1].stop()
    fleet_lab.cluster.stop()
    hosts[1].start(wait=False)
    wait_until(hosts[1].running, PATIENCE, "web-2 runs without the database")
    # from its own store (the control socket answers before the restore is done)
    wait_until(lambda: hosts[1].banned("203.0.113.60"), PATIENCE, "web-2 restores its fleet ban")
    assert link(hosts[1]).get("connected") is False


def _device(host: Host) -> str:
    """The host's interface on the bridge."""
    out = host.netns.run(["ip", "-o", "-4", "addr", "show", "to", host.v4])
    return out.split()[1].split("@")[0]
