"""The report's figures (`Store.report_figures`) counted in Python over the in-memory store's
lists, as the SQLite store counts them in SQL (`porttrap.store.sqlite_report`): the same
figures, ties in the same order, addresses compared as text (the contract suite runs on both).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from porttrap.model import Hit, show
from porttrap.report.figures import (
    Bucket,
    KindCount,
    Period,
    PortCount,
    ReportFigures,
    SourceFigures,
    timeline,
)
from porttrap.store.base import StoredBan
from porttrap.store.history import is_single

_Key = TypeVar("_Key", str, tuple[str, int])


@dataclass(slots=True)
class _Group:
    """The hits of one port, class or source: how many, from whom, to where, when."""

    hits: int = 0
    sources: set[str] = field(default_factory=set)
    ports: set[tuple[str, int]] = field(default_factory=set)
    first: float = float("inf")
    last: float = float("-inf")

    def add(self, hit: Hit) -> None:
        self.hits += 1
        self.sources.add(str(hit.source))
        self.ports.add((hit.proto.value, hit.port))
        self.first, self.last = min(self.first, hit.at), max(self.last, hit.at)


def figures(
    hits: Sequence[Hit], bans: Sequence[StoredBan], period: Period, top: int
) -> ReportFigures:
    """The figures of `period` from every hit and every ban (oldest first)."""
    inside = [hit for hit in hits if period.start <= hit.at < period.end]
    made = [b for b in bans if period.start <= b.ban.banned_at < period.end]
    ports = _ranked(inside, lambda hit: (hit.proto.value, hit.port))
    sources = _ranked(inside, lambda hit: str(hit.source))
    busiest = sources[:top]
    return ReportFigures(
        timeline=_timeline(period, inside, made),
        ports=tuple(PortCount(p, n, g.hits, len(g.sources)) for (p, n), g in ports[:top]),
        port_count=len(ports),
        kinds=tuple(KindCount(k, g.hits, len(g.sources)) for k, g in _ranked(inside, _kind)),
        sources=tuple(_source(address, group, bans) for address, group in busiest),
        source_count=len(sources),
        bans=len(made),
        permanent_bans=sum(b.ban.permanent for b in made),
        banned_targets=len({b.ban.target for b in made}),
        network_bans=tuple(b for b in bans if not is_single(b.ban.target)) if busiest else (),
    )


def _kind(hit: Hit) -> str:
    return hit.kind


def _ranked(hits: Sequence[Hit], key: Callable[[Hit], _Key]) -> list[tuple[_Key, _Group]]:
    """The groups of `hits` by `key`, most hits first, ties by key (as SQL's ORDER BY)."""
    groups: dict[_Key, _Group] = {}
    for hit in hits:
        groups.setdefault(key(hit), _Group()).add(hit)
    return sorted(groups.items(), key=lambda item: (-item[1].hits, item[0]))


def _timeline(period: Period, hits: Sequence[Hit], bans: Sequence[StoredBan]) -> tuple[Bucket, ...]:
    per_bucket = Counter(period.bucket_of(hit.at) for hit in hits)
    banned: dict[int, tuple[int, int]] = {}
    for stored in bans:
        bucket = period.bucket_of(stored.ban.banned_at)
        n, permanent = banned.get(bucket, (0, 0))
        banned[bucket] = (n + 1, permanent + stored.ban.permanent)
    return timeline(period, per_bucket, banned)


def _source(address: str, group: _Group, bans: Sequence[StoredBan]) -> SourceFigures:
    own = tuple(b for b in bans if show(b.ban.target) == address)
    return SourceFigures(address, group.hits, len(group.ports), group.first, group.last, own)
