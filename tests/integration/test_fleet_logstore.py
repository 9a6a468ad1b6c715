"""`FleetLogStore` on a real PostgreSQL beyond the store contract (which checks it as one
host): the whole fleet's view, lifts that belong to their host, hostile rows, all-or-nothing
writes, read-only sessions, and `porttrap report --fleet` over two hosts' bans. One cluster
for the module (tests/fleetlog.py); hosts connect with their own roles over TCP and TLS.
"""

from __future__ import annotations

import ipaddress
from contextlib import closing
from pathlib import Path

import pytest

from fleetlog import HOSTS, FleetLog
from porttrap.cli import main as cli
from porttrap.clock import SystemClock
from porttrap.errors import StoreError
from porttrap.fleet.logstore import FleetLogStore
from porttrap.model import Ban, StoredBan, Unban
from porttrap.report.figures import Period
from porttrap.testing.clock import FakeClock

pytestmark = pytest.mark.kernel

T0 = 1_800_000_000.0
HOUR = 3600.0
X, Y = "203.0.113.7", "2001:db8::7"


def ban(target: str, at: float = T0, hours: float | None = 1.0, count: int = 1) -> Ban:
    expires = None if hours is None else at + hours * HOUR
    return Ban(ipaddress.ip_network(target), at, expires, count, f"trap:tcp/23 #{count}")


def unban(target: str, at: float, reason: str = "by hand") -> Unban:
    return Unban(ipaddress.ip_network(target), at, reason)


@pytest.fixture
def log(fleet_log: FleetLog) -> FleetLog:
    fleet_log.clear()
    return fleet_log


def test_the_fleet_sees_every_hosts_bans_each_lifted_by_its_own_host(log: FleetLog) -> None:
    clock = FakeClock(T0)
    with (
        closing(log.store("web-1", clock)) as web1,
        closing(log.store("web.2", clock)) as web2,
        closing(log.store(None, clock)) as fleet,
    ):
        web1.add_bans([ban(X), ban(Y, T0 + 1, None)])
        web2.add_bans([ban(X, T0 + 2, 2.0, count=2)])
        web1.lift([unban(X, T0 + 3, "allow-listed")])  # web-1's ban only
        assert web1.active_bans(T0 + 4) == [ban(Y, T0 + 1, None)]
        assert web2.active_bans(T0 + 4) == [ban(X, T0 + 2, 2.0, count=2)]
        assert fleet.active_bans(T0 + 4) == [ban(Y, T0 + 1, None), ban(X, T0 + 2, 2.0, count=2)]
        assert fleet.counts(T0 + 4) == (2, 1)
        assert fleet.bans_since(0.0)[0] == StoredBan(ban(X), T0 + 3, "allow-listed")
        hosts = [found.host for found in fleet.bans_in(Period.of(T0, T0 + 3))]
        assert hosts == ["web-1", "web-1", "web.2"]
        with closing(log.connect("web.2")) as conn:  # `porttrap unban --fleet` on web.2
            conn.execute(
                "INSERT INTO porttrap.log (host, kind, target, ban_id, banned_at) "
                "VALUES ('web.2', 'unban-fleet', %s, 'everywhere', %s)",
                (X, T0 + 5),
            )
        assert fleet.active_bans(T0 + 4) == [ban(Y, T0 + 1, None)]
        lifted = [s for s in fleet.bans_since(0.0) if s.ban.target == ipaddress.ip_network(X)]
        assert [s.lifted_reason for s in lifted] == [
            "allow-listed",
            "unbanned on every host by web.2",  # the row has no reason: its kind and host
        ]
        assert fleet.hosts() == sorted(HOSTS)


def test_hostile_rows_are_skipped_and_counted_once(log: FleetLog) -> None:
    with closing(log.connect("web.2")) as conn:
        conn.execute(
            "INSERT INTO porttrap.log (host, kind, target, ban_id, banned_at, expires_at, "
            "ban_count, reason, evidence) VALUES "
            "('web.2', 'ban', '0.0.0.0/0', 'a', 1.8e9, NULL, 1, 'all', 'verified'),"
            "('web.2', 'ban', '203.0.113.8', 'b', 'NaN', NULL, 1, 'nan', 'verified'),"
            "('web.2', 'ban', '203.0.113.9', 'c', 1.8e9, 5e9, 1, 'long', 'verified'),"
            "('web.2', 'ban', '203.0.113.10', 'd', 1.8e9, NULL, 0, 'none', 'verified'),"
            "('web.2', 'ban', '127.0.0.1', 'e', 1.8e9, NULL, 1, 'self', 'verified'),"
            "('web.2', 'ban', '203.0.113.11', 'f', 1.8e9 + 86400 * 3, NULL, 1, 'x', 'verified')"
        )
    with closing(log.store("web-1", FakeClock(T0))) as web1:
        web1.add_bans([ban(X)])
    with closing(log.store(None, FakeClock(T0))) as fleet:
        assert fleet.active_bans(T0 + 1) == [ban(X)]
        assert fleet.bans_since(0.0) == [StoredBan(ban(X))]
        assert fleet.report_figures(Period.of(T0 - HOUR, T0 + HOUR), 20).bans == 1
        assert fleet.bad_rows == 6  # each row once, however often it was read


def test_record_is_all_or_nothing(log: FleetLog) -> None:
    with closing(log.store("web-1", FakeClock(T0))) as web1:
        too_many = ban(Y, count=2**31)  # beyond the column's integer: the database refuses it
        with pytest.raises(StoreError, match="out of range"):
            web1.record([ban(X), too_many], [unban(X, T0 + 1)])
        assert web1.bans_since(0.0) == []
        web1.record([ban(X)], [unban(X, T0 + 1)])
        web1.record([ban(X)], [unban(X, T0 + 1)])  # a retried write: the same rows, no more
        assert web1.bans_since(0.0) == [StoredBan(ban(X), T0 + 1, "by hand")]


def test_each_write_commits_on_a_connection_given_outside_autocommit(log: FleetLog) -> None:
    with closing(FleetLogStore(log.connect("web-1", autocommit=False), "web-1")) as web1:
        web1.active_bans(T0)  # a read first: it must leave no transaction open
        web1.add_bans([ban(X)])
        with closing(log.store(None, FakeClock(T0))) as fleet:
            assert fleet.active_bans(T0) == [ban(X)]


def test_a_host_publishes_under_its_own_name_only(log: FleetLog) -> None:
    with closing(FleetLogStore(log.connect("web-1"), "web.2", FakeClock(T0))) as forged:
        with pytest.raises(StoreError, match="row-level security"):
            forged.add_bans([ban(X)])
        assert forged.bans_since(0.0) == []


def test_the_fleet_view_and_a_read_only_session_refuse_writes(log: FleetLog) -> None:
    with (
        closing(log.store(None, FakeClock(T0))) as fleet,
        pytest.raises(StoreError, match="only reads"),
    ):
        fleet.add_bans([ban(X)])
    with closing(log.store("web-1", FakeClock(T0))) as web1:
        web1.read_only()
        with pytest.raises(StoreError, match="read-only transaction"):
            web1.add_bans([ban(X)])
        assert web1.active_bans(T0) == []


def test_report_fleet_shows_both_hosts_bans_and_the_totals(
    log: FleetLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = SystemClock().now()  # the report's period ends now: the bans are an hour old
    with closing(log.store("web-1")) as web1, closing(log.store("web.2")) as web2:
        web1.add_bans([ban(X, now - HOUR, 2.0), ban("198.51.100.0/24", now - HOUR + 1, None)])
        web2.add_bans([ban(Y, now - HOUR + 2, 4.0, count=2)])
        web2.lift([unban(Y, now - HOUR + 3, "allow-listed on web.2")])
    password = tmp_path / "fleet.password"
    password.write_text(HOSTS["web-1"] + "\n")
    password.chmod(0o600)
    config = tmp_path / "porttrap.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[fleet]\nurl = "{log.url("web-1")}"\n'
        f'password_file = "{password}"\nname = "web-1"\n'
    )
    out = tmp_path / "fleet.html"
    with log.netns.inside():
        assert cli.main(["report", "--fleet", "-c", str(config), "--since", "1d",
                         "-o", str(out)]) == 0  # fmt: skip
    page = out.read_text()
    assert 'porttrap report: <span class="host">the fleet (2 hosts)</span>' in page
    for target in (X, "198.51.100.0/24", Y):
        assert f'<td class="addr">{target}</td>' in page
    assert '<td class="host">web-1</td>' in page and '<td class="host">web.2</td>' in page
    assert "lifted" in page and "allow-listed on web.2" in page
    cards = {"hosts": 2, "bans made": 3, "targets": 3, "banned now": 2}
    for what, n in cards.items():
        assert f'<span class="n">{n}</span><span class="what">{what}</span>' in page
    assert "Top sources" not in page  # the log holds no hits
