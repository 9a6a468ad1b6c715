"""What `porttrap top` shows, as pure functions: a `topdata.View` in, lines of text out.

`render` lays a view out in a given width and height as `Line`s of styled segments, which
`top` draws with curses or prints as plain text. No terminal, socket or clock here, so the
layout is tested line by line.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from porttrap.cli.topdata import WINDOW, BanInfo, Snapshot, View

SIDE_BY_SIDE_GAP = 4  # columns between the ports and the sources tables
MAX_ADDRESS = 39  # the longest IPv6 address; a longer (network) text is cut
BAR_WIDTH = 12  # the ports table's share bar
SPARK_UNICODE = " ▁▂▃▄▅▆▇█"  # index 0: no hits at all
SPARK_ASCII = " .:-=+*#@"


class Style(enum.Enum):
    """How a segment looks; `top` maps each to curses attributes."""

    PLAIN = "plain"
    TITLE = "title"  # the top bar
    HEAD = "head"  # section and column titles
    DIM = "dim"  # secondary text: units, "ago", the key help
    BAR = "bar"  # sparkline and share bars
    HOT = "hot"  # hits per second above zero
    BANNED = "banned"  # a temporary ban
    PERMANENT = "permanent"  # a permanent ban
    WARN = "warn"  # the daemon does not answer


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    style: Style = Style.PLAIN


Line = tuple[Segment, ...]


# -- text --------------------------------------------------------------------------------


def span(seconds: float) -> str:
    """A duration in one or two units: '0s', '42s', '5m', '5m07s', '3h05m', '12d04h'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                          ("m", 60, "s", 1)):  # fmt: skip
        if s >= size:
            rest = s % size // small_size
            return f"{s // size}{unit}{rest:02d}{small}" if rest else f"{s // size}{unit}"
    raise AssertionError("unreachable")


def _number(value: float) -> str:
    return f"{value:g}"


def rate(value: float | None) -> str:
    """Hits per second: '-' unknown, '0', '0.5', '12.3', '1,234'."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value < 100:
        return f"{value:.1f}"
    return f"{round(value):,}"


def sparkline(rates: Sequence[float | None], width: int, unicode: bool = True) -> str:
    """The last `width` rates as bars scaled to their maximum; no hits (or no reading) is a
    blank, any hit at least the lowest bar."""
    marks = SPARK_UNICODE if unicode else SPARK_ASCII
    shown = [r or 0.0 for r in rates][-width:] if width > 0 else []
    peak = max(shown, default=0.0)
    if peak <= 0:
        return marks[0] * len(shown)
    top = len(marks) - 1
    return "".join(marks[min(top, math.ceil(r / peak * top))] if r > 0 else marks[0]
                   for r in shown)  # fmt: skip


def _ban_left(ban: BanInfo | None, now: float) -> Segment:
    if ban is None:
        return Segment("-", Style.DIM)
    if ban.expires_at is None:
        return Segment("permanent", Style.PERMANENT)
    return Segment(f"{span(ban.expires_at - now)} left", Style.BANNED)


def _ban_length(ban: BanInfo) -> Segment:
    if ban.expires_at is None:
        return Segment("permanent", Style.PERMANENT)
    return Segment(span(ban.expires_at - ban.banned_at), Style.BANNED)


def _ban_end(ban: BanInfo, now: float) -> Segment:
    if ban.expires_at is None:
        return Segment("never", Style.PERMANENT)
    return Segment(f"in {span(ban.expires_at - now)}")


def _address(text: str) -> str:
    return text if len(text) <= MAX_ADDRESS else text[: MAX_ADDRESS - 1] + "~"


# -- tables ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: tuple[str, ...]
    right: frozenset[int]  # indexes of right-aligned columns
    rows: tuple[tuple[Segment, ...], ...]
    empty: str

    def width(self) -> int:
        return max(_length(line) for line in self.lines(len(self.rows)))

    def lines(self, rows: int) -> list[Line]:
        """Title, column heads, then at most `rows` rows (at least the `empty` text)."""
        shown = self.rows[: max(0, rows)]
        heads = [Segment(c, Style.HEAD) for c in self.columns]
        widths = [max(len(r[i].text) for r in (heads, *self.rows)) for i in range(len(heads))]
        out: list[Line] = [(Segment(self.title, Style.HEAD),), self._row(heads, widths)]
        out += [self._row(list(r), widths) for r in shown]
        if not self.rows and rows > 0:
            out.append((Segment(self.empty, Style.DIM),))
        return out

    def _row(self, cells: list[Segment], widths: list[int]) -> Line:
        out: list[Segment] = []
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True)):
            pad = " " * (w - len(cell.text))
            if i:
                out.append(Segment("  "))
            out += [Segment(pad), cell] if i in self.right else [cell, Segment(pad)]
        return _strip(tuple(s for s in out if s.text))


def _ports(snap: Snapshot, unicode: bool) -> Table:
    """The most hit ports: their share of all hits, and a bar scaled to the first."""
    most = max((p.hits for p in snap.ports), default=0) or 1
    rows = []
    for p in snap.ports:
        rows.append((
            Segment(f"{p.proto}/{'other' if p.port is None else p.port}"),
            Segment(f"{p.hits:,}"),
            Segment(f"{p.hits / (snap.hits or 1):.0%}"),
            Segment(bar(p.hits / most, BAR_WIDTH, unicode), Style.BAR),
        ))  # fmt: skip
    bar_head = " " * BAR_WIDTH if rows else ""
    return Table("TRAP PORTS", ("PORT", "HITS", "SHARE", bar_head), frozenset({1, 2}),
                 tuple(rows), "no hits yet")  # fmt: skip


def bar(fraction: float, width: int, unicode: bool = True) -> str:
    """A horizontal bar `fraction` of `width` long, in eighths of a character with unicode;
    anything above zero shows."""
    if fraction <= 0:
        return ""
    if not unicode:
        return "#" * max(1, round(fraction * width))
    eighths = max(1, round(min(1.0, fraction) * width * 8))
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


def _sources(snap: Snapshot) -> Table:
    rows = tuple(
        (
            Segment(_address(s.address)),
            Segment(f"{s.hits:,}"),
            Segment(f"{s.last_proto}/{s.last_port}"),
            Segment(f"{span(snap.now - s.last_seen)} ago"),
            _ban_left(s.ban, snap.now),
        )
        for s in snap.sources
    )
    return Table("TOP SOURCES", ("ADDRESS", "HITS", "LAST PORT", "SEEN", "BAN"),
                 frozenset({1, 3}), rows, "no sources yet")  # fmt: skip


def _recent(snap: Snapshot) -> Table:
    rows = tuple(
        (
            Segment(f"{span(snap.now - b.banned_at)} ago"),
            Segment(_address(b.address)),
            Segment(f"#{b.ban_count}"),
            _ban_length(b),
            _ban_end(b, snap.now),
            Segment(b.reason),
        )
        for b in snap.recent_bans
    )
    return Table("RECENT BANS", ("BANNED", "ADDRESS", "BAN", "FOR", "ENDS", "REASON"),
                 frozenset({0, 2}), rows, "no active bans")  # fmt: skip


# -- layout ------------------------------------------------------------------------------


def _length(line: Line) -> int:
    return sum(len(s.text) for s in line)


def _strip(line: Line) -> Line:
    """Without trailing blanks."""
    segments = list(line)
    while segments and not segments[-1].text.rstrip():
        segments.pop()
    if segments:
        last = segments[-1]
        segments[-1] = Segment(last.text.rstrip(), last.style)
    return tuple(segments)


def truncate(line: Line, width: int) -> Line:
    """The first `width` characters of `line`."""
    out: list[Segment] = []
    room = width
    for segment in line:
        if room <= 0:
            break
        text = segment.text[:room]
        out.append(Segment(text, segment.style))
        room -= len(text)
    return tuple(out)


def _pad(line: Line, width: int) -> Line:
    missing = width - _length(line)
    return (*line, Segment(" " * missing)) if missing > 0 else line


def _beside(left: list[Line], right: list[Line], gap: int) -> list[Line]:
    width = max((_length(line) for line in left), default=0) + gap
    count = max(len(left), len(right))
    left = left + [()] * (count - len(left))
    right = right + [()] * (count - len(right))
    return [_strip((*_pad(a, width), *b)) for a, b in zip(left, right, strict=True)]


def _title(view: View, width: int | None) -> Line:
    """porttrap's version, pid, uptime, backend and traps, and the daemon's time (UTC): as
    many of them as the width takes."""
    snap = view.snapshot
    parts = [" porttrap top"]
    clock = ""
    if snap is not None:
        skipped = f", {snap.skipped_ports} skipped" if snap.skipped_ports else ""
        modes = f" ({', '.join(snap.modes)})" if snap.modes else ""
        traps = f"{snap.trap_ports} trap port{'' if snap.trap_ports == 1 else 's'}"
        parts = [f" porttrap {snap.version}", f"up {span(snap.now - snap.started_at)}",
                 f"{traps}{skipped}{modes}", f"backend {snap.backend}",
                 f"pid {snap.pid}"]  # fmt: skip
        clock = f"  {datetime.fromtimestamp(snap.now, UTC):%H:%M:%S} UTC "
    text = parts[0]
    if width is not None and len(text) + len(clock) > width:
        clock = ""
    for part in parts[1:]:
        if width is None or len(text) + 5 + len(part) + len(clock) <= width:
            text += f"  |  {part}"
    text = text.ljust(width - len(clock)) + clock if width is not None else text + clock
    return (Segment(text, Style.TITLE),)


def _summary(view: View, width: int | None) -> list[Line]:
    """Hits and bans: one line, or two when one is too narrow."""
    snap = view.snapshot
    if snap is None:
        return [(Segment(" waiting for the daemon's first answer", Style.DIM),)]
    now = view.now
    hot = Style.HOT if now else Style.PLAIN
    permanent = f", {snap.bans_permanent:,} permanent" if snap.bans_permanent else ""
    hits = (
        Segment(" hits "), Segment(f"{snap.hits:,}", Style.HEAD),
        Segment("   now "), Segment(f"{rate(now)}/s", hot),
        Segment("   1 min avg "), Segment(f"{rate(view.average)}/s"),
    )  # fmt: skip
    bans = (
        Segment(" bans "), Segment(f"{snap.bans_active:,} active{permanent}", Style.HEAD),
        Segment(f", {snap.bans_made:,} made since start", Style.DIM),
    )  # fmt: skip
    if width is not None and _length(hits) + 2 + _length(bans) > width:
        return [hits, bans]
    return [(*hits, Segment("  "), *bans)]


def _spark(view: View, width: int | None, unicode: bool) -> Line:
    label = " hits/s "
    peak = max((r for r in view.history if r is not None), default=0.0)
    note = f"  peak {rate(peak)}/s, last {_number(WINDOW)}s"
    room = len(view.history)
    if width is not None:
        room = min(room, max(0, width - len(label) - len(note) - 2))
    bars = sparkline(view.history, room, unicode)
    return (Segment(label, Style.DIM), Segment("[", Style.DIM), Segment(bars, Style.BAR),
            Segment("]", Style.DIM), Segment(note, Style.DIM))  # fmt: skip


Block = Table | tuple[Table, Table]  # one table, or two side by side


def _fit(blocks: Sequence[Block], rows: int | None) -> list[int]:
    """Data rows for each block, so that all blocks (title, heads, rows, a blank between)
    fit in `rows` lines: the biggest fair share for each, what is left to the first ones."""
    needs = [max(1, _rows(b)) for b in blocks]  # an empty table says so on one line
    if rows is None:
        return needs
    room = rows - 3 * len(blocks) + 1  # title, heads, blank after each but the last
    if room <= 0:
        return [0] * len(blocks)
    cap = 0
    while cap < max(needs, default=0) and sum(min(n, cap + 1) for n in needs) <= room:
        cap += 1
    shares = [min(n, cap) for n in needs]
    for i, need in enumerate(needs):  # the rows a full share leaves, in order
        extra = min(need - shares[i], room - sum(shares))
        shares[i] += max(0, extra)
    return shares


def _body(blocks: Sequence[Block], rows: int | None) -> list[Line]:
    """The blocks in `rows` lines (None: all of them, whole): the last blocks go when not
    even one row of each fits."""
    shares = _fit(blocks, rows)
    while blocks and min(shares) < 1:
        blocks = blocks[:-1]
        shares = _fit(blocks, rows)
    lines: list[Line] = []
    for i, (block, share) in enumerate(zip(blocks, shares, strict=True)):
        lines += ([()] if i else []) + _block_lines(block, share)
    return lines


def _block_lines(block: Block, rows: int) -> list[Line]:
    if isinstance(block, tuple):
        left, right = block
        return _beside(left.lines(rows), right.lines(rows), SIDE_BY_SIDE_GAP)
    return block.lines(rows)


def render(view: View, width: int | None, height: int | None, unicode: bool = True) -> list[Line]:
    """The whole screen: `width` columns (None: as wide as it takes) and `height` rows (None:
    every row of every table). Lines never exceed the width; sections that do not fit in
    the height lose rows, then go."""
    head = [_title(view, width)]
    if view.failing_for is not None:
        warning = (f" not answering, retrying every {_number(view.interval)}s "
                   f"(for {span(view.failing_for)}): {view.trouble}")  # fmt: skip
        head.append((Segment(warning, Style.WARN),))
    head += [*_summary(view, width), _spark(view, width, unicode), ()]
    foot: list[Line] = []
    if height is not None:
        foot = [(Segment(f" q quits, refreshes every {_number(view.interval)}s", Style.DIM),)]
    body: list[Line] = []
    snap = view.snapshot
    if snap is not None:
        ports, sources, recent = _ports(snap, unicode), _sources(snap), _recent(snap)
        wide = width is None or 1 + ports.width() + SIDE_BY_SIDE_GAP + sources.width() <= width
        # One above the other, the sources come first: who scans matters most.
        blocks: list[Block] = [(ports, sources), recent] if wide else [sources, ports, recent]
        body = _body(blocks, None if height is None else height - len(head) - len(foot))
    lines = head + [(Segment(" "), *line) if line else line for line in body]
    if height is not None:
        lines = lines[: max(0, height - len(foot))]
        lines += [()] * (height - len(foot) - len(lines))
        lines = (lines + foot)[:height]
    return lines if width is None else [truncate(line, width) for line in lines]


def _rows(block: Block) -> int:
    return max(len(t.rows) for t in (block if isinstance(block, tuple) else (block,)))


def plain(lines: Iterable[Line]) -> list[str]:
    """The text of each line, without trailing blanks."""
    return ["".join(s.text for s in line).rstrip() for line in lines]
