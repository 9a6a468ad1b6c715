"""The shared log's schema in PostgreSQL, as forward migrations.

`MIGRATIONS[i]` takes the schema from version i to i + 1; `porttrap.meta` holds the version
reached. `admin.init` runs the ones a database lacks, all in one transaction. A migration is
never edited once released: a change is a new one appended here.

What the database itself guarantees (so that no host has to trust another):
- a host (a LOGIN role in the group `porttrap_host`) inserts log rows only under its own name
  (row-level security: a forged row fails with SQLSTATE 42501), never updates or deletes one,
  and updates only its own heartbeat and position in `porttrap.hosts`;
- ids commit in id order: the BEFORE INSERT trigger takes one transaction-scoped advisory lock
  before it draws the id, so a reader that has seen id N never later finds a smaller id
  committed; whatever the client sends for `id` and `at` is overwritten;
- one NOTIFY on `CHANNEL` per INSERT statement, its payload the largest id inserted (a hint:
  readers read `WHERE id > position ORDER BY id`).
"""

from __future__ import annotations

from typing import Final

CHANNEL: Final = "porttrap_fleet"
SCHEMA: Final = "porttrap"
HOST_GROUP: Final = "porttrap_host"  # the NOLOGIN role every host's role is a member of
# pg_advisory_xact_lock key that serializes inserts into the log: b"porttrap" as a bigint
LOG_LOCK: Final = int.from_bytes(b"porttrap", "big")

# Only this module's constants are formatted in: no input reaches the SQL.
_V1 = f"""
CREATE SCHEMA porttrap;
REVOKE ALL ON SCHEMA porttrap FROM PUBLIC;

CREATE TABLE porttrap.meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO porttrap.meta (key, value) VALUES ('schema_version', '1');

CREATE TABLE porttrap.hosts (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{{0,62}}$'),
    role name UNIQUE NOT NULL,
    last_seen timestamptz,
    position bigint NOT NULL DEFAULT 0
);

CREATE SEQUENCE porttrap.log_id;
CREATE TABLE porttrap.log (
    id bigint PRIMARY KEY,
    host text NOT NULL REFERENCES porttrap.hosts(name),
    at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('ban', 'unban', 'unban-fleet')),
    target cidr NOT NULL,
    ban_id text NOT NULL CHECK (length(ban_id) BETWEEN 1 AND 64),
    banned_at double precision,
    expires_at double precision,
    ban_count integer,
    reason text CHECK (length(reason) <= 200),
    evidence text CHECK (evidence IN ('verified', 'unverified')),
    UNIQUE (host, kind, ban_id)
);
CREATE INDEX log_target ON porttrap.log (target);

-- SECURITY DEFINER: hosts have no right on the sequence; search_path pinned so that no
-- caller's objects can stand in for the ones named here.
CREATE FUNCTION porttrap.log_before_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({LOG_LOCK});
    NEW.id := nextval('porttrap.log_id');
    NEW.at := clock_timestamp();
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION porttrap.log_before_insert() FROM PUBLIC;
CREATE TRIGGER log_before_insert BEFORE INSERT ON porttrap.log
    FOR EACH ROW EXECUTE FUNCTION porttrap.log_before_insert();

CREATE FUNCTION porttrap.log_after_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    newest bigint;
BEGIN
    SELECT max(id) INTO newest FROM inserted;
    IF newest IS NOT NULL THEN  -- an INSERT ... ON CONFLICT DO NOTHING may insert nothing
        PERFORM pg_notify('{CHANNEL}', newest::text);
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION porttrap.log_after_insert() FROM PUBLIC;
CREATE TRIGGER log_after_insert AFTER INSERT ON porttrap.log
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION porttrap.log_after_insert();

-- Roles are per cluster, not per database: the group may exist already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{HOST_GROUP}') THEN
        CREATE ROLE {HOST_GROUP} NOLOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA porttrap TO {HOST_GROUP};
GRANT SELECT ON porttrap.meta, porttrap.hosts, porttrap.log TO {HOST_GROUP};
GRANT INSERT ON porttrap.log TO {HOST_GROUP};
GRANT UPDATE (last_seen, position) ON porttrap.hosts TO {HOST_GROUP};

ALTER TABLE porttrap.log ENABLE ROW LEVEL SECURITY;
ALTER TABLE porttrap.log FORCE ROW LEVEL SECURITY;
CREATE POLICY log_read ON porttrap.log FOR SELECT USING (true);
CREATE POLICY log_own_name ON porttrap.log FOR INSERT
    WITH CHECK (host = (SELECT name FROM porttrap.hosts WHERE role = current_user));

ALTER TABLE porttrap.hosts ENABLE ROW LEVEL SECURITY;
ALTER TABLE porttrap.hosts FORCE ROW LEVEL SECURITY;
CREATE POLICY hosts_read ON porttrap.hosts FOR SELECT USING (true);
CREATE POLICY hosts_own_row ON porttrap.hosts FOR UPDATE
    USING (role = current_user) WITH CHECK (role = current_user);

-- FORCE binds the tables' owner too: the admin who ran `fleet init` keeps every right (a
-- superuser bypasses row-level security anyway; a managed database's admin is often none).
CREATE POLICY log_admin ON porttrap.log TO CURRENT_USER USING (true) WITH CHECK (true);
CREATE POLICY hosts_admin ON porttrap.hosts TO CURRENT_USER USING (true) WITH CHECK (true);
"""  # noqa: S608

MIGRATIONS: Final[tuple[str, ...]] = (_V1,)
VERSION: Final = len(MIGRATIONS)
