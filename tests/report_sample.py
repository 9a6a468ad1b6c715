"""One day of hits and bans for the report's tests (the store contract, the SQLite plans, the
report's assembly): four sources, a lifted ban, a network ban, and hits and bans just outside
the period. Filled through the Store API."""

from __future__ import annotations

import ipaddress

from porttrap.model import Ban, Hit, Outcome, Proto, Unban
from porttrap.report.figures import DAY, HOUR, Period
from porttrap.store.base import Store

DAY0 = 20833 * DAY  # a UTC midnight (2027-01-15)
NOW = DAY0 + DAY
PERIOD = Period.of(DAY0, NOW)
A, B, C, D = "198.51.100.7", "203.0.113.5", "2001:db8::9", "192.0.2.99"
NETWORK = "203.0.113.0/24"


def hit(source: str, at: float, port: int, kind: str = "connect") -> tuple[Hit, Outcome]:
    address = ipaddress.ip_address(source)
    local = ipaddress.ip_address("2001:db8::1" if address.version == 6 else "192.0.2.1")
    proto = Proto.UDP if kind == "udp" else Proto.TCP
    return Hit(at, address, 40000, local, port, proto, kind), Outcome.COUNTED


def ban(target: str, at: float, hours: float | None, count: int = 1, why: str = "") -> Ban:
    expires = None if hours is None else at + hours * HOUR
    return Ban(ipaddress.ip_network(target), at, expires, count, why or "trap:tcp/23")


HITS = [
    hit(D, DAY0 - 1, 23),  # before the period
    hit(D, DAY0, 23),  # its first instant: in
    *(hit(A, DAY0 + HOUR + s, 23) for s in range(5)),
    *(hit(B, DAY0 + 1.5 * HOUR + s, 445, "syn") for s in range(3)),
    *(hit(A, DAY0 + 5 * HOUR + s, 2323) for s in range(2)),
    hit(C, NOW - 60, 161, "udp"),
    hit(C, NOW, 161, "udp"),  # the period's end: out
]
C_FOREVER = ban(C, DAY0 - 2 * DAY, None, 3)  # permanent since before the period
D_BEFORE = ban(D, DAY0 - HOUR, 0.5)  # over before the period
A_FIRST = ban(A, DAY0 + HOUR, 1, 1)
B_LIFTED = ban(B, DAY0 + 1.5 * HOUR, 1, 1, "trap:tcp/445")
A_SECOND = ban(A, DAY0 + 5 * HOUR, 4, 2)
A_FOREVER = ban(A, DAY0 + 10 * HOUR, None, 3)
NETWORK_BAN = ban(NETWORK, DAY0 + 20 * HOUR, 24, 1, "manual")  # holds B until DAY0 + 44h
BANS = [C_FOREVER, D_BEFORE, A_FIRST, B_LIFTED, A_SECOND, A_FOREVER, NETWORK_BAN]
B_LIFTED_AT = DAY0 + 1.75 * HOUR


def fill(store: Store) -> None:
    """The day's hits and bans, and B's ban lifted by hand."""
    store.add_hits(HITS)
    store.add_bans(BANS)
    store.lift([Unban(ipaddress.ip_network(B), B_LIFTED_AT, "manual")])
