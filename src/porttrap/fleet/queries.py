"""What the CLI reads of the fleet's database (`porttrap bans --fleet`, `history --fleet`,
`fleet status`): plain SQL over the shared log, with this host's own credentials. Reads
only; the CLI never writes the log (the daemon publishes)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from porttrap.config.schema import FleetConfig
from porttrap.errors import PorttrapError
from porttrap.fleet.credentials import read_password
from porttrap.model import IPNetwork

TIMEOUT = 10  # seconds to connect
_EPOCH = "extract(epoch from now())"

# Every ban still in force that no later unban lifted (as a joining host reads them).
ACTIVE = f"""SELECT l.id, l.host, host(l.target) || '/' || masklen(l.target) AS target,
        l.banned_at, l.expires_at, l.ban_count, l.reason, l.evidence
    FROM porttrap.log AS l
    WHERE l.kind = 'ban' AND (l.expires_at IS NULL OR l.expires_at > {_EPOCH})
      AND NOT EXISTS (
        SELECT 1 FROM porttrap.log AS u
        WHERE u.target = l.target AND u.id > l.id
          AND (u.kind = 'unban-fleet' OR (u.kind = 'unban' AND u.host = l.host)))
    ORDER BY l.id DESC"""  # noqa: S608 - constants only; values are parameters

HISTORY = """SELECT id, host, kind, host(target) || '/' || masklen(target) AS target,
        extract(epoch from at)::float8 AS at, banned_at, expires_at, ban_count, reason, evidence
    FROM porttrap.log
    WHERE target >>= %(target)s OR target <<= %(target)s
    ORDER BY id DESC LIMIT %(limit)s"""

HOSTS = f"""SELECT h.name, extract(epoch from h.last_seen)::float8 AS last_seen, h.position,
        (SELECT count(*) FROM porttrap.log AS l WHERE l.host = h.name AND l.kind = 'ban')
            AS bans,
        (SELECT count(*) FROM porttrap.log AS l WHERE l.host = h.name AND l.kind = 'ban'
            AND (l.expires_at IS NULL OR l.expires_at > {_EPOCH})) AS active
    FROM porttrap.hosts AS h ORDER BY h.name"""  # noqa: S608 - constants only


def connect(config: FleetConfig) -> psycopg.Connection[dict[str, Any]]:
    """A read connection as this host; PorttrapError naming the database when it fails."""
    password = None if config.password_file is None else read_password(config.password_file)
    conninfo = psycopg.conninfo.make_conninfo(
        config.url, connect_timeout=str(TIMEOUT), application_name="porttrap-cli"
    )
    if password is not None:
        conninfo = psycopg.conninfo.make_conninfo(conninfo, password=password)
    try:
        return psycopg.connect(conninfo, autocommit=True, row_factory=dict_row)
    except psycopg.Error as err:
        raise PorttrapError(
            f"cannot reach the fleet's database ({_where(config)}): {err}"
        ) from None


def active(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(conn.execute(ACTIVE).fetchall())


def history(
    conn: psycopg.Connection[dict[str, Any]], target: IPNetwork, limit: int
) -> list[dict[str, Any]]:
    """The log's rows about `target`, the networks holding it, or the addresses inside it."""
    return list(conn.execute(HISTORY, {"target": str(target), "limit": limit}).fetchall())


def hosts(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
    return list(conn.execute(HOSTS).fetchall())


def _where(config: FleetConfig) -> str:
    parts = psycopg.conninfo.conninfo_to_dict(config.url)
    return f"host {parts.get('host', 'local socket')}, database {parts.get('dbname', '?')}"
