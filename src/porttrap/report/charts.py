"""Inline SVG charts as text: a timeline of hits and bans, and horizontal bar charts.

Pure functions, values in, markup out. Every text that ends up in the markup goes through
`esc`; colours and numbers are formatted here. No external references: inline SVG in HTML needs
no namespace declaration, so not even the SVG namespace URL appears.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from porttrap.report.figures import DAY, HOUR, Bucket, Period

HITS_COLOUR = "#3f6fb5"
BANS_COLOUR = "#e8943a"
PERMANENT_COLOUR = "#b42b25"
GRID_COLOUR = "#e3e7ed"
AXIS_TEXT = "#5b6472"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# The timeline's geometry, in SVG units (= CSS pixels at the report's width).
WIDTH = 1000
_LEFT, _RIGHT = 58, 10
_HITS_TOP, _HITS_HEIGHT = 12, 170
_BANS_TOP, _BANS_HEIGHT = 206, 64
_AXIS_Y = _BANS_TOP + _BANS_HEIGHT + 18
HEIGHT = _AXIS_Y + 8
_MAX_LABELS = 14


def esc(value: object) -> str:
    """Text for HTML/SVG content and attribute values: hit data comes from the network."""
    return html.escape(str(value), quote=True)


def number(value: int) -> str:
    return f"{value:,}"


def utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def day_month(at: float) -> str:
    """'22 Nov' (no locale involved)."""
    moment = utc(at)
    return f"{moment.day} {MONTHS[moment.month - 1]}"


def scale(peak: int, lines: int) -> tuple[int, int]:
    """(top, step) of a y axis for values up to `peak`: a step of 1, 2 or 5 times a power of
    ten, so that the grid lines are whole numbers, at most `lines` of them above zero."""
    power = 1
    while True:
        for factor in (1, 2, 5):
            step = factor * power
            if step * lines >= peak:
                return step * max(1, math.ceil(peak / step)), step
        power *= 10


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of a horizontal bar chart; `title` is the tooltip."""

    label: str
    value: int
    colour: str
    note: str = ""
    title: str = ""


def hbars(bars: Sequence[Bar], *, width: int = 480, label_width: int = 96) -> str:
    """Horizontal bars, the longest filling the track; each bar's length is proportional to
    its value, and the value (and note) is written after it."""
    row, bar_height = 26, 16
    # Room after the longest bar for its value and note (about 6.5 px a character at 12 px).
    longest = max((len(number(bar.value) + bar.note) for bar in bars), default=0)
    track = max(120, width - label_width - 12 - round(6.5 * longest))
    peak = max((bar.value for bar in bars), default=0) or 1
    height = row * len(bars) + 4
    parts = [_svg_open(width, height, "bar chart")]
    for i, bar in enumerate(bars):
        y = 2 + i * row
        length = max(1.0, track * bar.value / peak)
        middle = y + row / 2
        parts.append(
            f'<text x="{label_width - 8}" y="{middle:.1f}" class="label" '
            f'text-anchor="end" dominant-baseline="central">{esc(bar.label)}</text>'
            f'<rect x="{label_width}" y="{middle - bar_height / 2:.1f}" width="{length:.2f}" '
            f'height="{bar_height}" fill="{esc(bar.colour)}"><title>{esc(bar.title)}</title>'
            f'</rect><text x="{label_width + length + 6:.2f}" y="{middle:.1f}" class="value" '
            f'dominant-baseline="central">{esc(number(bar.value))}'
            f'<tspan class="note">{esc(bar.note)}</tspan></text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def timeline(buckets: Sequence[Bucket], period: Period) -> str:
    """Hits per bucket (bars, with a y axis), and below on a scale of its own the bans made per
    bucket (temporary and permanent stacked), on one time axis with UTC date labels."""
    slot = (WIDTH - _LEFT - _RIGHT) / max(1, len(buckets))
    gap = min(2.0, slot * 0.2) if slot >= 3 else 0.0
    hits_top, hits_step = scale(max((b.hits for b in buckets), default=0), 4)
    bans_top, bans_step = scale(max((b.bans for b in buckets), default=0), 2)
    parts = [_svg_open(WIDTH, HEIGHT, "hits and bans over time")]
    parts += _grid(_HITS_TOP, _HITS_HEIGHT, hits_top, hits_step)
    parts += _grid(_BANS_TOP, _BANS_HEIGHT, bans_top, bans_step)
    for i, bucket in enumerate(buckets):
        x = _LEFT + i * slot + gap / 2
        span = _bucket_name(bucket.start, period.step)
        hits = [(bucket.hits, HITS_COLOUR, f"{span}: {number(bucket.hits)} hits")]
        parts += _column(x, slot - gap, hits, top=_HITS_TOP, height=_HITS_HEIGHT, peak=hits_top)
        temporary = bucket.bans - bucket.permanent_bans
        bans = [
            (temporary, BANS_COLOUR, f"{span}: {number(temporary)} temporary bans"),
            (bucket.permanent_bans, PERMANENT_COLOUR,
             f"{span}: {number(bucket.permanent_bans)} permanent bans"),
        ]  # fmt: skip
        parts += _column(x, slot - gap, bans, top=_BANS_TOP, height=_BANS_HEIGHT, peak=bans_top)
    parts += _axis_labels(buckets, period, slot)
    parts.append(
        f'<text x="{_LEFT + 4}" y="{_HITS_TOP + 2}" class="panel" dominant-baseline="hanging">'
        f'hits</text><text x="{_LEFT + 4}" y="{_BANS_TOP + 2}" class="panel" '
        'dominant-baseline="hanging">bans</text></svg>'
    )
    return "".join(parts)


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{esc(label)}">'
    )


def _grid(top: int, height: int, peak: int, step: int) -> list[str]:
    """Horizontal grid lines every `step` from 0 (bottom) to `peak` (top), values at the left."""
    parts = []
    for value in range(0, peak + 1, step):
        y = top + height - height * value / peak
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID_COLOUR}" stroke-width="1"/>'
            f'<text x="{_LEFT - 6}" y="{y:.1f}" class="axis" text-anchor="end" '
            f'dominant-baseline="central">{esc(number(value))}</text>'
        )
    return parts


def _column(
    x: float, width: float, stack: list[tuple[int, str, str]], *, top: int, height: int, peak: int
) -> list[str]:
    """One bar of stacked values, bottom up; zero values draw nothing."""
    parts, base = [], float(top + height)
    for value, colour, title in stack:
        if value <= 0:
            continue
        tall = height * value / peak
        base -= tall
        parts.append(
            f'<rect x="{x:.2f}" y="{base:.2f}" width="{max(width, 0.5):.2f}" '
            f'height="{tall:.2f}" fill="{colour}"><title>{esc(title)}</title></rect>'
        )
    return parts


def _axis_labels(buckets: Sequence[Bucket], period: Period, slot: float) -> list[str]:
    """Date labels at midnights (UTC) for buckets under a day; every k-th bucket otherwise;
    at most about 14, so that they never overlap."""
    starts = [b.start for b in buckets]
    if period.step < DAY:
        marks = [i for i, at in enumerate(starts) if at % DAY == 0]
        if period.step == HOUR and len(marks) <= 3:
            marks = [i for i, at in enumerate(starts) if at % (6 * HOUR) == 0]
    else:
        marks = list(range(len(starts)))
    every = max(1, math.ceil(len(marks) / _MAX_LABELS))
    parts = []
    for i in marks[::every]:
        x = _LEFT + i * slot
        at = starts[i]
        text = day_month(at) if at % DAY == 0 else f"{utc(at).hour:02d}:00"
        parts.append(
            f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{_BANS_TOP + _BANS_HEIGHT}" '
            f'y2="{_BANS_TOP + _BANS_HEIGHT + 5}" stroke="{AXIS_TEXT}" stroke-width="1"/>'
            f'<text x="{x:.2f}" y="{_AXIS_Y}" class="axis" text-anchor="middle">{esc(text)}</text>'
        )
    return parts


def _bucket_name(start: float, step: float) -> str:
    """A bucket for a tooltip: '22 Nov 06:00-12:00' or '22 Nov' or 'week of 17 Nov'."""
    if step >= 7 * DAY:
        return f"week of {day_month(start)}"
    if step >= DAY:
        return day_month(start)
    end = utc(start + step)
    return f"{day_month(start)} {utc(start).hour:02d}:00-{end.hour:02d}:00"
