"""`porttrap top`: the running daemon's hits per second, top trap ports, top sources and recent
bans, refreshed in place with curses until q; or one plain-text frame (`--once`, or when
stdout is not a terminal). What is shown is `topdata`'s, how it is laid out `topview`'s; this
module reads the daemon and draws."""

from __future__ import annotations

import argparse
import contextlib
import curses
import locale
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from porttrap.cli import topdata, topview
from porttrap.cli.commands import EXIT_NOT_RUNNING
from porttrap.cli.topdata import Snapshot, Watch
from porttrap.cli.topview import Line, Style
from porttrap.clock import Clock, SystemClock
from porttrap.config import loader as config_mod
from porttrap.daemon import control
from porttrap.errors import DaemonNotRunning, PorttrapError

Common = Callable[[argparse.ArgumentParser], None]
ONCE_ROWS = 10  # rows of each table in --once
MAX_ROWS = 100  # the daemon answers at most this many
MIN_INTERVAL, MAX_INTERVAL = 0.2, 3600.0
QUIT_KEYS = frozenset({ord("q"), ord("Q"), 27})  # 27: Escape
REQUEST_TIMEOUT = 5.0  # seconds; a daemon busy applying bans can take a second to answer
KEY_WAIT_MS = 100  # how often the view looks for a new reading, when no key comes

DESCRIPTION = """\
A live view of the running daemon, refreshed in place: hits per second (now, over the last
minute, and a sparkline of the last 60 seconds), the most hit trap ports, the busiest
sources with the port they last touched and their ban, and the newest bans. Counts are
since the daemon started. q (or Ctrl-C) quits.

It asks the daemon through state_dir/control.sock (root only), so it needs a running
daemon: without one it says so and exits 3, as `porttrap status` does. When the daemon
stops answering while top runs, the view says so and keeps retrying.

With --once, or when stdout is not a terminal, it prints one plain-text frame instead:
two readings INTERVAL apart (for the hits per second), ten rows of each table."""

EPILOG = """\
keys:
  q, Q, Esc    quit
  space        refresh now

examples:
  porttrap top                       refresh every second
  porttrap top -n 5                  every 5 seconds
  porttrap top -c /etc/porttrap/test.toml
  porttrap top --once | mail -s "porttrap on $(hostname)" root"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Common) -> None:
    """The `top` command."""
    text = "live view: hits per second, top trap ports, top sources, recent bans (q quits)"
    parser = sub.add_parser(
        "top",
        help=text,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    common(parser)
    parser.add_argument(
        "-n",
        "--interval",
        type=_interval,
        default=1.0,
        metavar="SECONDS",
        help=f"seconds between refreshes (default 1; {MIN_INTERVAL:g} to {MAX_INTERVAL:g})",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one plain-text frame and exit (the default when stdout is not a terminal)",
    )
    parser.set_defaults(func=top)


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not MIN_INTERVAL <= seconds <= MAX_INTERVAL:  # NaN is refused too
        raise argparse.ArgumentTypeError(
            f"{text!r}: give {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds"
        )
    return seconds


def top(args: argparse.Namespace) -> int:
    clock = SystemClock()
    reader = Reader(config_mod.load(args.config).control_socket, clock)
    watch = Watch()
    try:
        watch.answered(*reader.read(ONCE_ROWS))
    except DaemonNotRunning as err:
        print(f"porttrap: error: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if args.once or not sys.stdout.isatty():
        return _once(reader, watch, clock, args.interval)
    with contextlib.suppress(locale.Error):
        locale.setlocale(locale.LC_CTYPE, "")  # so that curses writes UTF-8 (the sparkline)
    poller = Poller(reader, watch, args.interval)
    try:
        with _terminated_as_interrupt():
            poller.start()
            curses.wrapper(_live, poller, clock)
    except KeyboardInterrupt:
        pass  # Ctrl-C quits like q; curses.wrapper has restored the terminal
    except curses.error as err:
        raise PorttrapError(
            f"cannot drive this terminal ({err}): check TERM, or use --once"
        ) from err
    finally:
        poller.stop()
    return 0


@dataclass
class Reader:
    """Reads the daemon's `status` and `top` answers as a `Snapshot`."""

    socket: Path
    clock: Clock
    timeout: float = REQUEST_TIMEOUT

    def read(self, rows: int) -> tuple[float, Snapshot]:
        """When (the reader's monotonic clock: the middle of the `top` request) and what."""
        status = control.request(self.socket, {"cmd": "status"}, timeout=self.timeout)
        sent = self.clock.monotonic()
        answer = control.request(self.socket, {"cmd": "top", "limit": rows}, self.timeout)
        at = (sent + self.clock.monotonic()) / 2
        try:
            return at, topdata.parse(status, answer)
        except ValueError as err:
            raise PorttrapError(
                f"{self.socket}: {err}: is the daemon another version of porttrap? "
                "Restart it after an upgrade"
            ) from err


class Poller:
    """Reads the daemon every `interval` seconds on a thread of its own, into `watch` (under
    `lock`), so that the view answers keys at once however slowly the daemon answers. A
    daemon that does not answer is noted in `watch`, and asked again at the next interval."""

    def __init__(self, reader: Reader, watch: Watch, interval: float) -> None:
        self.reader, self.watch, self.interval = reader, watch, interval
        self.lock = threading.Lock()
        self.readings = 0  # grows with each reading, answered or not
        self.rows = ONCE_ROWS  # how many rows of each table the screen has room for
        self._wake = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="porttrap-top", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Without waiting: a request under way ends within its timeout, unheeded."""
        self._stopped = True
        self._wake.set()

    def refresh(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        clock = self.reader.clock
        due = clock.monotonic() + self.interval  # the first reading was made before
        while True:
            self._wake.wait(max(0.0, due - clock.monotonic()))
            self._wake.clear()
            if self._stopped:
                return
            due = clock.monotonic() + self.interval  # a slow answer delays no later reading
            self._read(clock)

    def _read(self, clock: Clock) -> None:
        try:
            at, snapshot = self.reader.read(self.rows)
        except (PorttrapError, OSError, ValueError) as err:  # ValueError: not JSON
            with self.lock:
                self.watch.failed(clock.monotonic(), str(err) or type(err).__name__)
                self.readings += 1
        else:
            with self.lock:
                self.watch.answered(at, snapshot)
                self.readings += 1


def _once(reader: Reader, watch: Watch, clock: Clock, interval: float) -> int:
    time.sleep(interval)
    try:
        watch.answered(*reader.read(ONCE_ROWS))
    except DaemonNotRunning as err:
        print(f"porttrap: error: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    width = shutil.get_terminal_size((120, 40)).columns
    view = watch.view(clock.monotonic(), interval)
    lines = topview.render(view, width, None, unicode=_unicode(sys.stdout.encoding))
    print("\n".join(topview.plain(lines)))
    return 0


def _unicode(encoding: str | None) -> bool:
    return (encoding or "").lower().replace("-", "") == "utf8"


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM quits like Ctrl-C, so that the terminal is restored."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- the terminal ------------------------------------------------------------------------


def _live(screen: curses.window, poller: Poller, clock: Clock) -> None:
    """Draw after each reading, each key and each resize (and every second, for the times
    shown), until q."""
    styles = _styles()
    # What curses writes in: the C library's codeset. Not Python's preferred encoding, which
    # is UTF-8 in a C locale too (Python's UTF-8 mode), where block characters come out blank.
    unicode = _unicode(locale.nl_langinfo(locale.CODESET))
    with contextlib.suppress(curses.error):
        curses.curs_set(0)
        curses.set_escdelay(25)  # Esc quits at once, not after ncurses' default second
    screen.timeout(KEY_WAIT_MS)
    drawn, drawn_at, key = -1, 0.0, -1
    while key not in QUIT_KEYS:
        resized = _follow_resize(screen) or key == curses.KEY_RESIZE
        if resized:
            screen.clear()  # repaint all of it, not only what changed since the last frame
        height, width = screen.getmaxyx()
        poller.rows = min(MAX_ROWS, max(ONCE_ROWS, height))
        now = clock.monotonic()
        if resized or key != -1 or poller.readings != drawn or now - drawn_at >= 1.0:
            with poller.lock:
                drawn, view = poller.readings, poller.watch.view(now, poller.interval)
            _draw(screen, topview.render(view, width, height, unicode), styles)
            drawn_at = now
        key = screen.getch()
        if key == ord(" "):
            poller.refresh()


def _follow_resize(screen: curses.window) -> bool:
    """Take the terminal's size now; whether it changed. curses learns of a resize from
    SIGWINCH, and misses one that comes while it handles another (a window dragged, or
    resized twice quickly)."""
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1)
    except OSError:
        return False
    if (size.lines, size.columns) == screen.getmaxyx():
        return False
    curses.resizeterm(size.lines, size.columns)
    return True


def _draw(screen: curses.window, lines: list[Line], styles: dict[Style, int]) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(lines[:height]):
        x = 0
        for segment in line:
            # Writing the bottom-right cell moves the cursor off the screen: curses raises.
            room = width - x - (1 if y == height - 1 else 0)
            if room <= 0:
                break
            with contextlib.suppress(curses.error):
                screen.addnstr(y, x, segment.text, room, styles[segment.style])
            x += len(segment.text)
    screen.refresh()


def _styles() -> dict[Style, int]:
    """curses attributes for each style: colours when the terminal has them."""
    colour = dict.fromkeys(Style, curses.A_NORMAL)
    if curses.has_colors():
        curses.start_color()
        with contextlib.suppress(curses.error):
            curses.use_default_colors()  # -1: the terminal's own background
        pairs = {Style.BAR: curses.COLOR_CYAN, Style.HOT: curses.COLOR_YELLOW,
                 Style.BANNED: curses.COLOR_RED, Style.PERMANENT: curses.COLOR_MAGENTA,
                 Style.WARN: curses.COLOR_RED}  # fmt: skip
        for number, (style, fg) in enumerate(pairs.items(), start=1):
            with contextlib.suppress(curses.error):
                curses.init_pair(number, fg, -1)
                colour[style] = curses.color_pair(number)
        with contextlib.suppress(curses.error):
            curses.init_pair(len(pairs) + 1, curses.COLOR_WHITE, curses.COLOR_BLUE)
            colour[Style.TITLE] = curses.color_pair(len(pairs) + 1)
    if colour[Style.TITLE] == curses.A_NORMAL:
        colour[Style.TITLE] = curses.A_REVERSE
    colour[Style.TITLE] |= curses.A_BOLD
    colour[Style.HEAD] |= curses.A_BOLD
    colour[Style.DIM] |= curses.A_DIM
    colour[Style.HOT] |= curses.A_BOLD
    colour[Style.PERMANENT] |= curses.A_BOLD
    colour[Style.WARN] |= curses.A_BOLD | curses.A_REVERSE
    return colour
