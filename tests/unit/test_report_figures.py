"""The report's period and its chart buckets: widths that follow the period's length, UTC
boundaries, weeks from Monday, and the timeline with every bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from porttrap.report.figures import DAY, HOUR, WEEK, Bucket, Period, bucket_step, timeline

DAY0 = 20833 * DAY  # a UTC midnight (2027-01-15)


@pytest.mark.parametrize(
    ("span", "step"),
    [(HOUR, HOUR), (2 * DAY, HOUR), (2 * DAY + 1, 6 * HOUR), (7 * DAY, 6 * HOUR),
     (14 * DAY, 6 * HOUR), (15 * DAY, DAY), (90 * DAY, DAY), (120 * DAY, DAY), (121 * DAY, WEEK),
     (730 * DAY, WEEK)],
)  # fmt: skip
def test_bucket_width_follows_the_period(span: float, step: float) -> None:
    assert bucket_step(span) == step


def test_buckets_are_aligned_to_utc_boundaries() -> None:
    period = Period.of(DAY0 + 30 * 60, DAY0 + 2.5 * HOUR)
    assert (period.origin, period.buckets) == (DAY0, 3)
    six = Period.of(DAY0 + 7 * HOUR, DAY0 + 7 * HOUR + 7 * DAY)
    assert six.origin == DAY0 + 6 * HOUR and six.buckets == 29
    weekly = Period.of(DAY0 + 3 * HOUR, DAY0 + 200 * DAY)
    monday = datetime.fromtimestamp(weekly.origin, UTC)
    assert (monday.weekday(), monday.hour, monday.minute) == (0, 0, 0)
    assert 0 <= DAY0 + 3 * HOUR - weekly.origin < WEEK


def test_an_instant_belongs_to_the_bucket_it_starts_or_falls_in() -> None:
    period = Period.of(DAY0 + 30 * 60, DAY0 + 2.5 * HOUR)
    assert [period.bucket_of(DAY0 + s) for s in (1800, HOUR - 0.001, HOUR, 2.5 * HOUR - 1)] == [
        0, 0, 1, 2,
    ]  # fmt: skip


def test_the_timeline_has_every_bucket_empty_ones_too() -> None:
    period = Period.of(DAY0, DAY0 + 3 * HOUR)
    assert timeline(period, {1: 5}, {2: (3, 1)}) == (
        Bucket(DAY0, 0, 0, 0),
        Bucket(DAY0 + HOUR, 5, 0, 0),
        Bucket(DAY0 + 2 * HOUR, 0, 3, 1),
    )


def test_a_period_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError, match="end after it starts"):
        Period.of(DAY0, DAY0)
