"""The report's renderer on hand-made data: hostile strings come out as text, the page has
nothing to fetch and nothing to run, charts are drawn to scale, and empty data reads as such."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from html.parser import HTMLParser

import pytest

from porttrap.model import Ban
from porttrap.report import charts, html
from porttrap.report.data import BanState, FleetBan, Report, Source, Totals, fleet, fleet_title
from porttrap.report.figures import DAY, HOUR, Bucket, KindCount, Period, PortCount
from porttrap.store.base import StoredBan

END = 20833 * DAY + 9.5 * HOUR
PERIOD = Period.of(END - 7 * DAY, END)
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def report(
    *,
    host: str = "gw.example.net",
    kinds: tuple[KindCount, ...] = (KindCount("connect", 60, 9), KindCount("syn", 20, 2)),
    ports: tuple[PortCount, ...] = (PortCount("tcp", 23, 50, 8), PortCount("tcp", 3389, 20, 3)),
    sources: tuple[Source, ...] | None = None,
    hits: bool = True,
) -> Report:
    timeline = tuple(
        Bucket(PERIOD.bucket_start(i), (i % 5) * 3 if hits else 0, i % 3 if hits else 0, i == 7)
        for i in range(PERIOD.buckets)
    )
    total = sum(b.hits for b in timeline)
    bans = sum(b.bans for b in timeline)
    if sources is None:
        first = Ban(
            ipaddress.ip_network("198.51.100.7"), END - DAY, END - DAY + HOUR, 1, "trap:tcp/23"
        )
        final = Ban(ipaddress.ip_network("198.51.100.7"), END - HOUR, None, 3, "trap:tcp/23")
        sources = (
            Source("198.51.100.7", 50, 2, END - 2 * DAY, END - HOUR,
                   (StoredBan(first, END - DAY + 60, "manual"), StoredBan(final)), 1,
                   BanState("permanent")),
            Source("2001:db8::5", 20, 1, END - DAY, END - DAY, (), 0, BanState("free")),
        ) if hits else ()  # fmt: skip
    totals = Totals(total, len(sources), len(ports), bans, 1, 2, 4, 1)
    return Report(host, END, PERIOD, totals, timeline, ports, kinds, sources, retention=90 * DAY)


class Page(HTMLParser):
    """Every tag, attribute and text of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.texts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


# Everything the page may contain: no script, link, img, iframe, object, a ...
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "header", "h1", "h2", "p", "span",
    "div", "section", "table", "thead", "tbody", "tr", "th", "td", "strong", "br", "dl", "dt",
    "dd", "footer", "svg", "rect", "line", "text", "tspan",
}  # fmt: skip
FETCHING_ATTRIBUTES = {"src", "href", "xlink:href", "srcset", "action", "formaction", "poster",
                       "background", "data", "ping", "manifest", "codebase"}  # fmt: skip


def hostile_report() -> Report:
    stored = StoredBan(
        Ban(ipaddress.ip_network("203.0.113.0/24"), END - HOUR, None, 1, HOSTILE), END, HOSTILE
    )
    source = Source(HOSTILE, 3, 1, END - HOUR, END - 60, (stored,), 2, BanState("permanent"))
    return report(
        host=HOSTILE,
        kinds=(KindCount(HOSTILE, 3, 1),),
        ports=(PortCount(HOSTILE, 23, 3, 1),),
        sources=(source,),
    )


def test_hostile_strings_come_out_as_text() -> None:
    page = html.render(hostile_report())
    assert "<script" not in page and "<img" not in page
    parsed = Page(page)
    assert set(parsed.tags) <= ALLOWED_TAGS
    assert not [a for a in parsed.attributes if a[1].startswith("on")]
    # The hostile text is there, whole, as text: in the title, heading, tables and charts.
    assert sum(HOSTILE in text for text in parsed.texts) >= 5


def test_the_page_has_nothing_to_fetch_or_run() -> None:
    for made in (report(), hostile_report(), report(hits=False)):
        page = html.render(made)
        parsed = Page(page)
        assert set(parsed.tags) <= ALLOWED_TAGS
        assert not [a for a in parsed.attributes if a[1] in FETCHING_ATTRIBUTES]
        assert not [a for a in parsed.attributes if a[1].startswith("on")]
        styles = " ".join(t for t in parsed.texts if "{" in t) + " ".join(
            value for _, name, value in parsed.attributes if name == "style"
        )
        assert "url(" not in styles and "@import" not in styles and "@font-face" not in styles
    plain = html.render(report())
    assert not re.search(r"https?:|//", plain.replace("</", "")), "a URL in the page"


def test_a_content_security_policy_forbids_fetching_and_scripts() -> None:
    parsed = Page(html.render(report()))
    csp = [v for tag, name, v in parsed.attributes if tag == "meta" and name == "content"]
    assert "default-src 'none'; style-src 'unsafe-inline'" in csp


def test_the_header_says_host_period_and_totals() -> None:
    made = report()
    text = " ".join(Page(html.render(made)).texts)
    assert "gw.example.net" in text
    assert "8 Jan 2027 09:30 to 15 Jan 2027 09:30 UTC (7d)" in text
    assert f"{made.totals.hits:,}" in text and "banned now" in text and "1 permanent" in text
    assert "Hits are kept" not in text  # 7 days of 90: nothing pruned


def test_a_period_longer_than_hits_are_kept_says_so() -> None:
    made = dataclasses.replace(report(), retention=3 * DAY)
    assert "Hits are kept for 3d (hit_retention)" in html.render(made)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(7 * DAY, "7d"), (90 * DAY, "90d"), (12 * HOUR, "12h"), (DAY + 6 * HOUR, "1d6h"), (60, "1m")],
)
def test_periods_are_said_in_days(seconds: float, text: str) -> None:
    assert html.span(seconds) == text


def test_long_values_keep_room_after_their_bars() -> None:
    bars = [charts.Bar("tcp/1", 142_139, "#123456", " from 25,369 sources")]
    svg = charts.hbars(bars)
    width = float(re.findall(r'<rect [^>]*width="([\d.]+)"', svg)[0])
    assert 96 + width + 6 + 6.5 * len("142,139 from 25,369 sources") <= 480


def test_an_empty_period_says_so_instead_of_charts() -> None:
    page = html.render(report(hits=False))
    assert "No hits in this period." in page
    assert "<svg" not in page and "<table" not in page


def test_bars_are_proportional_to_their_values() -> None:
    bars = [charts.Bar(str(v), v, "#123456") for v in (400, 100, 250)]
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([\d.]+)"', charts.hbars(bars))]
    assert widths[0] == pytest.approx(4 * widths[1]) and widths[2] == pytest.approx(2.5 * widths[1])


def test_only_the_classes_present_get_their_colours() -> None:
    page = html.render(report(kinds=(KindCount("xmas", 5, 1), KindCount("udp", 2, 1))))
    used = {kind for kind, colour in html.KIND_COLOURS.items() if colour in page}
    assert used == {"xmas", "udp"}
    assert "FIN+PSH+URG probe (nmap -sX)" in page


def test_the_timeline_draws_a_bar_per_busy_bucket() -> None:
    made = report()
    svg = charts.timeline(made.timeline, made.period)
    hits = re.findall(rf'<rect [^>]*fill="{charts.HITS_COLOUR}"', svg)
    permanent = re.findall(rf'<rect [^>]*fill="{charts.PERMANENT_COLOUR}"', svg)
    assert len(hits) == sum(1 for b in made.timeline if b.hits) and len(permanent) == 1
    assert svg.count("<text") > 10  # axis values and dates
    dates = re.findall(r'text-anchor="middle">([^<]+)</text>', svg)
    assert dates == [f"{day} Jan" for day in range(9, 16)]  # each UTC midnight in the period


@pytest.mark.parametrize(
    ("peak", "lines", "expected"),
    [(0, 4, (1, 1)), (1, 4, (1, 1)), (7, 4, (8, 2)), (42, 4, (60, 20)), (50, 4, (60, 20)),
     (9, 2, (10, 5)), (1234, 4, (1500, 500))],
)  # fmt: skip
def test_axis_scales_are_round(peak: int, lines: int, expected: tuple[int, int]) -> None:
    top, step = charts.scale(peak, lines)
    assert (top, step) == expected and top >= peak and top % step == 0 and top // step <= lines


def fleet_report(reason: str = "trap:tcp/23") -> Report:
    """A fleet's report: bans only (the log holds no hits), two hosts."""
    lifted = StoredBan(
        Ban(ipaddress.ip_network("2001:db8::/64"), END - DAY, END, 2, reason), END - 60, reason
    )
    permanent = StoredBan(Ban(ipaddress.ip_network("203.0.113.9"), END - HOUR, None, 1, reason))
    made = [FleetBan("web-1", lifted), FleetBan("web.2", permanent)]
    plain = report(hits=False, kinds=(), ports=())
    return dataclasses.replace(
        plain,
        host=fleet_title(["web-1", "web.2"]),
        totals=Totals(0, 0, 0, 2, 1, 2, 1, 1),
        retention=None,
        fleet=fleet(["web-1", "web.2"], made, top=1),
    )


def test_a_fleet_report_shows_its_hosts_and_their_bans_and_no_hit_sections() -> None:
    page = html.render(fleet_report())
    text = " ".join(Page(page).texts)
    assert "the fleet (2 hosts)" in text and "hosts: web-1, web.2" in text
    assert "203.0.113.9" in text and "web.2" in text and "permanent" in text
    assert "2001:db8::/64" not in text and "1 older ban not listed" in text  # top=1
    assert "hosts in the fleet" in text and "targets" in text
    for section in ("Top sources", "Most hit ports", "Scan classes"):
        assert section not in text
    assert "sources" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S)


def test_a_fleet_report_shows_hostile_reasons_as_text() -> None:
    parsed = Page(html.render(fleet_report(HOSTILE)))
    assert set(parsed.tags) <= ALLOWED_TAGS
    assert not [a for a in parsed.attributes if a[1].startswith("on")]
    assert any(HOSTILE.removeprefix("trap:") in t for t in parsed.texts)
