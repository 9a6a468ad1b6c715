"""`porttrap top` driven in tmux against the real daemon in a network namespace: real scans
show up in the view (source, port, hits per second, ban), it survives resizes and the daemon
going away, and q or Ctrl-C end it with status 0."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from daemon_env import ALLOWED, ATK4, PORTTRAP, SRV4, SRV_CLI, Env, tcp_works
from tmux import Tmux

from waiting import PATIENCE

pytestmark = pytest.mark.kernel

CONFIG = """
[traps]
tcp = ["2323"]
udp = []
[allow]
addresses = ["198.51.100.3"]
[ban]
time = "1h"
"""
NOW_RATE = re.compile(r"now (\S+)/s")
# top draws block characters in a UTF-8 locale and ASCII in any other: the tests say which
# (else they would see what the caller's LANG or LC_ALL gives).
UTF8 = {"LC_ALL": "C.UTF-8"}


def top_argv(env: Env, *extra: str) -> list[str]:
    return ["ip", "netns", "exec", env.srv.name, *PORTTRAP, "top", "-c", str(env.config), *extra]


def hits_until_rate_shows(env: Env, tmux: Tmux, timeout: float) -> str:
    """Touch the trap from the allow-listed client (counted, never banned) every 0.1 s until
    the view's 'now' rate is above zero; the screen then."""

    def rate_shown(screen: str) -> bool:
        tcp_works(env.cli, ALLOWED, SRV_CLI, 2323)
        found = NOW_RATE.search(screen)
        return found is not None and found.group(1) not in ("0", "-")

    return tmux.wait_until(rate_shown, timeout, "hits per second shown")


def rows(screen: str, title: str) -> list[str]:
    """The lines under a section `title` (its column heads first), up to a blank line."""
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if title in line)
    block = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        block.append(line)
    return block


def side_by_side(screen: str) -> bool:
    lines = screen.splitlines()
    return (
        len(lines) == 40
        and lines[39].startswith(" q quits")
        and any(re.fullmatch(r" TRAP PORTS +TOP SOURCES", line) for line in lines)
    )


def test_top_shows_a_scan_live_survives_resizes_and_outages_and_quits_with_q(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(CONFIG)
    env.start()
    with Tmux() as tmux:
        tmux.start(top_argv(env), 120, 40, UTF8)
        tmux.wait_for(["porttrap ", "backend nftables", "1 trap port  |", "q quits"], PATIENCE)

        assert tcp_works(env.atk, ATK4, SRV4, 2323)  # a scanner touches the trap: banned
        screen = hits_until_rate_shows(env, tmux, PATIENCE)
        screen = tmux.wait_for([ATK4, "RECENT BANS", "trap:tcp/2323"], PATIENCE)
        assert re.search(r"\[\s*[▁▂▃▄▅▆▇█][ ▁▂▃▄▅▆▇█]*\]", screen), screen  # the sparkline
        assert any(
            re.match(rf"\s*{re.escape(ATK4)}\s+1\s+tcp/2323\s+\d+s ago\s+(59m\S*|1h) left", line)
            for line in screen.splitlines()
        ), screen  # the scanner: one hit, its port, seconds ago, banned for about an hour
        assert any(
            re.search(rf"ago\s+{re.escape(ATK4)}\s+#1\s+1h\s+in (59m\S*|1h)\s+trap:tcp/2323$", line)
            for line in rows(screen, "RECENT BANS")
        ), screen
        assert any(re.match(r"\s*tcp/2323\s+\d+\s+100%", line) for line in screen.splitlines())
        assert len(screen.splitlines()) == 40

        tmux.resize(60, 16)  # narrower: the tables stack, the sources first
        screen = tmux.wait_until(lambda s: " TOP SOURCES" in s.splitlines(), PATIENCE, "stacked")
        lines = screen.splitlines()
        assert len(lines) == 16 and lines[-1] == " q quits, refreshes every 1s", screen
        assert lines[0].startswith(" porttrap ") and lines[0].endswith(" UTC"), screen
        assert lines.index(" TOP SOURCES") < lines.index(" TRAP PORTS"), screen
        assert ATK4 in "\n".join(rows(screen, "TOP SOURCES")), screen
        tmux.resize(12, 3)  # far too small: cut, never a crash
        tiny = [" porttrap 0.", " hits 11   n", " q quits, r"]
        tmux.wait_until(lambda s: s.splitlines()[::2] == tiny[::2], PATIENCE, f"{tiny} at 12x3")
        tmux.resize(120, 40)
        tmux.wait_until(side_by_side, PATIENCE, "ports and sources side by side at 120x40")

        env.stop()  # the daemon goes away: the view says so and keeps the last numbers
        screen = tmux.wait_for(["not answering, retrying every 1s", ATK4], PATIENCE)
        env.start()  # and comes back: a fresh start, its bans restored from the database
        screen = tmux.wait_gone("not answering", PATIENCE)
        assert ATK4 in "\n".join(rows(screen, "RECENT BANS")), screen

        assert not tmux.status_file.exists()  # still running
        tmux.keys("q")
        assert tmux.exit_status() == 0
        assert "TOP SOURCES" not in tmux.screen()  # curses left its screen: terminal restored


def test_a_c_locale_gets_ascii_bars_and_sparkline(env_factory: Callable[[str], Env]) -> None:
    """In the C locale curses cannot write block characters (they came out blank)."""
    env = env_factory(CONFIG)
    env.start()
    with Tmux() as tmux:
        tmux.start(top_argv(env), 120, 40, {"LC_ALL": "C"})
        screen = hits_until_rate_shows(env, tmux, PATIENCE)
        assert re.search(r"\[ *[.:=+*#@-][ .:=+*#@-]*\]", screen), screen  # the sparkline
        assert re.search(r"tcp/2323\s+\d+\s+100%\s+#+", screen), screen  # its bar
        assert not re.search("[\u2580-\u259f]", screen), screen  # no block character
        tmux.keys("q")
        assert tmux.exit_status() == 0


def test_ctrl_c_quits_top_cleanly(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(CONFIG)
    env.start()
    with Tmux() as tmux:
        tmux.start(top_argv(env, "-n", "0.5"), 100, 30)
        tmux.wait_for(["TOP SOURCES", "refreshes every 0.5s"], PATIENCE)
        tmux.keys("C-c")
        assert tmux.exit_status() == 0


def test_once_prints_one_plain_frame_with_the_scan(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(CONFIG)
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    env.recorded_bans(1)  # the daemon has seen the hit
    out = env.porttrap("top", "--once", "-n", "0.2").stdout  # stdout is a pipe: plain text
    assert "\x1b" not in out
    assert re.search(rf"{re.escape(ATK4)}\s+1\s+tcp/2323\s+\d+s ago\s+\S+ left", out), out
    assert "q quits" not in out
