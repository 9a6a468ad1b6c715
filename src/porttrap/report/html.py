"""The report as one self-contained HTML page: `render(report)` in, text out.

Self-contained means nothing to fetch: CSS inline, charts as inline SVG, no script, no font,
no image, no link. A Content-Security-Policy of `default-src 'none'` says so to the browser
too, so that even a mistake here could not make a viewer's browser fetch or run anything.
Every value from the database (addresses, classes, reasons) is escaped.
"""

from __future__ import annotations

from porttrap import __version__
from porttrap.model import show
from porttrap.report.charts import (
    BANS_COLOUR,
    HITS_COLOUR,
    PERMANENT_COLOUR,
    Bar,
    day_month,
    esc,
    hbars,
    number,
    timeline,
    utc,
)
from porttrap.report.data import Fleet, Report, Source
from porttrap.report.figures import KindCount, PortCount
from porttrap.store.base import StoredBan
from porttrap.units import format_duration

PORTS_COLOUR = "#5a5fa8"
SOURCE_BAR_COLOUR = "#c5d3e8"
OTHER_KIND_COLOUR = "#8da0b6"
# One colour per scan class (porttrap.sensors.classify), and what each class is.
KIND_COLOURS = {
    "connect": "#4e9f6e",
    "syn": "#d4a017",
    "fin": "#c8559b",
    "null": "#7a7a7a",
    "xmas": "#e15759",
    "ack": "#59a5d8",
    "maimon": "#9c755f",
    "other": "#bab0ac",
    "udp": "#76b7b2",
}
KIND_NOTES = {
    "connect": "completed TCP handshake: the source address is proven",
    "syn": "half-open SYN probe (nmap -sS)",
    "fin": "FIN probe (nmap -sF)",
    "null": "TCP probe without flags (nmap -sN)",
    "xmas": "FIN+PSH+URG probe (nmap -sX)",
    "ack": "bare ACK probe (nmap -sA, -sW)",
    "maimon": "FIN+ACK probe (nmap -sM)",
    "other": "another TCP flag combination",
    "udp": "UDP datagram (nmap -sU)",
}

_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f3f5f8; color: #1f2933;
  font: 14px/1.45 system-ui, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 20px 32px; }
header { border-bottom: 3px solid #1f2933; padding-bottom: 12px; margin-bottom: 18px; }
h1 { font-size: 24px; margin: 0 0 4px; letter-spacing: -0.01em; }
h1 .host { color: #2d5f9e; }
h2 { font-size: 16px; margin: 0 0 10px; }
.sub { color: #52606d; margin: 0; }
.cards { display: grid; grid-template-columns: repeat(5, 1fr); gap: 12px; margin-bottom: 18px; }
.card { background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 10px 14px; }
.card .n { font-size: 26px; font-weight: 700; display: block; }
.card .what { color: #52606d; font-size: 13px; }
.card .extra { color: #7b8794; font-size: 12px; display: block; }
section { background: #fff; border: 1px solid #dde3ea; border-radius: 6px; padding: 14px 18px;
  margin-bottom: 18px; overflow-x: auto; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.two section { margin-bottom: 18px; }
svg { display: block; max-width: 100%; height: auto; }
svg text { font: 12px system-ui, "DejaVu Sans", sans-serif; fill: #1f2933; }
svg .axis { fill: #5b6472; font-size: 11px; }
svg .panel { fill: #5b6472; font-size: 11px; font-weight: 700; }
svg .label { font-family: "DejaVu Sans Mono", ui-monospace, monospace; }
svg .note { fill: #7b8794; }
.legend { margin: 0 0 8px; color: #52606d; font-size: 13px; }
.key { display: inline-block; width: 10px; height: 10px; margin: 0 5px 0 14px; }
.key:first-child { margin-left: 0; }
.empty { color: #52606d; font-size: 15px; padding: 28px 0; text-align: center; }
dl.kinds { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px;
  margin: 10px 0 0; font-size: 12px; color: #52606d; }
dl.kinds dt { font-family: "DejaVu Sans Mono", ui-monospace, monospace; color: #1f2933; }
dl.kinds dd { margin: 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th { text-align: left; color: #52606d; font-weight: 600; border-bottom: 2px solid #dde3ea;
  padding: 6px 8px; white-space: nowrap; }
td { border-bottom: 1px solid #edf0f4; padding: 6px 8px; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.addr { font-family: "DejaVu Sans Mono", ui-monospace, monospace; white-space: nowrap; }
td.time { white-space: nowrap; color: #52606d; }
.hitbar { height: 4px; background: #c5d3e8; margin-top: 3px; min-width: 1px; }
td.hits { min-width: 72px; }
tbody.sources td { border-bottom: 0; }
tbody.sources tr.first td { border-top: 1px solid #e3e7ed; }
tbody.sources tr:not(.first) td { padding-top: 0; }
td.ban { font-size: 12px; white-space: nowrap; padding: 7px 6px 1px 6px; }
tbody.sources tr.last td.ban, tbody.sources tr.last td.more { padding-bottom: 7px; }
td.ban.at, td.ban.count { color: #7b8794; }
td.ban.length { font-weight: 600; }
td.ban.length.permanent { color: #a12620; }
td.ban.end.lifted { color: #2e7d4f; }
td.ban.trap { white-space: normal; }
.more { color: #7b8794; font-size: 12px; }
td.more { padding-bottom: 0; }
.state { display: inline-block; margin-top: 3px; border-radius: 10px; padding: 1px 9px;
  font-size: 12px; font-weight: 600; white-space: nowrap; }
.state.permanent { background: #fbe3e1; color: #8c1d18; }
.state.banned { background: #fdf0df; color: #8a4b08; }
.state.free { background: #edf0f4; color: #52606d; }
footer { color: #7b8794; font-size: 12px; margin-top: 8px; }
@media (max-width: 800px) { .cards { grid-template-columns: repeat(2, 1fr); }
  .two { grid-template-columns: 1fr; } }
"""


def render(report: Report) -> str:
    """The whole page."""
    return "".join(
        [
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            f"<title>porttrap report: {esc(report.host)}, {esc(_period(report))}</title>",
            f"<style>{_CSS}</style></head><body><main>",
            _header(report),
            _cards(report),
            _body(report),
            _footer(report),
            "</main></body></html>\n",
        ]
    )


def when(at: float, year: bool = False) -> str:
    """'22 Nov 10:04' (UTC), or '22 Nov 2026 10:04'."""
    moment = utc(at)
    day = f"{day_month(at)} {moment.year}" if year else day_month(at)
    return f"{day} {moment.hour:02d}:{moment.minute:02d}"


def _period(report: Report) -> str:
    period = report.period
    length = span(period.end - period.start)
    return f"{when(period.start, True)} to {when(period.end, True)} UTC ({length})"


def _header(report: Report) -> str:
    return (
        f'<header><h1>porttrap report: <span class="host">{esc(report.host)}</span></h1>'
        f'<p class="sub">{esc(_period(report))} &middot; generated '
        f"{esc(when(report.generated_at, True))} UTC</p></header>"
    )


def _cards(report: Report) -> str:
    t = report.totals
    cards = [
        (t.hits, "hits", ""),
        (t.sources, "sources", "distinct addresses"),
        (t.ports, "ports hit", "protocol/port pairs"),
        (t.bans, "bans made", f"{number(t.permanent_bans)} permanent"),
        (t.active_now, "banned now", f"{number(t.permanent_now)} permanent"),
    ]
    if report.fleet is not None:  # the log holds no hits: a host's hits stay on that host
        cards = [
            (len(report.fleet.hosts), "hosts", "in the fleet"),
            (t.bans, "bans made", f"{number(t.permanent_bans)} permanent"),
            (t.banned_targets, "targets", "distinct addresses and networks"),
            (t.active_now, "banned now", f"{number(t.permanent_now)} permanent"),
        ]
    items = "".join(
        f'<div class="card"><span class="n">{esc(number(n))}</span><span class="what">'
        f'{esc(what)}</span><span class="extra">{esc(extra) or "&nbsp;"}</span></div>'
        for n, what, extra in cards
    )
    return f'<div class="cards">{items}</div>'


def _body(report: Report) -> str:
    if report.totals.hits == 0 and report.totals.bans == 0:
        return (
            '<section><p class="empty"><strong>No hits in this period.</strong><br>'
            "No address touched a trap and no ban was made from "
            f"{esc(_period(report))}.</p></section>"
        )
    if report.fleet is not None:
        return _timeline(report) + _fleet_bans(report.fleet, report.generated_at)
    return "".join(
        [
            _timeline(report),
            '<div class="two">',
            _ports(report.ports, report.totals.hits),
            _kinds(report.kinds),
            "</div>",
            _sources(report),
        ]
    )


def _fleet_bans(fleet: Fleet, now: float) -> str:
    rows = "".join(
        f'<tr><td class="addr">{esc(target)}</td><td class="host">{esc(each.host)}</td>'
        f"{_ban_cells(each.stored, target, now)}</tr>"
        for each in fleet.bans
        if (target := show(each.stored.ban.target))
    )
    more = f" ({_plural(fleet.more_bans, 'older ban')} not listed)" if fleet.more_bans else ""
    hosts = ", ".join(fleet.hosts)
    return (
        f'<section><h2>Bans across the fleet</h2><p class="legend">the newest bans made in '
        f"the period, by any host{esc(more)}; hosts: {esc(hosts)}. The fleet's log holds bans "
        "only: each host's hits are in its own report</p><table><thead><tr><th>target</th>"
        '<th>host</th><th colspan="5">ban: when, number, length, end, why</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></section>"
    )


def _timeline(report: Report) -> str:
    step = format_duration(report.period.step)
    keys = [
        (HITS_COLOUR, f"hits per {step}"),
        (BANS_COLOUR, "temporary bans"),
        (PERMANENT_COLOUR, "permanent bans"),
    ]
    legend = "".join(
        f'<span class="key" style="background:{colour}"></span>{esc(text)}' for colour, text in keys
    )
    chart = timeline(report.timeline, report.period)
    return (
        f'<section><h2>Hits and bans over time</h2><p class="legend">{legend}</p>{chart}</section>'
    )


def _no_hits(title: str) -> str:
    return f'<section><h2>{esc(title)}</h2><p class="empty">No hits in this period.</p></section>'


def _ports(ports: tuple[PortCount, ...], total: int) -> str:
    if not ports:
        return _no_hits("Most hit ports")
    bars = [
        Bar(
            label=f"{p.proto}/{p.port}",
            value=p.hits,
            colour=PORTS_COLOUR,
            note=f" from {_plural(p.sources, 'source')}",
            title=f"{p.proto}/{p.port}: {number(p.hits)} hits from {number(p.sources)} sources",
        )
        for p in ports
    ]
    share = sum(p.hits for p in ports) * 100 / max(1, total)
    return (
        f'<section><h2>Most hit ports</h2><p class="legend">the top {len(ports)} take '
        f"{share:.0f}% of all hits</p>{hbars(bars)}</section>"
    )


def _kinds(kinds: tuple[KindCount, ...]) -> str:
    if not kinds:
        return _no_hits("Scan classes")
    bars = [
        Bar(
            label=k.kind,
            value=k.hits,
            colour=KIND_COLOURS.get(k.kind, OTHER_KIND_COLOUR),
            note=f" from {_plural(k.sources, 'source')}",
            title=f"{k.kind}: {KIND_NOTES.get(k.kind, 'not a class porttrap knows')}",
        )
        for k in kinds
    ]
    notes = "".join(
        f"<dt>{esc(k.kind)}</dt><dd>{esc(KIND_NOTES.get(k.kind, 'not a class porttrap knows'))}"
        "</dd>"
        for k in kinds
    )
    return (
        '<section><h2>Scan classes</h2><p class="legend">how the traps were touched</p>'
        f'{hbars(bars)}<dl class="kinds">{notes}</dl></section>'
    )


def _sources(report: Report) -> str:
    if not report.sources:
        return _no_hits("Top sources")
    peak = max(s.hits for s in report.sources)
    rows = "".join(
        _source_row(rank, s, peak, report.generated_at) for rank, s in enumerate(report.sources, 1)
    )
    shown = len(report.sources)
    of = f" of {number(report.totals.sources)}" if report.totals.sources > shown else ""
    return (
        f'<section><h2>Top sources</h2><p class="legend">the {shown}{of} addresses that hit '
        "the traps most, with every ban that was in force during the period</p><table><thead>"
        "<tr><th>#</th><th>address, and now</th><th>hits</th><th>ports</th><th>seen</th>"
        '<th colspan="5">bans: when, number, length, end, trap</th></tr></thead>'
        f'<tbody class="sources">{rows}</tbody></table></section>'
    )


def _source_row(rank: int, source: Source, peak: int, now: float) -> str:
    """The source's cells span one row per ban, so that the bans' columns line up."""
    bans = [_ban_cells(b, source.address, now) for b in source.bans]
    if source.earlier_bans:
        more = _plural(source.earlier_bans, "earlier ban")
        bans.insert(0, f'<td colspan="5" class="more">and {more}</td>')
    bans = bans or ['<td colspan="5" class="more">no ban</td>']
    span = f' rowspan="{len(bans)}"' if len(bans) > 1 else ""
    share = 100 * source.hits / peak
    kind = "first last" if len(bans) == 1 else "first"
    first = (
        f'<tr class="{kind}"><td class="num"{span}>{rank}</td><td{span}><span class="addr">'
        f"{esc(source.address)}</span><br>{_state(source)}</td>"
        f'<td class="num hits"{span}>{esc(number(source.hits))}<div class="hitbar" '
        f'style="width:{share:.1f}%"></div></td>'
        f'<td class="num"{span}>{esc(number(source.ports))}</td>'
        f'<td class="time"{span}>{_seen(source)}</td>{bans[0]}</tr>'
    )
    rest = [f"<tr>{cells}</tr>" for cells in bans[1:-1]]
    last = [f'<tr class="last">{bans[-1]}</tr>'] if len(bans) > 1 else []
    return first + "".join(rest + last)


def _seen(source: Source) -> str:
    """First and last hit, or the one time when they fall in the same minute."""
    first, last = when(source.first_seen), when(source.last_seen)
    return esc(first) if first == last else f"{esc(first)}<br>&rarr; {esc(last)}"


def _ban_cells(stored: StoredBan, address: str, now: float) -> str:
    """One ban: when, its number, how long, how it ended, which trap (or why)."""
    ban = stored.ban
    if ban.expires_at is None:
        length = "permanent"
    else:
        length = format_duration(ban.expires_at - ban.banned_at)
    target = show(ban.target)
    reason = ban.reason.removeprefix("trap:") + (f" via {target}" if target != address else "")
    if stored.lifted_at is not None:
        end = f"lifted {when(stored.lifted_at)}"
        end += f" ({stored.lifted_reason})" if stored.lifted_reason else ""
    elif ban.expires_at is None:
        end = "in force"
    elif ban.expires_at > now:
        end = f"until {when(ban.expires_at)}"
    else:
        end = "expired"
    kind = "permanent" if ban.expires_at is None else "lifted" if stored.lifted_at else "ended"
    return (
        f'<td class="ban at">{esc(when(ban.banned_at))}</td><td class="ban count">'
        f'#{ban.ban_count}</td><td class="ban length {kind}">{esc(length)}</td>'
        f'<td class="ban end {kind}">{esc(end)}</td><td class="ban trap">{esc(reason)}</td>'
    )


def _state(source: Source) -> str:
    state = source.now
    if state.state == "permanent":
        return '<span class="state permanent">banned for good</span>'
    if state.state == "banned" and state.until is not None:
        return f'<span class="state banned">banned until {esc(when(state.until))}</span>'
    return '<span class="state free">not banned</span>'


def _footer(report: Report) -> str:
    pruned = ""
    retention = report.retention
    if retention is not None and report.period.start < report.generated_at - retention:
        pruned = (
            f" Hits are kept for {esc(span(retention))} (hit_retention): the "
            "start of this period holds none."
        )
    return (
        f"<footer>porttrap {esc(__version__)}. All times are UTC. Bans are counted when they "
        f"were made; &ldquo;now&rdquo; is the time this report was generated.{pruned}</footer>"
    )


def span(seconds: float) -> str:
    """A length of time as people say it of periods: whole days as days ('90d', not
    '12w6d'), anything else as porttrap's durations ('12h', '1d6h')."""
    days, rest = divmod(round(seconds), 86400)
    return f"{days}d" if days and not rest else format_duration(seconds)


def _plural(count: int, word: str) -> str:
    return f"{number(count)} {word}{'' if count == 1 else 's'}"
