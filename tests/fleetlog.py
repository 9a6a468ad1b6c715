"""The fleet's shared log on one throw-away PostgreSQL cluster for a whole test module (the
`fleet_log` fixture): initdb and the schema take seconds, so a module starts one and each test
empties the log (`clear`). The cluster listens on `ADDRESS` on the loopback of a namespace of
its own; hosts connect from inside that namespace over TCP, TLS verify-full and their own
roles, as hosts do (`store`, `url`), so row-level security binds them as in a real fleet.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address

import psycopg

import pgcluster
from netns import Netns
from pgcluster import PgCluster
from porttrap.clock import Clock
from porttrap.fleet import admin
from porttrap.fleet.logstore import FleetLogStore

ADDRESS = "198.51.100.100"
HOSTS = {"web-1": "pw-one", "web.2": "pw-two"}  # host name: password


@dataclass(frozen=True)
class FleetLog:
    cluster: PgCluster
    netns: Netns

    def clear(self) -> None:
        """An empty log (TRUNCATE, as the admin: hosts may not)."""
        with self.cluster.admin() as conn:
            conn.execute("TRUNCATE porttrap.log")

    def url(self, host: str) -> str:
        return self.cluster.url_for(admin.role_for(host))

    def connect(
        self, host: str, autocommit: bool = True
    ) -> psycopg.Connection[psycopg.rows.TupleRow]:
        """`host`'s role over TCP from the namespace (the socket stays in it)."""
        with self.netns.inside():
            return psycopg.connect(
                self.url(host), password=HOSTS[host], connect_timeout=10, autocommit=autocommit
            )

    def store(self, host: str | None, clock: Clock | None = None) -> FleetLogStore:
        """The store as `host` (None: the whole fleet, read as web-1)."""
        return FleetLogStore(self.connect(host or "web-1"), host, clock)


@contextmanager
def started() -> Iterator[FleetLog]:
    """The cluster with the schema and `HOSTS`; removed afterwards (its log printed)."""
    netns = Netns.create()
    try:
        netns.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"])
        cluster = pgcluster.PgCluster.create(netns, [ip_address(ADDRESS)])
        try:
            cluster.start()
            cluster.create_database()
            admin.init(cluster.admin_url())
            for host, password in HOSTS.items():
                admin.add_host(cluster.admin_url(), host, password)
            yield FleetLog(cluster, netns)
        finally:
            print(f"PostgreSQL's log:\n{cluster.log_text()}")  # pytest shows it on failure
            cluster.remove()
    finally:
        netns.delete()
