"""`porttrap report` as a person sees it: the command writes the page from a real store, headless
Chromium renders it, and the screenshot's pixels are checked: chart bars in their colours and
to scale, the colours of exactly the scan classes present, a bar per busy hour, the addresses
legible (OCR), and no request from the page to the network.

Needs Debian's chromium and tesseract-ocr (scripts/setup.sh test installs both); without them
the tests are skipped, which fails a CI run (tests/conftest.py).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess  # noqa: TID251 - test helper: runs tesseract
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

import chromium
from porttrap.cli.main import main
from porttrap.clock import SystemClock
from porttrap.model import Ban, Hit, Outcome, Proto
from porttrap.report import charts, html
from porttrap.store.sqlite import SQLiteStore

HOUR = 3600.0
RGB = tuple[int, int, int]
# (source, proto, port, kind, hits, hours ago): four ports hit 40:20:10:5 times, in three
# different hours, by three scan classes.
TRAFFIC = [
    ("198.51.100.7", Proto.TCP, 23, "connect", 40, 20),
    ("203.0.113.5", Proto.TCP, 3389, "syn", 20, 10),
    ("2001:db8::9", Proto.TCP, 445, "connect", 10, 2),
    ("198.51.100.200", Proto.UDP, 161, "udp", 5, 2),
]


def missing_tools() -> str | None:
    if (reason := chromium.available()) is not None:
        return reason
    if shutil.which("tesseract") is None:
        return "the report's browser tests read text with tesseract: apt-get install tesseract-ocr"
    return None


@dataclass(frozen=True)
class Shot:
    image: Image.Image
    requests: list[str]

    def count(self, colour: str) -> int:
        wanted = rgb(colour)
        return sum(1 for pixel in pixels(self.image) if pixel == wanted)


def pixels(image: Image.Image) -> list[RGB]:
    """The RGB pixels, row by row."""
    raw = image.convert("RGB").tobytes()
    return list(zip(raw[0::3], raw[1::3], raw[2::3], strict=True))


def rgb(colour: str) -> RGB:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


@pytest.fixture(scope="module")
def shot(tmp_path_factory: pytest.TempPathFactory) -> Shot:
    if (reason := missing_tools()) is not None:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("report")
    config = tmp / "porttrap.toml"
    config.write_text(f'state_dir = "{tmp / "state"}"\n')
    fill(tmp / "state" / "porttrap.db", SystemClock().now())
    page = tmp / "report.html"
    assert main(["report", "--since", "1d", "-c", str(config), "-o", str(page)]) == 0
    netlog = tmp / "netlog.json"
    image = chromium.screenshot(page, tmp / "report.png", netlog=netlog)
    return Shot(image, chromium.page_requests(netlog))


def fill(database: Path, now: float) -> None:
    local = {4: ipaddress.ip_address("192.0.2.1"), 6: ipaddress.ip_address("2001:db8::1")}
    hits, bans = [], []
    for source, proto, port, kind, count, hours_ago in TRAFFIC:
        address = ipaddress.ip_address(source)
        at = now - hours_ago * HOUR
        hits += [
            (Hit(at + n, address, 40000 + n, local[address.version], port, proto, kind),
             Outcome.ALREADY_BANNED if n else Outcome.BANNED)
            for n in range(count)
        ]  # fmt: skip
        expires = None if port == 23 else at + HOUR
        bans.append(Ban(ipaddress.ip_network(address), at, expires, 1, f"trap:{proto}/{port}"))
    with SQLiteStore.open(database) as store:
        store.add_hits(hits)
        store.add_bans(bans)


def bars(image: Image.Image, colour: str) -> list[int]:
    """The lengths in pixels of the horizontal bars drawn in `colour`, top to bottom: each run
    of rows holding the colour is a bar, as long as its widest row."""
    wanted, width = rgb(colour), image.width
    every = pixels(image)
    rows = [
        sum(1 for x in range(width) if every[y * width + x] == wanted) for y in range(image.height)
    ]
    found, current = [], 0
    for filled in [*rows, 0]:
        if filled:
            current = max(current, filled)
        elif current:
            found.append(current)
            current = 0
    return found


def columns(image: Image.Image, colour: str, tall: int) -> int:
    """How many separate vertical bars in `colour` are at least `tall` pixels high."""
    wanted, width = rgb(colour), image.width
    heights = Counter(
        x for i, pixel in enumerate(pixels(image)) if pixel == wanted for x in [i % width]
    )
    runs, inside = 0, False
    for x in range(width):
        high = heights[x] >= tall
        runs += high and not inside
        inside = high
    return runs


def test_the_page_is_drawn(shot: Shot) -> None:
    every = pixels(shot.image)
    background = Counter(every).most_common(1)[0][1]
    assert shot.image.width == 1280 and shot.image.height > 1000
    assert len(set(every)) > 100 and len(every) - background > 0.3 * len(every)


def test_port_bars_are_to_scale(shot: Shot) -> None:
    lengths = bars(shot.image, html.PORTS_COLOUR)
    hits = [count for *_, count, _ in TRAFFIC]
    assert len(lengths) == len(hits), lengths
    for length, count in zip(lengths, hits, strict=True):
        assert abs(length - lengths[0] * count / hits[0]) <= 1.5, (lengths, hits)


def test_exactly_the_classes_present_have_their_colours(shot: Shot) -> None:
    drawn = {kind for kind, colour in html.KIND_COLOURS.items() if shot.count(colour) >= 30}
    assert drawn == {"connect", "syn", "udp"}
    absent = [kind for kind in html.KIND_COLOURS if kind not in drawn]
    assert all(shot.count(html.KIND_COLOURS[kind]) == 0 for kind in absent)
    connect, syn, udp = (
        bars(shot.image, html.KIND_COLOURS[k])[0] for k in ("connect", "syn", "udp")
    )
    assert abs(syn - connect * 20 / 50) <= 1.5 and abs(udp - connect * 5 / 50) <= 1.5


def test_the_timeline_has_a_bar_for_each_busy_hour(shot: Shot) -> None:
    assert columns(shot.image, charts.HITS_COLOUR, tall=20) == 3
    assert columns(shot.image, charts.PERMANENT_COLOUR, tall=12) == 1  # the one permanent ban
    assert columns(shot.image, charts.BANS_COLOUR, tall=12) == 2


def test_the_addresses_can_be_read(shot: Shot, tmp_path: Path) -> None:
    """OCR of the screenshot: the title, and every source in the order of their hits."""
    text = ocr(shot.image, tmp_path)
    assert "porttrap report" in text
    where = [text.find(source) for source, *_ in TRAFFIC]
    assert all(at >= 0 for at in where), text
    assert where == sorted(where)


def ocr(image: Image.Image, tmp_path: Path) -> str:
    """The text tesseract reads off `image` doubled in size (it reads small text better so)."""
    big = tmp_path / "big.png"
    image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS).save(big)
    argv = ["tesseract", str(big), "-"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout


def test_an_empty_period_reads_as_such(tmp_path: Path) -> None:
    if (reason := missing_tools()) is not None:
        pytest.skip(reason)
    SQLiteStore.open(tmp_path / "porttrap.db").close()
    page = tmp_path / "report.html"
    assert main(["report", "--database", str(tmp_path / "porttrap.db"), "-o", str(page)]) == 0
    empty = Shot(chromium.screenshot(page, tmp_path / "report.png", height=900), [])
    assert "No hits in this period." in ocr(empty.image, tmp_path)
    colours = [charts.HITS_COLOUR, html.PORTS_COLOUR, *html.KIND_COLOURS.values()]
    assert [empty.count(colour) for colour in colours] == [0] * len(colours)


def test_the_page_asked_the_network_for_nothing(shot: Shot) -> None:
    assert shot.requests == []


def test_a_page_that_fetches_is_caught(tmp_path: Path) -> None:
    """The net-log check itself: a page with an image from a (never resolving) host."""
    if (reason := chromium.available()) is not None:
        pytest.skip(reason)
    page = tmp_path / "fetching.html"
    page.write_text('<!doctype html><img src="http://report-probe.invalid/x.png">')
    netlog = tmp_path / "netlog.json"
    chromium.screenshot(page, tmp_path / "fetching.png", height=200, netlog=netlog)
    assert chromium.page_requests(netlog) == ["http://report-probe.invalid/x.png"]
