"""What an admin does to the fleet's database, once (`porttrap fleet init`, `fleet add-host`):
create or upgrade the schema, give each host its role. Synchronous psycopg: these are one-shot
commands. Every failure is a `FleetError` saying what failed, on which database (never with a
password), and how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from porttrap.errors import FleetError
from porttrap.fleet.schema import HOST_GROUP, MIGRATIONS, SCHEMA, VERSION

HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # porttrap.hosts' CHECK
ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
ROLE_PREFIX = "porttrap_host_"
NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: a longer role name is silently cut
# pg_advisory_xact_lock key that serializes two `fleet init` at once: b"ptinit" as a bigint
_INIT_LOCK = int.from_bytes(b"ptinit", "big")
_CONNECT_TIMEOUT = 10  # seconds
Connection = psycopg.Connection[TupleRow]


@dataclass(frozen=True, slots=True)
class Migrated:
    """What `init` did: the schema version it found (0: none) and the one it left."""

    before: int
    after: int
    where: str

    def __str__(self) -> str:
        if self.before == self.after:
            return f"the fleet schema in {self.where} is at version {self.after}: nothing to do"
        if self.before == 0:
            return f"created the fleet schema (version {self.after}) in {self.where}"
        return f"upgraded the fleet schema in {self.where} from {self.before} to {self.after}"


def where(url: str) -> str:
    """The database `url` names, for messages: user@host:port/dbname, never a password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error as e:
        raise FleetError(f"{url!r} is not a PostgreSQL URL: {_first_line(e)}") from None
    host = parts.get("host") or "localhost"
    place = f"[{host}]" if ":" in str(host) else str(host)
    port = f":{parts['port']}" if parts.get("port") else ""
    user = f"{parts['user']}@" if parts.get("user") else ""
    return f"{user}{place}{port}/{parts.get('dbname') or parts.get('user') or ''}"


def role_for(name: str) -> str:
    """The role `fleet add-host NAME` makes by default: porttrap_host_<name>, with '.' and '-'
    as '_' and in lower case (an unquoted PostgreSQL identifier)."""
    return ROLE_PREFIX + re.sub(r"[.-]", "_", name).lower()


def init(admin_url: str) -> Migrated:
    """Create the fleet schema, or bring it up to `VERSION`, in one transaction; a database
    already at `VERSION` is left as it is. Refuses one at a newer version (written by a newer
    porttrap) or with a `porttrap` schema that is not the fleet's."""
    place = where(admin_url)
    with _transaction(admin_url, "fleet init") as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
        found = _version(conn, place)
        if found > VERSION:
            raise FleetError(
                f"the fleet schema in {place} is at version {found}, newer than this porttrap "
                f"knows ({VERSION}): upgrade porttrap on this machine, then run it again"
            )
        for script in MIGRATIONS[found:]:
            conn.execute(script)
        conn.execute(
            "UPDATE porttrap.meta SET value = %s WHERE key = 'schema_version'", (str(VERSION),)
        )
    return Migrated(found, VERSION, place)


def add_host(admin_url: str, name: str, password: str, role: str | None = None) -> str:
    """Make host `name` a member of the fleet: a LOGIN role (default `role_for(name)`) in the
    group `porttrap_host` with `password` (sent as a SCRAM verifier, never in clear), and its
    row in porttrap.hosts. Returns the role's name."""
    role = _checked(name, password, role)
    place = where(admin_url)
    with _transaction(admin_url, f"fleet add-host {name}") as conn:
        _require_current(conn, place)
        _refuse_taken(conn, place, name, role)
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role), sql.Literal(verifier.decode()), sql.Identifier(HOST_GROUP)
            )
        )
        conn.execute("INSERT INTO porttrap.hosts (name, role) VALUES (%s, %s)", (name, role))
    return role


def remove_host(admin_url: str, name: str) -> str:
    """Take host `name` out of the fleet: drop its role (it can no longer log in or publish).
    Its row in porttrap.hosts goes too unless the log holds rows it published, which stay the
    fleet's history. Says what it did."""
    place = where(admin_url)
    with _transaction(admin_url, f"fleet remove-host {name}") as conn:
        _require_current(conn, place)
        found = conn.execute("SELECT role FROM porttrap.hosts WHERE name = %s", (name,)).fetchone()
        if found is None:
            raise FleetError(f"{place}: no host named {name!r} in porttrap.hosts")
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(found[0])))
        kept = conn.execute(
            "SELECT EXISTS (SELECT FROM porttrap.log WHERE host = %s)", (name,)
        ).fetchone()
        if kept is not None and kept[0]:
            return f"dropped role {found[0]}; kept host {name} in porttrap.hosts for its log rows"
        conn.execute("DELETE FROM porttrap.hosts WHERE name = %s", (name,))
    return f"dropped role {found[0]} and host {name}"


def _checked(name: str, password: str, role: str | None) -> str:
    if not HOST_NAME.fullmatch(name):
        raise FleetError(
            f"host name {name!r}: use 1 to 63 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (as a host name)"
        )
    if not password or any(c in password for c in "\0\r\n"):
        raise FleetError("the password is empty or holds a line break or NUL: give one line")
    chosen = role_for(name) if role is None else role
    if not ROLE_NAME.fullmatch(chosen) or len(chosen.encode()) > NAME_BYTES:
        raise FleetError(
            f"role name {chosen!r}: use at most {NAME_BYTES} lower-case letters, digits or '_', "
            "not starting with a digit"
            + ("; the host name is too long for the default role: give --role" if not role else "")
        )
    return chosen


def _version(conn: Connection, place: str) -> int:
    """The schema version found: 0 when there is no fleet schema."""
    row = conn.execute(
        "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass('porttrap.meta') IS NOT NULL",
        (SCHEMA,),
    ).fetchone()
    assert row is not None
    schema, meta = row
    if not schema:
        return 0
    if not meta:
        raise FleetError(
            f"{place} has a schema named {SCHEMA} without porttrap.meta: it is not porttrap's "
            f"fleet schema; use another database, or drop that schema if it is left over"
        )
    found = conn.execute("SELECT value FROM porttrap.meta WHERE key = 'schema_version'").fetchone()
    text = str(found[0]) if found is not None else ""
    if not text.isdigit() or int(text) < 1:
        raise FleetError(
            f"{place}: porttrap.meta holds schema_version {text or 'nothing'}, which is no "
            "version: the schema was changed by hand; restore it from a backup"
        )
    return int(text)


def _require_current(conn: Connection, place: str) -> None:
    found = _version(conn, place)
    if found != VERSION:
        fix = "run porttrap fleet init first" if found < VERSION else "upgrade porttrap here"
        raise FleetError(
            f"the fleet schema in {place} is at version {found}, this porttrap needs "
            f"{VERSION}: {fix}"
        )


def _refuse_taken(conn: Connection, place: str, name: str, role: str) -> None:
    host = conn.execute("SELECT role FROM porttrap.hosts WHERE name = %s", (name,)).fetchone()
    if host is not None:
        raise FleetError(
            f"{place}: host {name} is in the fleet already (role {host[0]}); to give it a new "
            "password: porttrap fleet remove-host, then add-host again"
        )
    taken = conn.execute("SELECT FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone()
    if taken is not None:
        raise FleetError(
            f"{place}: a role named {role} exists already (another host's name maps to it, or "
            "it is not porttrap's): choose another with --role"
        )


@contextmanager
def _transaction(url: str, what: str) -> Iterator[Connection]:
    """A connection in one transaction, committed when the block ends without an error;
    every psycopg error a `FleetError` naming `what` and the database."""
    place = where(url)
    try:
        conn = psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT)
    except psycopg.Error as e:
        raise FleetError(
            f"{what}: cannot connect to {place}: {_first_line(e)}; check the URL, that "
            "PostgreSQL runs there, and the admin's credentials (~/.pgpass or PGPASSFILE; "
            "never a password in the URL)"
        ) from None
    try:
        with conn, conn.transaction():
            yield conn
    except psycopg.Error as e:
        raise FleetError(f"{what} on {place} failed: {_explain(e)}") from None


def _explain(error: psycopg.Error) -> str:
    text = f"{_first_line(error)} (SQLSTATE {error.sqlstate})"
    if error.sqlstate == "42501":
        return (
            f"{text}: connect as a role that may create schemas and roles in this database "
            "(its owner with CREATEROLE, or a superuser such as postgres)"
        )
    return text


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
