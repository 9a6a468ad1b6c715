"""Make docs/report.png, the picture of `porttrap report`: a realistic week of a
store (a telnet botnet, a SYN sweep, an IPv6 stealth scanner, a UDP prober, an RDP scanner,
background noise; escalating bans, permanent ones, one lifted by hand, one network ban), the
report rendered from it and screenshotted in headless Chromium.

    .venv/bin/python scripts/screenshot_report.py [--html report.html] [--png docs/report.png]

Only documentation addresses (RFC 5737, RFC 3849); a fixed seed and a fixed "now", so that the
picture changes only when the report does. Needs Debian's chromium (setup.sh test installs it).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import chromium  # noqa: E402
from porttrap.model import Ban, Hit, Outcome, Proto, Unban, trap_reason  # noqa: E402
from porttrap.report import data, html  # noqa: E402
from porttrap.store.sqlite import SQLiteStore  # noqa: E402

NOW = datetime(2026, 11, 22, 9, 30, tzinfo=UTC).timestamp()
HOUR, DAY = 3600.0, 86400.0
LOCAL = ipaddress.ip_address("192.0.2.10")
LOCAL6 = ipaddress.ip_address("2001:db8::10")
DURATIONS = (1 * HOUR, 4 * HOUR, None)  # the default [ban]: 1h, quadratic, permanent at the 3rd


@dataclass
class Scanner:
    """One source: where it probes, how, and the bans it collected so far."""

    address: str
    ports: list[tuple[Proto, int]]
    kind: str
    burst: tuple[int, int]  # hits recorded per visit (before the kernel ban lands)
    kinds: list[str] = field(default_factory=list)  # a kind per visit, when they change
    bans: list[Ban] = field(default_factory=list)

    def banned(self, at: float) -> bool:
        return any(b.banned_at <= at and b.active(at) for b in self.bans)


def week(rng: random.Random) -> tuple[list[tuple[Hit, Outcome]], list[Ban], list[Unban]]:
    """Every hit, ban and unban of the demo week."""
    hits: list[tuple[Hit, Outcome]] = []
    scanners = _scanners(rng)
    for scanner, visits in scanners:
        for n, at in enumerate(sorted(visits)):
            if scanner.kinds:
                scanner.kind = scanner.kinds[n % len(scanner.kinds)]
            _visit(rng, scanner, at, hits)
    bans = [b for scanner, _ in scanners for b in scanner.bans]
    # An admin's network ban after an abuse report, and a ban lifted by hand as a mistake.
    network = ipaddress.ip_network("198.51.100.128/25")
    bans.append(Ban(network, NOW - 2 * DAY - 5 * HOUR, NOW + 28 * DAY, 1, "manual"))
    lifted = next(b for b in bans if str(b.target) == "203.0.113.9/32")
    unbans = [Unban(lifted.target, lifted.banned_at + 1300, "manual")]
    return hits, bans, unbans


def _scanners(rng: random.Random) -> list[tuple[Scanner, list[float]]]:
    start = NOW - 7 * DAY
    common = [23, 23, 23, 2323, 3389, 3389, 445, 5900, 1433, 8080, 6379, 3306, 5060]
    sweep = [21, 23, 25, 110, 135, 139, 445, 1433, 3306, 3389, 5432, 5900, 6379, 8080, 9200]
    made: list[tuple[Scanner, list[float]]] = []
    for i in range(6):  # a telnet botnet that comes back after every ban
        bot = Scanner(f"203.0.113.{70 + i * 7}", [(Proto.TCP, 23), (Proto.TCP, 2323)], "connect",
                      (2, 9))  # fmt: skip
        made.append((bot, _every(rng, start + rng.uniform(0, DAY), 5 * HOUR, 14 * HOUR)))
    syn = Scanner("198.51.100.23", [(Proto.TCP, p) for p in sweep], "syn", (14, 40))
    made.append((syn, [start + 1.4 * DAY, start + 3.6 * DAY, start + 5.2 * DAY]))
    stealth = [(Proto.TCP, p) for p in (23, 445, 3389, 5900)]
    six = Scanner("2001:db8:4:1::15", stealth, "fin", (4, 9), kinds=["fin", "null", "xmas"])
    made.append((six, [start + offset * DAY for offset in (2.2, 2.3, 4.8)]))
    udp = [(Proto.UDP, p) for p in (161, 1900, 5060, 11211)]
    made.append(
        (Scanner("198.51.100.140", udp, "udp", (3, 12)), [start + d * DAY for d in (0.7, 4.1)])
    )
    ack = Scanner("203.0.113.200", [(Proto.TCP, p) for p in (80, 443, 8443)], "ack", (3, 6))
    made.append((ack, [start + 6.1 * DAY]))
    rdp = Scanner("203.0.113.9", [(Proto.TCP, 3389)], "connect", (6, 12))
    made.append((rdp, [NOW - 2.9 * DAY, NOW - 2 * HOUR]))
    for n in range(90):  # background noise: one visit each
        net = "198.51.100" if n % 2 else "203.0.113"
        ports = [(Proto.TCP, rng.choice(common))]
        noise = Scanner(f"{net}.{150 + n}" if n < 50 else f"{net}.{n - 20}", ports,
                        rng.choice(["connect"] * 5 + ["syn"]), (1, 3))  # fmt: skip
        made.append((noise, [start + rng.uniform(0, 7 * DAY)]))
    return made


def _every(rng: random.Random, at: float, low: float, high: float) -> list[float]:
    visits = []
    while at < NOW:
        visits.append(at)
        at += rng.uniform(low, high)
    return visits


def _visit(
    rng: random.Random, scanner: Scanner, at: float, hits: list[tuple[Hit, Outcome]]
) -> None:
    if scanner.banned(at) or at >= NOW:
        return  # the kernel drops it: no trap sees anything
    address = ipaddress.ip_address(scanner.address)
    local = LOCAL6 if address.version == 6 else LOCAL
    count = rng.randint(*scanner.burst)
    confirm = 1 if scanner.kind == "connect" else 2  # [ban] confirm: forgeable probes need 2
    for n in range(count):
        proto, port = scanner.ports[n % len(scanner.ports)]
        hit = Hit(at + n * 0.05, address, rng.randint(32768, 60999), local, port, proto,
                  scanner.kind)  # fmt: skip
        if n + 1 < confirm:
            outcome = Outcome.COUNTED
        elif n + 1 == confirm:
            outcome = Outcome.BANNED
            length = DURATIONS[min(len(scanner.bans), len(DURATIONS) - 1)]
            scanner.bans.append(Ban(ipaddress.ip_network(address), hit.at,
                                    None if length is None else hit.at + length,
                                    len(scanner.bans) + 1, trap_reason(proto, port)))  # fmt: skip
        else:
            outcome = Outcome.ALREADY_BANNED
        hits.append((hit, outcome))


def build(database: Path) -> None:
    """A demo store at `database`, filled through the Store API."""
    hits, bans, unbans = week(random.Random(5))
    with SQLiteStore.open(database) as store:
        store.add_hits(sorted(hits, key=lambda pair: pair[0].at))
        store.add_bans(sorted(bans, key=lambda b: b.banned_at))
        store.lift(unbans)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, help="also keep the report's HTML here")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="porttrap-report-") as tmp:
        database = Path(tmp) / "porttrap.db"
        build(database)
        period = data.Period.of(NOW - 7 * DAY, NOW)
        with SQLiteStore.open(database, readonly=True) as store:
            found = data.collect(store, period, NOW, "gw1.example.net", top=12)
        page = Path(args.html or Path(tmp) / "report.html")
        page.write_text(html.render(found), encoding="utf-8")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        image = chromium.screenshot(page, args.png)
    print(f"wrote {args.png} ({image.width}x{image.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
