"""What a store counts for the report (`Store.report_figures`): the period with its chart
buckets, and frozen values for the aggregates over it.

Pure: no SQL, no I/O, no clock. The store interface returns these values and every store
builds them (SQLite in SQL, the in-memory fake in Python); `porttrap.report.data` turns them
into the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from porttrap.model import StoredBan

HOUR, DAY, WEEK = 3600.0, 86400.0, 7 * 86400.0
# 1970-01-01 was a Thursday: weekly buckets start on Mondays, four days after the epoch.
_MONDAY = 4 * DAY


@dataclass(frozen=True, slots=True)
class Period:
    """The report's time range [start, end) and its chart buckets: `step` seconds each, the
    first starting at `origin`, a UTC boundary of `step` at or before `start`."""

    start: float
    end: float
    step: float
    origin: float

    @classmethod
    def of(cls, start: float, end: float) -> Period:
        if end <= start:
            raise ValueError("a report period must end after it starts")
        step = bucket_step(end - start)
        anchor = _MONDAY if step == WEEK else 0.0
        return cls(start, end, step, math.floor((start - anchor) / step) * step + anchor)

    @property
    def buckets(self) -> int:
        return max(1, math.ceil((self.end - self.origin) / self.step))

    def bucket_start(self, index: int) -> float:
        return self.origin + index * self.step

    def bucket_of(self, at: float) -> int:
        """The bucket that holds `at` (within the period), computed as SQLite does it:
        CAST((at - origin) / step AS INTEGER), so that every store puts an instant on the
        edge of two buckets into the same one."""
        return int((at - self.origin) / self.step)


def bucket_step(span: float) -> float:
    """The width of a chart bar for a period of `span` seconds: hourly up to 2 days, 6-hourly
    up to 2 weeks, daily up to 120 days, weekly beyond (at most about 120 bars up to 2 years)."""
    for limit, step in ((2 * DAY, HOUR), (14 * DAY, 6 * HOUR), (120 * DAY, DAY)):
        if span <= limit:
            return step
    return WEEK


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bar of the timeline: what happened in [start, start + period.step)."""

    start: float
    hits: int
    bans: int
    permanent_bans: int


def timeline(
    period: Period, hits: Mapping[int, int], bans: Mapping[int, tuple[int, int]]
) -> tuple[Bucket, ...]:
    """Every bucket of `period`, from the counts of the buckets that have any: hits, and
    (bans, of which permanent), by bucket index."""
    return tuple(
        Bucket(period.bucket_start(i), hits.get(i, 0), *bans.get(i, (0, 0)))
        for i in range(period.buckets)
    )


@dataclass(frozen=True, slots=True)
class PortCount:
    proto: str
    port: int
    hits: int
    sources: int


@dataclass(frozen=True, slots=True)
class KindCount:
    """Hits of one scan class (`Hit.kind`: connect, syn, fin, null, xmas, ack, udp ...)."""

    kind: str
    hits: int
    sources: int


@dataclass(frozen=True, slots=True)
class SourceFigures:
    """One of the addresses that hit the traps most in the period, with every ban ever made
    on the address itself, oldest first (lifted ones too)."""

    address: str
    hits: int
    ports: int  # distinct protocol/port pairs it hit
    first_seen: float
    last_seen: float
    bans: tuple[StoredBan, ...]


@dataclass(frozen=True, slots=True)
class ReportFigures:
    """What a store aggregates for the report over one period, from one snapshot. Ties are
    broken by name, as text: ports by protocol then number, classes by name, sources by
    address."""

    timeline: tuple[Bucket, ...]  # every bucket of the period, empty ones too
    ports: tuple[PortCount, ...]  # the `top` most hit, most hits first
    port_count: int  # distinct protocol/port pairs hit
    kinds: tuple[KindCount, ...]  # every scan class seen, most hits first
    sources: tuple[SourceFigures, ...]  # the `top` busiest, most hits first
    source_count: int  # distinct addresses that hit
    bans: int  # bans made in the period
    permanent_bans: int  # of which for good
    banned_targets: int  # distinct addresses and networks banned in the period
    # Every ban ever made on a network (`porttrap ban 203.0.113.0/24`), oldest first: they may
    # cover the sources. Few, so matched to the sources by the report; none without sources.
    network_bans: tuple[StoredBan, ...]

    @property
    def hits(self) -> int:
        return sum(bucket.hits for bucket in self.timeline)
