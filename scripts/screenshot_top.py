"""Make docs/top.png, the picture of `porttrap top`: the real daemon in a network
namespace, a minute of scans from another one (fresh addresses probing telnet, RDP, SMB, VNC
... over TCP, some several ports at once, SNMP and SIP over UDP, a botnet burst on telnet, the
admin's own allow-listed scanner, two returning scanners whose earlier bans the database
holds: the second ban is longer, the third permanent; a network banned by hand), `porttrap
top` running in tmux all along; its screen, colours included, is turned into HTML and
screenshotted in headless Chromium.

    .venv/bin/python scripts/screenshot_top.py [--png docs/top.png] [--html top.html]

Run it as root: it builds two network namespaces (documentation addresses only: RFC 5737,
RFC 3849) and removes them at the end, whatever happens; nothing touches this host's own
network. Takes about 80 seconds. Needs tmux and Debian's chromium (setup.sh test installs them).
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import math
import random
import re
import socket
import subprocess  # noqa: TID251 - a script: runs the CLI, like a person would
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from daemon_env import PORTTRAP, open_socket, tcp_works, udp_send, wait_until  # noqa: E402
from PIL import Image, ImageChops  # noqa: E402
from tmux import Tmux  # noqa: E402

import chromium  # noqa: E402
from netns import Netns  # noqa: E402
from porttrap.clock import SystemClock  # noqa: E402
from porttrap.model import Ban  # noqa: E402
from porttrap.store.sqlite import SQLiteStore  # noqa: E402

WIDTH, HEIGHT = 120, 38  # the terminal
SECONDS = 64  # of scans: the sparkline shows the last 60
HOST4, HOST6 = "192.0.2.1", "2001:db8::1"
ADMIN_SCANNER = "198.51.100.250"  # allow-listed: counted, never banned
TCP_PORTS = [23, 23, 23, 2323, 2323, 3389, 3389, 445, 445, 5900, 1433, 6379, 21, 8081]
UDP_PORTS = [161, 161, 1900, 5060]
CONFIG = f"""
[traps]
tcp = ["21", "23", "445", "1433", "2323", "3389", "5900", "6379", "8081"]
udp = ["161", "1900", "5060"]
[allow]
addresses = ["{ADMIN_SCANNER}"]
[ban]
time = "1h"
"""


# -- the network -------------------------------------------------------------------------


@dataclass
class Lab:
    host: Netns
    scanner: Netns
    config: Path
    daemon: subprocess.Popen[str] | None = None

    def porttrap(self, *args: str) -> str:
        argv = ["ip", "netns", "exec", self.host.name, *PORTTRAP, *args, "-c", str(self.config)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"porttrap {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


@contextmanager
def lab(tmp: Path) -> Iterator[Lab]:
    """The host namespace (porttrap) and the scanner's, joined by a veth pair. The scanner
    owns every address of 203.0.113.0/24 and 198.51.100.0/24, and a few of 2001:db8::/64."""
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns.create("pt-shot-"))
        return made[-1]

    try:
        host, scanner = make(), make()
        here, there = host.veth(scanner, [f"{HOST4}/24", f"{HOST6}/64"],
                                ["192.0.2.2/24", "2001:db8::2/64"])  # fmt: skip
        batch = tmp / "addresses.batch"
        lines = [f"address add {net}.{n}/32 dev {there}" for net in ("203.0.113", "198.51.100")
                 for n in range(1, 255)]  # fmt: skip
        lines += [f"address add 2001:db8::a:{n:x}/64 dev {there} nodad" for n in range(1, 40)]
        batch.write_text("\n".join(lines) + "\n")
        scanner.run(["ip", "-batch", str(batch)], timeout=60)
        for net in ("203.0.113.0/24", "198.51.100.0/24"):
            host.run(["ip", "route", "add", net, "dev", here])
        config = tmp / "porttrap.toml"
        config.write_text(f'state_dir = "{tmp / "state"}"\n{CONFIG}')
        yield Lab(host, scanner, config)
    finally:
        for netns in reversed(made):
            netns.delete()  # kills the daemon (by PID) first


def returning_scanners(state: Path) -> None:
    """Earlier bans, as if porttrap had run for days: 203.0.113.7 was banned once, three days
    ago (its next ban is #2: 4 h); 198.51.100.66 twice (its next is #3: permanent)."""
    now, day, hour = SystemClock().now(), 86400.0, 3600.0
    earlier = [("203.0.113.7", 3 * day, 1, 1 * hour, "trap:tcp/3389"),
               ("198.51.100.66", 9 * day, 1, 1 * hour, "trap:tcp/23"),
               ("198.51.100.66", 4 * day, 2, 4 * hour, "trap:tcp/2323")]  # fmt: skip
    state.mkdir(parents=True, exist_ok=True)
    with SQLiteStore.open(state / "porttrap.db") as store:
        store.add_bans([
            Ban(ipaddress.ip_network(address), now - ago, now - ago + length, count, reason)
            for address, ago, count, length, reason in earlier
        ])  # fmt: skip


def start_daemon(lab: Lab, log: Path) -> None:
    with log.open("w") as out:
        lab.daemon = subprocess.Popen(
            ["ip", "netns", "exec", lab.host.name, *PORTTRAP, "run", "-c", str(lab.config)],
            stdout=out, stderr=out, text=True,
        )  # fmt: skip
    lab.host.processes.append(lab.daemon)

    def answers() -> bool:
        if lab.daemon is not None and lab.daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited:\n{log.read_text()}")
        try:
            lab.porttrap("status")
        except RuntimeError:
            return False
        return True

    wait_until(answers, 20, "the daemon answers")


# -- the scans ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    at: float  # seconds after the start
    run: Callable[[Lab], object]
    what: str


def tcp(address: str, port: int) -> Callable[[Lab], object]:
    host = HOST6 if ":" in address else HOST4
    return lambda lab: tcp_works(lab.scanner, address, host, port, timeout=0.5)


def sweep(address: str, ports: list[int]) -> Callable[[Lab], object]:
    """Connections to several ports at once, as a scanner's first probes come: those the
    kernel accepts before the ban lands are all hits."""

    def run(lab: Lab) -> None:
        sockets = [open_socket(lab.scanner, address, socket.SOCK_STREAM) for _ in ports]
        try:
            for sock, port in zip(sockets, ports, strict=True):
                sock.setblocking(False)
                sock.connect_ex((HOST4, port))
            time.sleep(0.2)
        finally:
            for sock in sockets:
                sock.close()

    return run


def udp(address: str, port: int) -> Callable[[Lab], object]:
    def send(lab: Lab) -> None:  # two datagrams: [ban] confirm = 2 for forgeable probes
        for _ in range(2):
            udp_send(lab.scanner, address, HOST4, port)
            time.sleep(0.05)

    return send


def by_hand(*args: str) -> Callable[[Lab], object]:
    return lambda lab: lab.porttrap(*args)


def addresses(rng: random.Random) -> Iterator[str]:
    """Fresh scanner addresses, in a shuffled order; a few IPv6 ones among them."""
    special = {"198.51.100.66"}  # a returning scanner: it comes at the end
    pool = [f"{net}.{n}" for net in ("203.0.113", "198.51.100") for n in range(20, 250)
            if f"{net}.{n}" not in special]  # fmt: skip
    rng.shuffle(pool)
    six = iter(f"2001:db8::a:{n:x}" for n in range(1, 40))
    for n, address in enumerate(pool):
        yield next(six) if n % 9 == 4 else address


def plan(rng: random.Random) -> list[Probe]:
    """A minute of scans: a wavy background, a botnet burst on telnet, the admin's scanner
    every few seconds, and at the end the bans an admin makes by hand."""
    fresh = addresses(rng)
    probes = []
    for second in range(SECONDS):
        rate = 1.0 + 4.0 * math.sin(second / 5.0 + 1.0) ** 2 + (6 if 36 <= second < 41 else 0)
        for _ in range(round(rate * rng.uniform(0.6, 1.4))):
            at = second + rng.random()
            address = next(fresh)
            roll = rng.random()
            if roll < 0.15 and ":" not in address:
                port = rng.choice(UDP_PORTS)
                probes.append(Probe(at, udp(address, port), f"udp {address} {port}"))
            elif roll < 0.27 and ":" not in address:
                ports = rng.sample(sorted(set(TCP_PORTS)), rng.randint(2, 6))
                probes.append(Probe(at, sweep(address, ports), f"sweep {address} {ports}"))
            else:
                ports = [23, 2323] if 36 <= second < 41 else TCP_PORTS
                port = rng.choice(ports)
                probes.append(Probe(at, tcp(address, port), f"tcp {address} {port}"))
        if second % 4 == 1:
            port = rng.choice([21, 445, 3389, 8081])
            probes.append(Probe(second + 0.5, tcp(ADMIN_SCANNER, port), "the admin's scanner"))
    end = SECONDS - 4  # while the background goes on
    probes += [
        Probe(end + 0.5, by_hand("ban", "198.51.100.0/28", "--for", "1d"), "network by hand"),
        Probe(end + 1.5, sweep("198.51.100.66", [23, 2323, 445]), "back again: ban #3"),
        Probe(end + 2.5, tcp("203.0.113.7", 3389), "back: ban #2"),
        Probe(end + 3.0, tcp("2001:db8::a:27", 23), "an IPv6 scanner"),
        Probe(end + 3.3, sweep("203.0.113.251", [445, 1433, 3389, 5900]), "a sweep"),
        Probe(end + 3.6, udp("203.0.113.250", 161), "SNMP"),
    ]
    return sorted(probes, key=lambda p: p.at)


def scan(lab: Lab, probes: list[Probe]) -> None:
    start = time.monotonic()  # noqa: TID251 - a script's pacing
    for probe in probes:
        delay = probe.at - (time.monotonic() - start)  # noqa: TID251
        if delay > 0:
            time.sleep(delay)
        probe.run(lab)


# -- the picture -------------------------------------------------------------------------

# Tango-like colours on a dark background: 0-7 normal, 8-15 bright.
PALETTE = ["#2e3436", "#ef5350", "#8ae234", "#fce94f", "#3b7dd8", "#d77ee0", "#34e2e2",
           "#d3d7cf", "#555753", "#ff6e6e", "#a6f26a", "#fff176", "#729fcf", "#e9a0f0",
           "#8ff0f0", "#eeeeec"]  # fmt: skip
FOREGROUND, BACKGROUND = "#d8dee4", "#1b1f24"
SGR = re.compile(r"\x1b\[([0-9;]*)m")
OTHER_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-ln-z]|[()][0-9A-Za-z]|[=>])")


@dataclass(frozen=True)
class Pen:
    fg: str | None = None
    bg: str | None = None
    bold: bool = False
    dim: bool = False
    reverse: bool = False
    underline: bool = False


def _colour(code: int) -> str:
    if code < 16:
        return PALETTE[code]
    if code < 232:
        r, g, b = ((code - 16) // 36, (code - 16) // 6 % 6, (code - 16) % 6)
        return "#" + "".join(f"{0 if c == 0 else 55 + c * 40:02x}" for c in (r, g, b))
    grey = 8 + (code - 232) * 10
    return f"#{grey:02x}{grey:02x}{grey:02x}"


def sgr(pen: Pen, params: str) -> Pen:  # noqa: PLR0912 - one branch per SGR code
    """`pen` after one Select Graphic Rendition sequence."""
    codes = [int(c) if c else 0 for c in params.split(";")] if params else [0]
    i = 0
    while i < len(codes):
        c = codes[i]
        if c == 0:
            pen = Pen()
        elif c == 1:
            pen = replace(pen, bold=True)
        elif c == 2:
            pen = replace(pen, dim=True)
        elif c == 4:
            pen = replace(pen, underline=True)
        elif c == 7:
            pen = replace(pen, reverse=True)
        elif c == 22:
            pen = replace(pen, bold=False, dim=False)
        elif c == 24:
            pen = replace(pen, underline=False)
        elif c == 27:
            pen = replace(pen, reverse=False)
        elif 30 <= c <= 37 or 90 <= c <= 97:
            pen = replace(pen, fg=PALETTE[c - 30 if c < 90 else c - 82])
        elif 40 <= c <= 47 or 100 <= c <= 107:
            pen = replace(pen, bg=PALETTE[c - 40 if c < 100 else c - 92])
        elif c == 39:
            pen = replace(pen, fg=None)
        elif c == 49:
            pen = replace(pen, bg=None)
        elif c in (38, 48) and i + 2 < len(codes) and codes[i + 1] == 5:
            colour = _colour(codes[i + 2])
            pen = replace(pen, fg=colour) if c == 38 else replace(pen, bg=colour)
            i += 2
        i += 1
    return pen


def _style(pen: Pen) -> str:
    fg, bg = pen.fg or FOREGROUND, pen.bg or BACKGROUND
    if pen.reverse:
        fg, bg = bg, fg
    rules = [f"color:{fg}"]
    if bg != BACKGROUND:
        rules.append(f"background:{bg}")
    if pen.bold:
        rules.append("font-weight:bold")
    if pen.dim:
        rules.append("opacity:0.62")
    if pen.underline:
        rules.append("text-decoration:underline")
    return ";".join(rules)


def ansi_html(screen: str) -> str:
    """tmux's `capture-pane -e` text as HTML spans, one line per row."""
    pen, rows = Pen(), []
    for row in screen.split("\n"):
        line = OTHER_ESCAPES.sub("", row)
        out, pos = [], 0
        for match in [*SGR.finditer(line), None]:
            end = match.start() if match else len(line)
            if end > pos:
                text = html.escape(line[pos:end])
                out.append(f'<span style="{_style(pen)}">{text}</span>' if pen != Pen() else text)
            if match:
                pen, pos = sgr(pen, match.group(1)), match.end()
        rows.append("".join(out))
    return "\n".join(rows)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>porttrap top</title><style>
body {{ margin: 0; padding: 24px; background: #e9edf1; }}
.window {{ display: inline-block; border-radius: 10px; overflow: hidden;
          box-shadow: 0 10px 30px rgba(0,0,0,.28); background: {background}; }}
.bar {{ height: 30px; background: #2d333b; position: relative;
       font: 13px "DejaVu Sans", sans-serif; color: #9aa4ae; text-align: center;
       line-height: 30px; }}
.dot {{ position: absolute; top: 10px; width: 12px; height: 12px; border-radius: 50%; }}
pre {{ margin: 0; padding: 12px 14px 14px; color: {foreground};
      font: 14px/1.25 "DejaVu Sans Mono", monospace; }}
</style></head><body><div class="window"><div class="bar">
<span class="dot" style="left:12px;background:#ff5f57"></span>
<span class="dot" style="left:32px;background:#febc2e"></span>
<span class="dot" style="left:52px;background:#28c840"></span>
root@gw1: porttrap top</div><pre>{screen}</pre></div></body></html>
"""


def framed(image: Image.Image, margin: int = 24) -> Image.Image:
    """`image` cut to the window and its shadow, `margin` pixels around."""
    background = image.getpixel((image.width - 1, image.height - 1))
    plain = Image.new("RGB", image.size, background)
    box = ImageChops.difference(image, plain).point(lambda v: 255 if v > 6 else 0).getbbox()
    if box is None:
        return image
    left, top, right, bottom = box
    return image.crop(
        (
            max(0, left - margin),
            max(0, top - margin),
            min(image.width, right + margin),
            min(image.height, bottom + margin),
        )
    )


def page(screen: str) -> str:
    return PAGE.format(screen=ansi_html(screen.rstrip("\n")), background=BACKGROUND,
                       foreground=FOREGROUND)  # fmt: skip


# -- the whole -------------------------------------------------------------------------


def capture(tmp: Path, seed: int) -> str:
    """Run the scans with top watching; top's screen at the end, with its colours."""
    with lab(tmp) as net, Tmux() as tmux:
        returning_scanners(tmp / "state")
        start_daemon(net, tmp / "daemon.log")
        argv = ["ip", "netns", "exec", net.host.name, *PORTTRAP, "top", "-c", str(net.config)]
        tmux.start(argv, WIDTH, HEIGHT)
        tmux.wait_for("TOP SOURCES", 20)
        scan(net, plan(random.Random(seed)))
        time.sleep(0.5)  # the last probes reach the view, still busy
        screen = tmux.screen(colours=True)
        tmux.keys("q")
        if tmux.exit_status(5) != 0:
            raise RuntimeError(f"porttrap top did not quit cleanly:\n{tmux.screen()}")
        if net.daemon is not None:
            net.daemon.terminate()
            net.daemon.wait(timeout=20)
    return screen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "top.png")
    parser.add_argument("--html", type=Path, help="also keep the page here")
    parser.add_argument("--seed", type=int, default=5, help="of the scans' randomness")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="porttrap-top-") as tmp:
        screen = capture(Path(tmp), args.seed)
        target = Path(args.html or Path(tmp) / "top.html")
        target.write_text(page(screen), encoding="utf-8")
        args.png.parent.mkdir(parents=True, exist_ok=True)
        image = framed(chromium.screenshot(target, args.png, width=1200, height=1000))
        image.save(args.png, optimize=True)
    print(f"wrote {args.png} ({image.width}x{image.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
