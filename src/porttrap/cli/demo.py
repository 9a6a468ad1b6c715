"""`porttrap demo`: the demo's story on the terminal, with elapsed times; colour on a tty."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from porttrap.clock import Clock, SystemClock
from porttrap.demo import plan
from porttrap.demo.run import Interrupted, run

DESCRIPTION = """\
Show porttrap at work, safely, on any Linux machine: the demo builds two network namespaces of
its own (a protected host and a scanner, joined by a veth pair, documentation addresses only),
runs the real daemon and a small TCP service in the first, and scans it from the second. It
tells each step as it happens, with the times it measured: a trap touched, the scanner banned
in the kernel within milliseconds, the service dropping it, the ban running out by itself,
a second ban four times as long, a third for good, and UDP probes over IPv6, where one
datagram is not enough to ban. It shows porttrap's own `status`, `bans` and `history`.

Nothing of this host's network is touched: every firewall and network command runs inside
the demo's namespaces. Everything the demo made (namespaces, processes, its temporary
directory) is removed at the end, also on Ctrl-C or SIGTERM; what an earlier demo left behind
because it was killed is removed before the next one starts. Two demos can run at once."""

EPILOG = """\
requirements: root; iproute2 (`ip`), nftables (`nft`) and python3-nftables:
  apt-get install iproute2 nftables python3-nftables

how long: about 30 s (bans of 4 s, then 16 s, then for good); with --quick about 15 s
(2 s, then 8 s).

exit status: 0 when every step did what it should; 1 when a step failed (the message says
which, followed by the daemon's last log lines) or this machine lacks something; 130 on
Ctrl-C and 143 on SIGTERM, after cleaning up.

examples, as root:
  porttrap demo                                      the whole story, about 30 s
  porttrap demo --quick --no-color | tee demo.txt    shorter, plain text, kept"""

_COLORS = {"section": "1;36", "good": "32", "bad": "1;31", "output": "2"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `demo` command."""
    parser = sub.add_parser(
        "demo",
        help="see porttrap ban a scanner, in throwaway network namespaces (root; ~30 s)",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument(
        "--quick", action="store_true", help="shorter bans (2 s, then 8 s): about 15 s in all"
    )
    parser.add_argument(
        "--no-color",
        action="store_true",
        help="plain text even on a terminal (colour is used only when stdout is a terminal "
        "and NO_COLOR is not set)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors"
    )
    parser.set_defaults(func=demo)


class Terminal:
    """The `Narrator` of a terminal: each line stamped with the seconds since the start."""

    def __init__(self, out: TextIO, color: bool, clock: Clock) -> None:
        self.out = out
        self.color = color
        self.clock = clock
        self.started = clock.monotonic()

    def section(self, title: str) -> None:
        self._line("", "")
        self._line("==", title, "section")

    def say(self, text: str) -> None:
        self._line("  ", text)

    def good(self, text: str) -> None:
        self._line("ok", text, "good")

    def bad(self, text: str) -> None:
        self._line("!!", text, "bad")

    def output(self, text: str) -> None:
        for line in text.splitlines():
            self._line("  ", f"  | {line}", "output")

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.started

    def _line(self, mark: str, text: str, style: str | None = None) -> None:
        line = f"[{self.elapsed():5.1f}s] {mark} {text}".rstrip() if text else ""
        if self.color and style and line:
            line = f"\033[{_COLORS[style]}m{line}\033[0m"
        print(line, file=self.out, flush=True)


def use_color(args: argparse.Namespace, out: TextIO) -> bool:
    return out.isatty() and not args.no_color and not os.environ.get("NO_COLOR")


def demo(args: argparse.Namespace) -> int:
    say = Terminal(sys.stdout, use_color(args, sys.stdout), SystemClock())
    try:
        run(plan.QUICK if args.quick else plan.DEFAULT, say, SystemClock())
    except Interrupted as err:
        say.bad(f"interrupted by {err}: the demo stopped early")
        return 128 + err.signum
    say.good(f"demo done in {say.elapsed():.1f} s")
    return 0
