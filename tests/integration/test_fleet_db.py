"""The fleet's shared log in a real PostgreSQL (issue 14): what the database itself guarantees,
whatever a host's software does. Each test gets its own throw-away cluster (tests/pgcluster.py)
in a namespace on a bridge, at 198.51.100.100 and 2001:db8:f::100, and connects as the hosts
would: over TCP from other namespaces, scram-sha-256, TLS verify-full against the test CA.

- `fleet init` creates schema v1, and a second init changes nothing; a newer one is refused;
- `fleet add-host` makes a role that logs in from another namespace and publishes under its
  own name, never under another's (RLS: SQLSTATE 42501), never updates or deletes the log,
  and updates only its own row in porttrap.hosts;
- ids commit in id order (a second writer waits for the first to commit);
- one NOTIFY per INSERT statement, carrying the largest id;
- TLS verify-full works with the test CA and fails against another.
"""

from __future__ import annotations

import asyncio
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from psycopg.rows import TupleRow

from bridge import Bridge, Plugged
from netns import Netns
from pgcluster import Address, CertAuthority, PgCluster
from porttrap.cli import main as cli
from porttrap.clock import SystemClock
from porttrap.config.schema import FleetConfig
from porttrap.errors import FleetError
from porttrap.fleet import admin, link, rows
from porttrap.fleet.link import FleetLink
from porttrap.fleet.outbox import Outbox
from porttrap.fleet.schema import CHANNEL, VERSION
from porttrap.model import Evidence, FleetEntry
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

Conn = psycopg.Connection[TupleRow]
BAN = (
    "INSERT INTO porttrap.log (host, kind, target, ban_id, banned_at, expires_at, ban_count,"
    " reason, evidence) VALUES (%s, 'ban', %s, %s, 1.8e9, 1.8e9 + 600, 1, 'trap', 'verified')"
    " RETURNING id"
)


@dataclass
class Fleet:
    """The cluster with the schema, and two hosts' namespaces on the bridge."""

    cluster: PgCluster
    web1: Plugged
    web2: Plugged

    def connect(
        self,
        host: Plugged,
        name: str,
        password: str,
        address: Address | None = None,
        autocommit: bool = False,
    ) -> Conn:
        """`name`'s role from `host`'s namespace over TCP (default IPv4), TLS verify-full."""
        url = self.cluster.url_for(admin.role_for(name), address)
        with host.netns.inside():
            return psycopg.connect(
                url, password=password, connect_timeout=10, autocommit=autocommit
            )


@pytest.fixture
def fleet(pg_cluster: PgCluster, fleet_bridge: Bridge, netns_factory: Callable[[], Netns]) -> Fleet:
    admin.init(pg_cluster.admin_url())
    admin.add_host(pg_cluster.admin_url(), "web-1", "pw-one")
    admin.add_host(pg_cluster.admin_url(), "web.2", "pw-two")
    return Fleet(
        pg_cluster, fleet_bridge.plug(netns_factory(), 1), fleet_bridge.plug(netns_factory(), 2)
    )


@contextmanager
def closing(conn: Conn) -> Iterator[Conn]:
    try:
        yield conn
    finally:
        conn.close()


def dump(cluster: PgCluster) -> str:
    """The porttrap schema, its data and the roles, as pg_dump and the catalog show them."""
    schema = cluster.dump("porttrap")
    with cluster.admin() as conn:
        roles = conn.execute(
            "SELECT rolname, rolcanlogin, rolpassword FROM pg_authid"
            " WHERE rolname LIKE 'porttrap%' ORDER BY 1"
        ).fetchall()
    return schema + repr(roles)


def test_init_creates_version_1_and_a_second_init_changes_nothing(pg_cluster: PgCluster) -> None:
    url = pg_cluster.admin_url()
    first = admin.init(url)
    assert (first.before, first.after) == (0, VERSION) == (0, 1)
    assert "created the fleet schema (version 1)" in str(first)
    with pg_cluster.admin() as conn:
        assert conn.execute("SELECT value FROM porttrap.meta").fetchall() == [("1",)]
        tables = conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class"
            " WHERE relnamespace = 'porttrap'::regnamespace AND relkind = 'r' ORDER BY 1"
        ).fetchall()
    assert tables == [("hosts", True, True), ("log", True, True), ("meta", False, False)]
    admin.add_host(url, "web-1", "pw-one")
    before = dump(pg_cluster)
    again = admin.init(url)
    assert (again.before, again.after) == (1, 1)
    assert "nothing to do" in str(again)
    assert dump(pg_cluster) == before


def test_a_database_at_a_newer_version_is_refused_and_left_alone(pg_cluster: PgCluster) -> None:
    url = pg_cluster.admin_url()
    admin.init(url)
    with pg_cluster.admin() as conn:
        conn.execute("UPDATE porttrap.meta SET value = '2' WHERE key = 'schema_version'")
    before = dump(pg_cluster)
    with pytest.raises(FleetError, match=r"at version 2, newer than this porttrap knows \(1\)"):
        admin.init(url)
    with pytest.raises(FleetError, match="upgrade porttrap"):
        admin.add_host(url, "web-1", "pw-one")
    assert dump(pg_cluster) == before


def test_add_host_needs_the_schema_and_refuses_a_taken_name(pg_cluster: PgCluster) -> None:
    url = pg_cluster.admin_url()
    with pytest.raises(FleetError, match="run porttrap fleet init first"):
        admin.add_host(url, "web-1", "pw")
    admin.init(url)
    assert admin.add_host(url, "web-1", "pw") == "porttrap_host_web_1"
    with pytest.raises(FleetError, match="host web-1 is in the fleet already"):
        admin.add_host(url, "web-1", "pw")
    with pytest.raises(FleetError, match="a role named porttrap_host_web_1 exists already"):
        admin.add_host(url, "web.1", "pw")
    assert admin.add_host(url, "web.1", "pw", role="web_1_dot") == "web_1_dot"


def test_a_host_logs_in_from_its_namespace_and_publishes_under_its_own_name(fleet: Fleet) -> None:
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        who = conn.execute(
            "SELECT current_user, inet_client_addr(), ssl FROM pg_stat_ssl"
            " WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert who is not None
        assert (who[0], str(who[1]), who[2]) == ("porttrap_host_web_1", "198.51.100.1", True)
        row = conn.execute(BAN, ("web-1", "203.0.113.7", "b1")).fetchone()
        conn.commit()
    assert row is not None
    with fleet.cluster.admin() as conn:
        stored = conn.execute("SELECT id, host, target::text FROM porttrap.log").fetchall()
    assert stored == [(row[0], "web-1", "203.0.113.7/32")]
    with closing(fleet.connect(fleet.web2, "web.2", "pw-two", address=fleet.cluster.addresses[1])):
        pass  # IPv6, TLS verified against the SAN 2001:db8:f::100


def test_a_wrong_password_is_refused(fleet: Fleet) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        fleet.connect(fleet.web1, "web-1", "pw-two")


def test_a_row_forged_under_another_hosts_name_is_refused_by_the_database(fleet: Fleet) -> None:
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security") as refused:
            conn.execute(BAN, ("web.2", "203.0.113.7", "forged"))
        assert refused.value.sqlstate == "42501"
    with fleet.cluster.admin() as conn:
        assert conn.execute("SELECT count(*) FROM porttrap.log").fetchone() == (0,)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE porttrap.log SET expires_at = NULL",
        "DELETE FROM porttrap.log",
        "TRUNCATE porttrap.log",
        "UPDATE porttrap.hosts SET name = 'web-9' WHERE name = 'web-1'",
        "INSERT INTO porttrap.hosts (name, role) VALUES ('web-9', 'porttrap_host_web_1')",
        "UPDATE porttrap.meta SET value = '9'",
        "SELECT nextval('porttrap.log_id')",
    ],
)
def test_a_host_cannot_rewrite_the_log_or_the_fleet(fleet: Fleet, statement: str) -> None:
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        conn.execute(BAN, ("web-1", "203.0.113.7", "b1"))
        conn.commit()
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute(statement)
        assert refused.value.sqlstate == "42501"


def test_a_host_updates_its_own_heartbeat_and_position_only(fleet: Fleet) -> None:
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        mine = conn.execute(
            "UPDATE porttrap.hosts SET last_seen = now(), position = 5 WHERE name = 'web-1'"
        )
        assert mine.rowcount == 1
        theirs = conn.execute(
            "UPDATE porttrap.hosts SET last_seen = now(), position = 5 WHERE name = 'web.2'"
        )
        assert theirs.rowcount == 0
        conn.commit()
    with fleet.cluster.admin() as conn:
        rows = conn.execute("SELECT name, position FROM porttrap.hosts ORDER BY name").fetchall()
    assert rows == [("web-1", 5), ("web.2", 0)]


def test_ids_and_times_are_the_databases_whatever_the_client_sends(fleet: Fleet) -> None:
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        row = conn.execute(
            "INSERT INTO porttrap.log (id, at, host, kind, target, ban_id)"
            " VALUES (1000000, '2001-01-01', 'web-1', 'unban', '203.0.113.7', 'u1')"
            " RETURNING id, at > now() - interval '1 hour'"
        ).fetchone()
    assert row == (1, True)


def test_ids_commit_in_id_order(fleet: Fleet) -> None:
    """While web-1's insert is open, web.2's waits; so the later commit has the larger id,
    and a reader that saw id N never later finds a smaller one."""
    first = fleet.connect(fleet.web1, "web-1", "pw-one")
    second = fleet.connect(fleet.web2, "web.2", "pw-two")
    second_pid = second.info.backend_pid
    got: list[int] = []

    def insert_second() -> None:
        row = second.execute(BAN, ("web.2", "203.0.113.8", "b2")).fetchone()
        assert row is not None
        got.append(int(str(row[0])))
        second.commit()

    with closing(first), closing(second):
        row = first.execute(BAN, ("web-1", "203.0.113.7", "b1")).fetchone()
        assert row is not None
        writer = threading.Thread(target=insert_second)
        writer.start()
        try:
            wait_until(lambda: waits_on_advisory_lock(fleet.cluster, second_pid) or bool(got),
                       what="web.2's insert waiting on the log's lock, or done")  # fmt: skip
            assert got == [], "web.2 drew an id while web-1's insert was still open"
            first.commit()
        finally:
            writer.join(PATIENCE)
        assert got and got[0] > int(str(row[0]))


def waits_on_advisory_lock(cluster: PgCluster, pid: int) -> bool:
    with cluster.admin() as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'"
            " AND NOT granted",
            (pid,),
        ).fetchone()
    return found == (1,)


def test_one_notify_per_insert_statement_with_the_largest_id(fleet: Fleet) -> None:
    listener = fleet.connect(fleet.web2, "web.2", "pw-two", autocommit=True)
    with closing(listener), closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as writer:
        listener.execute(f"LISTEN {CHANNEL}")
        three = writer.execute(
            "INSERT INTO porttrap.log (host, kind, target, ban_id) VALUES"
            " ('web-1', 'unban', '203.0.113.1', 'a'), ('web-1', 'unban', '203.0.113.2', 'b'),"
            " ('web-1', 'unban', '203.0.113.3', 'c') RETURNING id"
        ).fetchall()
        writer.commit()
        one = writer.execute(BAN, ("web-1", "203.0.113.4", "d")).fetchall()
        none = writer.execute(  # a duplicate: nothing inserted, nothing to tell
            BAN.replace("RETURNING id", "ON CONFLICT DO NOTHING RETURNING id"),
            ("web-1", "203.0.113.4", "d"),
        ).fetchall()
        writer.commit()
        writer.execute("SELECT pg_notify(%s, 'end')", (CHANNEL,))
        writer.commit()
        payloads: list[str] = []
        for notify in listener.notifies(timeout=PATIENCE):
            payloads.append(notify.payload)
            if notify.payload == "end":
                break
    assert none == []
    assert payloads == [str(max(int(str(r[0])) for r in three)), str(one[0][0]), "end"]


def test_tls_verify_full_needs_the_right_ca(
    fleet: Fleet, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = CertAuthority(tmp_path_factory.mktemp("other-ca"), "another CA")
    url = fleet.cluster.url_for("porttrap_host_web_1", ca=other.cert)
    with (
        fleet.web1.netns.inside(),
        pytest.raises(psycopg.OperationalError, match="certificate verify failed"),
    ):
        psycopg.connect(url, password="pw-one", connect_timeout=10)
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        assert conn.execute(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone() == (True,)


def test_the_cluster_stops_and_starts_again_on_the_same_data(fleet: Fleet) -> None:
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        conn.execute(BAN, ("web-1", "203.0.113.7", "b1"))
        conn.commit()
    fleet.cluster.stop()
    with pytest.raises(psycopg.OperationalError):
        fleet.connect(fleet.web1, "web-1", "pw-one")
    fleet.cluster.start()
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        assert conn.execute("SELECT count(*) FROM porttrap.log").fetchone() == (1,)


def test_the_cli_sets_up_a_host_whose_written_password_logs_in(
    pg_cluster: PgCluster,
    fleet_bridge: Bridge,
    netns_factory: Callable[[], Netns],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = pg_cluster.admin_url()
    assert cli.main(["fleet", "init", "--admin-url", url]) == 0
    assert "created the fleet schema (version 1)" in capsys.readouterr().out
    written = tmp_path / "web-1.password"
    assert cli.main(["fleet", "add-host", "web-1", "--admin-url", url,
                     "--write-password", str(written)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"added host web-1 (role porttrap_host_web_1); its password is in {written}" in out
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    password = written.read_text().removesuffix("\n")
    assert len(password) >= 40 and password not in out
    assert cli.main(["fleet", "add-host", "web.2", "--admin-url", url]) == 0
    printed = capsys.readouterr()
    assert "its password, shown only now" in printed.err
    fleet = Fleet(
        pg_cluster, fleet_bridge.plug(netns_factory(), 1), fleet_bridge.plug(netns_factory(), 2)
    )
    with closing(fleet.connect(fleet.web1, "web-1", password)) as conn:
        conn.execute(BAN, ("web-1", "203.0.113.7", "b1"))
        conn.commit()
    with closing(fleet.connect(fleet.web2, "web.2", printed.out.strip())):
        pass
    with pg_cluster.admin() as conn:
        verifiers = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname LIKE 'porttrap_host_%'"
        ).fetchall()
    assert [v[0].startswith("SCRAM-SHA-256$") for v in verifiers] == [True, True]


def test_remove_host_drops_the_role_and_keeps_the_hosts_log_rows(fleet: Fleet) -> None:
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        conn.execute(BAN, ("web-1", "203.0.113.7", "b1"))
        conn.commit()
    url = fleet.cluster.admin_url()
    assert "kept host web-1" in admin.remove_host(url, "web-1")
    assert admin.remove_host(url, "web.2") == "dropped role porttrap_host_web_2 and host web.2"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        fleet.connect(fleet.web1, "web-1", "pw-one")
    with fleet.cluster.admin() as conn:
        assert conn.execute("SELECT name FROM porttrap.hosts").fetchall() == [("web-1",)]
        assert conn.execute("SELECT count(*) FROM porttrap.log").fetchone() == (1,)


def test_rows_read_with_select_after_parse_into_the_bans_published(fleet: Fleet) -> None:
    now = BAN.replace("1.8e9", "extract(epoch FROM now())")
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        conn.execute(now, ("web-1", "203.0.113.7", "b1"))
        conn.execute(now, ("web-1", "2001:db8:7::/48", "b2"))
        conn.execute(now, ("web-1", "0.0.0.0/0", "b3"))  # hostile: the database takes it
        conn.execute(BAN, ("web-1", "203.0.113.9", "b4"))  # 1.8e9: weeks ahead of the clock
        conn.commit()
    with closing(fleet.connect(fleet.web2, "web.2", "pw-two")) as conn:
        read = conn.execute(rows.SELECT_AFTER, (0, 100)).fetchall()
    found = [rows.parse(row) for row in read]
    first, second, third, fourth = found
    assert isinstance(first, FleetEntry) and isinstance(second, FleetEntry), found
    assert (first.id, first.host, str(first.target)) == (1, "web-1", "203.0.113.7/32")
    assert first.ban is not None and first.ban.expires_at == first.ban.banned_at + 600
    assert (first.ban.ban_count, first.ban.reason, first.ban.evidence) == (
        1, "trap", Evidence.VERIFIED
    )  # fmt: skip
    assert str(second.target) == "2001:db8:7::/48"
    assert (second_lag := rows.lag(read[1])) is not None and 0 <= second_lag < PATIENCE
    assert third == (
        "fleet log row 3 from web-1: target 0.0.0.0/0 is wider than /8: no scanner is that big"
    )
    assert isinstance(fourth, str) and "ahead of the database's clock" in fourth


def test_a_snapshot_read_in_pages_brings_every_active_ban_once(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link of a host that joins (no position) reads the active bans in pages, the first
    of SNAPSHOT_FIRST rows, the others of SNAPSHOT_PAGE (3 and 7 here: 17 bans are three
    pages, then an empty one), each handed over as it comes, and leaves out the bans lifted
    since; its position is then the log's end."""
    monkeypatch.setattr(link, "SNAPSHOT_FIRST", 3)
    monkeypatch.setattr(link, "SNAPSHOT_PAGE", 7)
    now = BAN.replace("1.8e9", "extract(epoch FROM now())")
    unban = (
        "INSERT INTO porttrap.log (host, kind, target, ban_id) VALUES (%s, 'unban', %s, %s)"
        " RETURNING id"
    )
    with closing(fleet.connect(fleet.web1, "web-1", "pw-one")) as conn:
        for n in range(1, 21):
            conn.execute(now, ("web-1", f"203.0.113.{n}", f"b{n}"))
        for n in (2, 9, 16):
            top = conn.execute(unban, ("web-1", f"203.0.113.{n}", f"u{n}")).fetchone()
        conn.commit()
    assert top is not None
    config = FleetConfig(fleet.cluster.url_for(admin.role_for("web.2")), name="web.2")
    deliveries: list[list[FleetEntry]] = []

    async def joining() -> int:
        made = FleetLink(
            config, "pw-two", Outbox(tmp_path), clock=SystemClock(),
            on_entries=deliveries.append, on_link=lambda _up, _error: None,
            forget_after=90 * 86400.0,
        )  # fmt: skip
        await made.open()
        task = asyncio.create_task(made.run())
        try:
            while made.figures.position < top[0]:
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await made.close()
        return made.figures.position

    with fleet.web2.netns.inside():  # the link's sockets are made in web.2's namespace
        position = asyncio.run(asyncio.wait_for(joining(), PATIENCE))
    assert position == top[0]
    assert [len(batch) for batch in deliveries] == [3, 7, 7]
    banned = [str(entry.target.network_address) for batch in deliveries for entry in batch]
    assert banned == [f"203.0.113.{n}" for n in range(1, 21) if n not in (2, 9, 16)]
