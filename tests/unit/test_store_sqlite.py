"""What only the SQLite store does: files, permissions, schema versions, migrations and their
backups, refusals with a way out, and rows it cannot read."""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from porttrap.config.schema import Config
from porttrap.errors import NoDatabase, StoreError
from porttrap.model import Ban, Evidence, Hit, Outcome, Proto, StoredBan, Unban
from porttrap.store import migrations, open_store
from porttrap.store.migrations import LATEST, MIGRATIONS, Migration
from porttrap.store.sqlite import SQLiteStore
from store_faults import store_that_fills_up

T0 = 1_800_000_000.0
BAN = Ban(ipaddress.ip_network("198.51.100.7"), T0, T0 + 3600, 1, "trap:tcp/23")
HIT = Hit(
    T0, ipaddress.ip_address("198.51.100.7"), 40000, ipaddress.ip_address("192.0.2.1"), 23,
    Proto.TCP,
)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "porttrap.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore.open(db) as opened:
        yield opened


def raw(path: Path) -> closing[sqlite3.Connection]:
    """A plain connection for building and inspecting files behind the store's back."""
    return closing(sqlite3.connect(path, isolation_level=None))


def version_of(path: Path) -> int:
    with raw(path) as conn:
        return migrations.read_version(conn)


def tables_of(path: Path) -> set[str]:
    with raw(path) as conn:
        found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in found}


def make_current_with_a_ban(path: Path) -> None:
    with SQLiteStore.open(path) as store:
        store.add_bans([BAN])


def make_v1(path: Path, bans: list[tuple[str, float, str]]) -> None:
    """A database as porttrap wrote it at schema v1, holding these (target, banned_at,
    reason) bans."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with raw(path) as conn:
        migrations.migrate(conn, path, MIGRATIONS[:1])
        conn.executemany(
            "INSERT INTO bans (target, banned_at, expires_at, ban_count, reason) "
            "VALUES (?, ?, NULL, 1, ?)",
            bans,
        )


# -- a new database ----------------------------------------------------------------------


def test_a_new_database_is_private_wal_and_current(store: SQLiteStore, db: Path) -> None:
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert version_of(db) == LATEST
    assert {"hits", "bans"} <= tables_of(db)
    with raw(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert list(db.parent.glob("*.bak-*")) == []  # nothing to back up


def test_an_existing_state_directory_is_used_as_it_is(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    with SQLiteStore.open(tmp_path / "porttrap.db"):
        pass
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o750


def test_an_empty_file_becomes_a_database_without_a_backup(db: Path) -> None:
    db.parent.mkdir()
    db.touch(mode=0o600)
    with SQLiteStore.open(db):
        pass
    assert version_of(db) == LATEST
    assert list(db.parent.glob("*.bak-*")) == []


def test_reopening_keeps_everything(db: Path) -> None:
    with SQLiteStore.open(db) as store:
        store.add_bans([BAN])
        store.add_hits([(HIT, Outcome.BANNED)])
    with SQLiteStore.open(db) as store:
        assert store.active_bans(T0) == [BAN]
        assert [(e.what, e.hit) for e in store.history()] == [("ban", None), ("hit", HIT)]
    assert list(db.parent.glob("*.bak-*")) == []  # already current: no migration, no backup


# -- migrating ---------------------------------------------------------------------------


def test_a_v0_database_with_data_is_backed_up_then_migrated(db: Path) -> None:
    """Version 0 with tables in it: somebody's data (here another tool's notes) that the
    first migration must keep, with a copy beside it in case."""
    db.parent.mkdir()
    with raw(db) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    with SQLiteStore.open(db):
        pass
    backup = db.with_name("porttrap.db.bak-v0")
    assert version_of(db) == LATEST
    assert version_of(backup) == 0
    assert tables_of(backup) == {"notes"}
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    for path in (db, backup):
        with raw(path) as conn:
            assert conn.execute("SELECT body FROM notes").fetchall() == [("keep me",)]


def test_a_failed_migration_changes_nothing(db: Path) -> None:
    """A v0 file whose `hits` table is not ours: creating v1 fails, and the file is still
    exactly the v0 file it was."""
    db.parent.mkdir()
    with raw(db) as conn:
        conn.execute("CREATE TABLE hits (who TEXT)")
        conn.execute("INSERT INTO hits VALUES ('someone')")
    with pytest.raises(StoreError) as failure:
        SQLiteStore.open(db)
    message = str(failure.value)
    assert f"cannot migrate {db} from schema v0 to v{LATEST}" in message
    assert "table hits already exists" in message
    assert "The database is unchanged; a copy is at" in message
    assert version_of(db) == 0
    assert tables_of(db) == {"hits"}
    with raw(db) as conn:
        assert conn.execute("SELECT who FROM hits").fetchall() == [("someone",)]


NEXT = Migration(LATEST + 1, "a note on each ban", ("ALTER TABLE bans ADD COLUMN note TEXT",))


def test_a_newer_migration_backs_up_the_old_version_first(db: Path) -> None:
    make_current_with_a_ban(db)
    with raw(db) as conn:
        saved = migrations.migrate(conn, db, (*MIGRATIONS, NEXT))
    assert saved == db.with_name(f"porttrap.db.bak-v{LATEST}")
    assert version_of(db) == LATEST + 1
    assert version_of(saved) == LATEST
    with raw(saved) as conn:
        assert conn.execute("SELECT target FROM bans").fetchall() == [("198.51.100.7",)]
    with raw(db) as conn:
        assert conn.execute("SELECT target, note FROM bans").fetchall() == [("198.51.100.7", None)]


def test_an_earlier_backup_is_never_overwritten(db: Path) -> None:
    make_current_with_a_ban(db)
    earlier = db.with_name(f"porttrap.db.bak-v{LATEST}")
    earlier.write_bytes(b"an older backup")
    with raw(db) as conn:
        saved = migrations.migrate(conn, db, (*MIGRATIONS, NEXT))
    assert saved == db.with_name(f"porttrap.db.bak-v{LATEST}.2")
    assert earlier.read_bytes() == b"an older backup"
    assert version_of(saved) == LATEST


def test_a_broken_migration_rolls_back_every_step(db: Path) -> None:
    make_current_with_a_ban(db)
    broken = Migration(LATEST + 2, "broken", ("DROP TABLE hits", "SELECT * FROM no_such_table"))
    with (
        raw(db) as conn,
        pytest.raises(StoreError, match=f"from schema v{LATEST} to v{LATEST + 2}"),
    ):
        migrations.migrate(conn, db, (*MIGRATIONS, NEXT, broken))
    assert version_of(db) == LATEST
    assert {"hits", "bans"} <= tables_of(db)
    with SQLiteStore.open(db) as store:
        assert store.active_bans(T0) == [BAN]


def test_v2_says_what_each_earlier_ban_rests_on(db: Path) -> None:
    """UDP trap bans rested on datagrams (forgeable); connect traps' and admins' on proof."""
    make_v1(db, [("198.51.100.1", T0, "trap:udp/161"), ("198.51.100.2", T0, "trap:tcp/23"),
                 ("198.51.100.0/24", T0, "manual")])  # fmt: skip
    with SQLiteStore.open(db) as store:
        held = {str(b.target): b.evidence for b in store.active_bans(T0)}
    assert held == {
        "198.51.100.1/32": Evidence.UNVERIFIED,
        "198.51.100.2/32": Evidence.VERIFIED,
        "198.51.100.0/24": Evidence.VERIFIED,
    }
    assert db.with_name("porttrap.db.bak-v1").exists()


def test_a_row_whose_evidence_is_unknown_is_skipped_and_named(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_current_with_a_ban(db)
    with raw(db) as conn:
        conn.execute("UPDATE bans SET evidence = 'hearsay'")
    with caplog.at_level(logging.WARNING), SQLiteStore.open(db) as store:
        assert store.active_bans(T0) == []
    assert "evidence 'hearsay' is not one of: verified, unverified" in caplog.text


# -- refusals ----------------------------------------------------------------------------


def test_a_database_from_a_newer_porttrap_is_refused_untouched(db: Path) -> None:
    make_current_with_a_ban(db)
    with raw(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    before = db.read_bytes()
    with pytest.raises(StoreError) as refusal:
        SQLiteStore.open(db)
    message = str(refusal.value)
    assert f"{db} has schema v99" in message
    assert f"supports schema up to v{LATEST}" in message
    assert "upgrade porttrap" in message
    assert f"restore a backup made before the upgrade (such as porttrap.db.bak-v{LATEST}" in (
        message
    )
    assert db.read_bytes() == before


def test_a_file_that_is_not_sqlite_is_refused_untouched(db: Path) -> None:
    db.parent.mkdir()
    db.write_bytes(b"ban 198.51.100.7\n" * 200)
    with pytest.raises(StoreError) as refusal:
        SQLiteStore.open(db)
    assert str(refusal.value).startswith(f"{db} is not a porttrap database (not SQLite")
    assert "move it aside" in str(refusal.value)
    assert db.read_bytes() == b"ban 198.51.100.7\n" * 200


def test_a_directory_in_the_way_is_reported(db: Path) -> None:
    db.mkdir(parents=True)
    with pytest.raises(StoreError, match=f"cannot create {db}: Is a directory"):
        SQLiteStore.open(db)


# -- read-only ---------------------------------------------------------------------------


def test_readonly_open_of_a_missing_database(db: Path) -> None:
    with pytest.raises(StoreError) as refusal:
        SQLiteStore.open(db, readonly=True)
    assert str(refusal.value) == (
        f"no database at {db}: porttrap has not run yet with this state_dir"
    )
    assert not db.parent.exists()  # and nothing was created


def test_open_store_opens_the_database_of_the_config(tmp_path: Path) -> None:
    config = Config(state_dir=tmp_path / "state")
    with closing(open_store(config)) as store:
        store.add_bans([BAN])
    assert config.database.is_file()
    with closing(open_store(config, readonly=True)) as reader:
        assert reader.active_bans(T0) == [BAN]
        with pytest.raises(StoreError, match="readonly"):
            reader.add_bans([BAN])


def test_open_store_reads_another_database_when_given_one(tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    with SQLiteStore.open(copy) as store:
        store.add_bans([BAN])
    config = Config(state_dir=tmp_path / "state")
    with closing(open_store(config, readonly=True, database=copy)) as reader:
        assert reader.active_bans(T0) == [BAN]
    with pytest.raises(NoDatabase, match=f"no database at {config.database}: porttrap has not"):
        open_store(config, readonly=True)  # a distinct error: `status` can do without one


def test_readonly_reads_while_the_daemon_writes(store: SQLiteStore, db: Path) -> None:
    store.add_bans([BAN])
    with SQLiteStore.open(db, readonly=True) as reader:
        assert reader.active_bans(T0) == [BAN]
        store.add_hits([(HIT, Outcome.ALREADY_BANNED)])
        assert [e.what for e in reader.history()] == ["ban", "hit"]
        with pytest.raises(StoreError, match=f"cannot record bans in {db}: .*readonly"):
            reader.add_bans([BAN])


def test_a_record_whose_lift_fails_on_a_full_disk_records_nothing(db: Path) -> None:
    """One transaction: the bans of a record whose lift fails are rolled back with it, so
    that the writer's retry records each ban once (escalation counts every copy)."""
    make_current_with_a_ban(db)
    later = Ban(ipaddress.ip_network("198.51.100.8"), T0 + 5, T0 + 3600, 1, "trap:tcp/23")
    lifted = Unban(BAN.target, T0 + 6, "by hand")
    with closing(store_that_fills_up(db, "UPDATE bans")) as store:
        with pytest.raises(StoreError, match=f"cannot record bans and unbans in {db}: .*full"):
            store.record([later], [lifted])
        assert store.bans_since(0.0) == [StoredBan(BAN, None, None)]
        store.record([later], [lifted])  # the retry
        assert store.bans_since(0.0) == [
            StoredBan(BAN, T0 + 6, "by hand"), StoredBan(later, None, None)
        ]  # fmt: skip


def test_readonly_refuses_an_old_schema_it_cannot_migrate(db: Path) -> None:
    db.parent.mkdir()
    db.touch()
    with pytest.raises(StoreError, match="start the porttrap daemon once to migrate it"):
        SQLiteStore.open(db, readonly=True)


def test_readonly_refuses_a_newer_schema(db: Path) -> None:
    make_current_with_a_ban(db)
    with raw(db) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(StoreError, match=r"has schema v7.*upgrade porttrap"):
        SQLiteStore.open(db, readonly=True)


# -- rows that cannot be read ------------------------------------------------------------


def insert_ban(path: Path, target: object, **columns: object) -> int:
    values: dict[str, object] = {
        "target": target, "banned_at": T0, "expires_at": None, "ban_count": 1, "reason": "x",
    } | columns  # fmt: skip
    names = ", ".join(values)
    marks = ", ".join("?" * len(values))
    with raw(path) as conn:
        cursor = conn.execute(f"INSERT INTO bans ({names}) VALUES ({marks})", list(values.values()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid


def bad_row_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=store-bad-row" in r.getMessage()]


BAD_BANS = [
    ("not-an-address", {}, "target 'not-an-address' is not an address or network"),
    ("198.51.100.7/24", {}, "has host bits set"),
    ("198.51.100.8", {"banned_at": "yesterday"}, "banned_at 'yesterday' is not a number"),
    ("198.51.100.8", {"ban_count": 0}, "ban_count 0 is not a whole number of at least 1"),
    ("198.51.100.8", {"reason": b"x"}, "reason b'x' is not text"),
    (b"ban", {}, "target b'ban' is not text"),
]


@pytest.mark.parametrize("bad", BAD_BANS, ids=[problem for _t, _c, problem in BAD_BANS])
def test_a_bad_ban_row_is_skipped_with_a_warning(
    store: SQLiteStore,
    db: Path,
    caplog: pytest.LogCaptureFixture,
    bad: tuple[object, dict[str, object], str],
) -> None:
    target, columns, problem = bad
    store.add_bans([BAN])
    rowid = insert_ban(db, target, **columns)
    with caplog.at_level(logging.WARNING, logger="porttrap"):
        assert store.active_bans(T0) == [BAN]
        assert [s.ban for s in store.bans_since(0.0)] == [BAN]
        assert [e.ban for e in store.history()] == [BAN]
    (warning,) = bad_row_warnings(caplog)  # once per row, however often it is read
    assert warning.startswith(f"event=store-bad-row table=bans rowid={rowid} problem=")
    assert problem in warning


def test_a_bad_hit_row_is_skipped_with_a_warning(
    store: SQLiteStore, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.add_hits([(HIT, Outcome.BANNED)])
    with raw(db) as conn:
        good = (T0, "198.51.100.9", 1, "192.0.2.1", 23, "tcp", "connect", "counted")
        rows = [
            (T0 + 1, "198.51.100.9", 1, "192.0.2.1", 132, "sctp", "connect", "counted"),
            (T0 + 2, "198.51.100.9", 1, "192.0.2.1", 23, "tcp", "connect", "shrugged"),
            (T0 + 3, "198.51.100.999", 1, "192.0.2.1", 23, "tcp", "connect", "counted"),
            (T0 + 4, "198.51.100.9", 1, "192.0.2.1", 70000, "tcp", "connect", "counted"),
        ]
        conn.executemany("INSERT INTO hits VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [*rows, good])
    with caplog.at_level(logging.WARNING, logger="porttrap"):
        entries = store.history()
    assert [(e.hit and str(e.hit.source), e.outcome) for e in entries] == [
        ("198.51.100.9", Outcome.COUNTED),
        ("198.51.100.7", Outcome.BANNED),
    ]
    problems = [w.split(" problem=", 1)[1] for w in bad_row_warnings(caplog)]
    assert problems == [
        '"port 70000 is not a port number (0-65535)"',
        "\"source '198.51.100.999' is not an IP address\"",
        f"\"outcome 'shrugged' is not one of: {', '.join(Outcome)}\"",
        "\"proto 'sctp' is not one of: tcp, udp\"",
    ]
