"""How every store builds `history`: three streams (hits, bans, lifts), each newest first,
merged into one. Shared so that the SQLite store and the in-memory fake order ties alike."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from itertools import islice

from porttrap.model import Ban, Hit, IPAddress, IPNetwork, Outcome
from porttrap.store.base import HistoryEntry, StoredBan

# At the same instant the hit comes before the ban it caused, and a ban before its lifting;
# newest first, that is: unban, ban, hit.
_HIT, _BAN, _UNBAN = 0, 1, 2

SortKey = tuple[float, int, int]
Keyed = tuple[SortKey, HistoryEntry]


def hit_entry(seq: int, hit: Hit, outcome: Outcome) -> Keyed:
    """A hit as a history entry; `seq` orders hits recorded at the same instant."""
    return (hit.at, _HIT, seq), HistoryEntry(at=hit.at, what="hit", hit=hit, outcome=outcome)


def ban_entry(seq: int, ban: Ban) -> Keyed:
    """A ban as a history entry, at the time it was made."""
    return (ban.banned_at, _BAN, seq), HistoryEntry(at=ban.banned_at, what="ban", ban=ban)


def unban_entry(seq: int, stored: StoredBan) -> Keyed:
    """The early end of a lifted ban as a history entry, at the time it was lifted."""
    if stored.lifted_at is None:
        raise ValueError("only a lifted ban has an unban entry")
    entry = HistoryEntry(
        at=stored.lifted_at, what="unban", ban=stored.ban, unban_reason=stored.lifted_reason
    )
    return (stored.lifted_at, _UNBAN, seq), entry


def newest_first(streams: Iterable[Iterable[Keyed]], limit: int) -> list[HistoryEntry]:
    """The newest `limit` entries of streams that are each sorted newest first."""
    merged = heapq.merge(*streams, key=lambda keyed: keyed[0], reverse=True)
    return [entry for _key, entry in islice(merged, max(0, limit))]


def inside(scope: IPNetwork | None, candidate: IPAddress | IPNetwork) -> bool:
    """Whether a hit's source or a ban's target falls within `scope` (None: everything)."""
    if scope is None:
        return True
    if candidate.version != scope.version:
        return False
    if isinstance(candidate, IPAddress):
        return candidate in scope
    return candidate.subnet_of(scope)  # type: ignore[arg-type]  # same version, checked


def is_single(scope: IPNetwork | None) -> bool:
    """A scope of one address (/32, /128), which stores can match by plain equality."""
    return scope is not None and scope.prefixlen == scope.max_prefixlen


def within(scope: IPNetwork | None, entry: HistoryEntry) -> bool:
    """Whether a history entry's hit source falls within `scope`, or its ban's target falls
    within `scope` or holds it (`history 203.0.113.7` shows the ban of 203.0.113.0/24)."""
    if entry.hit is not None:
        return inside(scope, entry.hit.source)
    if entry.ban is not None:
        return inside(scope, entry.ban.target) or holds(entry.ban.target, scope)
    return False


def holds(network: IPNetwork, scope: IPNetwork | None) -> bool:
    """Whether `network` (a ban's target) contains all of `scope`, and more."""
    if scope is None or network.version != scope.version or network == scope:
        return False
    return scope.subnet_of(network)  # type: ignore[arg-type]  # same version, checked
