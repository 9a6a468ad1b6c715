"""`porttrap top`'s layout without a terminal: the daemon's answers in, exact lines out; rates
from successive readings; every size fits; the CLI's exits without a daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porttrap.cli import topdata, topview
from porttrap.cli.main import main
from porttrap.cli.topdata import Rates, Snapshot, View, Watch
from porttrap.cli.topview import Style, plain, render
from porttrap.log import iso

T = 1_800_000_000.0  # 2027-01-15T08:00:00Z
TCP23_V4 = {"proto": "tcp", "port": 23, "address": "0.0.0.0"}
TCP23_V6 = {"proto": "tcp", "port": 23, "address": "::"}
TCP2323 = {"proto": "tcp", "port": 2323, "address": "::"}
UDP161 = {"proto": "udp", "port": 161, "address": "::"}
STATUS = {"version": "0.1.0", "pid": 4242, "backend": "nftables",
          "traps": {"set": [TCP23_V4, TCP23_V6, TCP2323, UDP161], "skipped": []}}  # fmt: skip


def ban(address: str, at: float, until: float | None, count: int, reason: str) -> dict[str, Any]:
    return {"address": address, "banned_at": iso(at), "expires_at": iso(until),
            "permanent": until is None, "ban_count": count, "reason": reason}  # fmt: skip


def source(address: str, hits: int, seen: float, last: str, banned: Any) -> dict[str, Any]:
    proto, port = last.split("/")
    return {"address": address, "hits": hits, "last_seen": iso(seen), "last_port": int(port),
            "last_proto": proto, "banned": banned}  # fmt: skip


V4_BAN = ban("192.0.2.66", T - 60, T + 3540, 1, "trap:tcp/23")
V6_BAN = ban("2001:db8::66", T - 80, None, 3, "trap:udp/161")
TOP = {
    "now": iso(T),
    "started_at": iso(T - 3725),
    "hits": {"total": 1234, "banned": 3, "already-banned": 1231},
    "bans": {"active": 2, "permanent": 1, "made": {"temporary": 4, "permanent": 1}},
    "ports": [
        {"proto": "tcp", "port": 23, "hits": 800},
        {"proto": "tcp", "port": 3389, "hits": 300},
        {"proto": "udp", "port": 161, "hits": 130},
        {"proto": "tcp", "port": None, "hits": 4},
    ],
    "sources": [
        source("192.0.2.66", 900, T - 2, "tcp/23", V4_BAN),
        source("2001:db8::66", 300, T - 75, "udp/161", V6_BAN),
        source("198.51.100.7", 34, T - 600, "tcp/3389", None),
    ],
    "recent_bans": [V4_BAN, V6_BAN],
}


def snapshot(**changes: Any) -> Snapshot:
    return topdata.parse(STATUS, {**TOP, **changes})


def view(failing_for: float | None = None) -> View:
    """A minute of history: no reading for 56 s, then 0, 2, 1 and 8 hits a second."""
    history = (None,) * 56 + (0.0, 2.0, 1.0, 8.0)
    return View(snapshot(), history, 8.0, 2.75, 1.0, failing_for, "connection refused")


FULL = [
    " porttrap 0.1.0  |  up 1h02m  |  3 trap ports  |  backend nftables  |  pid 4242"
    "                            08:00:00 UTC",
    " hits 1,234   now 8.0/s   1 min avg 2.8/s   bans 2 active, 1 permanent, 5 made since start",
    " hits/s [" + " " * 57 + "▂▁█]  peak 8.0/s, last 60s",  # 60 s at one reading a second
    "",
    " TRAP PORTS                              TOP SOURCES",
    " PORT       HITS  SHARE                  ADDRESS       HITS  LAST PORT       SEEN  BAN",
    " tcp/23      800    65%  ████████████    192.0.2.66     900  tcp/23        2s ago  59m left",
    " tcp/3389    300    24%  ████▌           2001:db8::66   300  udp/161    1m15s ago  permanent",
    " udp/161     130    11%  ██              198.51.100.7    34  tcp/3389     10m ago  -",
    " tcp/other     4     0%  ▏",
    "",
    " RECENT BANS",
    "    BANNED  ADDRESS       BAN  FOR        ENDS    REASON",
    "    1m ago  192.0.2.66     #1  1h         in 59m  trap:tcp/23",
    " 1m20s ago  2001:db8::66   #3  permanent  never   trap:udp/161",
]


def test_a_wide_terminal_shows_ports_and_sources_side_by_side_then_the_recent_bans() -> None:
    lines = render(view(), 120, 20)
    assert plain(lines) == [*FULL, "", "", "", "", " q quits, refreshes every 1s"]


def test_the_whole_frame_without_a_height_has_every_row_and_no_key_help() -> None:
    assert plain(render(view(), 120, None)) == FULL


def test_bans_and_rates_are_styled() -> None:
    lines = render(view(), 120, 20)
    styles = {seg.text.strip(): seg.style for line in lines for seg in line if seg.text.strip()}
    assert styles["59m left"] is Style.BANNED
    assert styles["permanent"] is Style.PERMANENT
    assert styles["8.0/s"] is Style.HOT
    assert styles["TOP SOURCES"] is Style.HEAD
    assert lines[0][0].style is Style.TITLE and len(lines[0][0].text) == 120  # a full bar


def test_a_narrow_terminal_stacks_the_tables_sources_first_and_drops_what_does_not_fit() -> None:
    assert plain(render(view(), 60, 16)) == [
        " porttrap 0.1.0  |  up 1h02m  |  3 trap ports  08:00:00 UTC",
        " hits 1,234   now 8.0/s   1 min avg 2.8/s",
        " bans 2 active, 1 permanent, 5 made since start",
        " hits/s [                         ▂▁█]  peak 8.0/s, last 60s",
        "",
        " TOP SOURCES",
        " ADDRESS       HITS  LAST PORT       SEEN  BAN",
        " 192.0.2.66     900  tcp/23        2s ago  59m left",
        " 2001:db8::66   300  udp/161    1m15s ago  permanent",
        " 198.51.100.7    34  tcp/3389     10m ago  -",
        "",
        " TRAP PORTS",
        " PORT       HITS  SHARE",
        " tcp/23      800    65%  ████████████",
        " tcp/3389    300    24%  ████▌",
        " q quits, refreshes every 1s",
    ]


def test_a_daemon_that_stops_answering_is_said_above_its_last_numbers() -> None:
    watch = Watch()
    watch.answered(10.0, snapshot())
    watch.failed(11.0, "porttrap is not running: no daemon answers on /run/x.sock")
    lines = plain(render(watch.view(14.5, 1.0), 120, 12))
    assert lines[1] == (" not answering, retrying every 1s (for 3s): porttrap is not running: "
                        "no daemon answers on /run/x.sock")  # fmt: skip
    assert render(watch.view(14.5, 1.0), 120, 12)[1][0].style is Style.WARN
    assert "192.0.2.66" in "\n".join(lines)  # the last numbers stay
    watch.answered(15.0, snapshot())
    assert watch.view(15.0, 1.0).failing_for is None


def test_before_the_first_answer_the_view_waits() -> None:
    lines = plain(render(Watch().view(0.0, 2.0), 50, 6))
    assert lines == [" porttrap top", " waiting for the daemon's first answer",
                     " hits/s [                    ]  peak 0/s, last 60s", "", "",
                     " q quits, refreshes every 2s"]  # fmt: skip


def test_empty_tables_say_so() -> None:
    empty = topdata.parse(STATUS, {**TOP, "ports": [], "sources": [], "recent_bans": []})
    lines = plain(render(View(empty, (), None, None, 1.0), 100, None))
    assert lines[4:] == [
        " TRAP PORTS           TOP SOURCES",
        " PORT  HITS  SHARE    ADDRESS  HITS  LAST PORT  SEEN  BAN",
        " no hits yet          no sources yet",
        "",
        " RECENT BANS",
        " BANNED  ADDRESS  BAN  FOR  ENDS  REASON",
        " no active bans",
    ]
    assert lines[1].startswith(" hits 1,234   now -/s   1 min avg -/s")


@settings(deadline=None)  # 2 shared CPUs: the first example can be slow
@given(width=st.integers(0, 200), height=st.integers(0, 60), warn=st.booleans())
def test_every_size_fits_exactly(width: int, height: int, warn: bool) -> None:
    lines = render(view(failing_for=12.0 if warn else None), width, height)
    assert len(lines) == height
    assert all(sum(len(s.text) for s in line) <= width for line in lines)


def test_rates_come_from_successive_totals() -> None:
    rates = Rates()
    for at, hits in ((0.0, 100), (1.0, 100), (2.0, 110), (4.0, 150)):
        rates.add(at, hits)
    assert rates.current(1.0) == 20.0
    assert rates.average() == 12.5
    assert rates.series(1.0, 6) == [None, None, 0.0, 10.0, 20.0, 20.0]


def test_late_readings_spread_their_hits_over_the_seconds_they_cover() -> None:
    rates = Rates()
    for at, hits in ((0.0, 0), (0.5, 10), (2.5, 14)):  # the daemon answered 1.5 s late
        rates.add(at, hits)
    assert rates.series(0.5, 6) == [None, 20.0, 2.0, 2.0, 2.0, 2.0]
    assert rates.current(0.5) == 2.0
    rates.add(2.6, 14)  # one soon after: no jump to 0 hits per second over 1 s
    assert rates.current(1.0) == pytest.approx(1.8)  # 0.9 s of 2/s, then 0.1 s of none


def test_rates_keep_the_last_minute() -> None:
    rates = Rates()
    for second in range(100):
        rates.add(float(second), second * 3)
    assert len(rates.samples) == 61  # a minute: 39 s to 99 s, both ends
    assert rates.series(1.0, 60) == [3.0] * 60
    assert rates.average() == 3.0


def test_a_restarted_daemon_starts_the_rates_again() -> None:
    watch = Watch()
    watch.answered(0.0, snapshot())
    watch.answered(1.0, snapshot(hits={"total": 1244}))
    first = watch.view(1.0, 1.0)
    assert (first.now, first.history[-2:]) == (10.0, (None, 10.0))
    restarted = snapshot(started_at=iso(T + 5), hits={"total": 2})
    watch.answered(2.0, restarted)  # fewer hits, another start: no negative rate
    assert watch.view(2.0, 1.0).now is None
    assert set(watch.view(2.0, 1.0).history) == {None}
    watch.answered(3.0, snapshot(started_at=iso(T + 5), hits={"total": 5}))
    assert watch.view(3.0, 1.0).now == 3.0


def test_the_sparkline_covers_a_minute_whatever_the_interval() -> None:
    watch = Watch()
    for n in range(40):
        watch.answered(n * 2.0, snapshot(hits={"total": 1234 + 4 * n}))
    history = watch.view(78.0, 2.0).history
    assert history == (2.0,) * 30


def test_bars_are_cut_in_eighths_and_show_any_hit() -> None:
    assert topview.bar(1.0, 4) == "████"
    assert topview.bar(0.3, 4) == "█▎"  # 9.6 eighths: 10
    assert topview.bar(0.001, 4) == "▏"
    assert topview.bar(0.0, 4) == ""
    assert topview.bar(0.5, 4, unicode=False) == "##"


def test_sparkline_scales_to_the_peak_and_shows_any_hit() -> None:
    assert topview.sparkline([0.0, 1.0, 2.0, 4.0], 4) == " ▂▄█"
    assert topview.sparkline([0.01, 100.0], 10) == "▁█"
    assert topview.sparkline([5.0, 0.0, 10.0], 2, unicode=False) == " @"
    assert topview.sparkline([0.0, 0.0], 2) == "  "


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-3, "0s"),
        (42.9, "42s"),
        (60, "1m"),
        (307, "5m07s"),
        (3600, "1h"),
        (11100, "3h05m"),
        (86400 * 12 + 3600 * 4, "12d04h"),
    ],
)
def test_spans(seconds: float, text: str) -> None:
    assert topview.span(seconds) == text


def test_an_answer_of_another_version_is_refused_with_what_is_missing() -> None:
    with pytest.raises(ValueError, match=r"unexpected answer from the daemon.*'sources'"):
        topdata.parse(STATUS, {k: v for k, v in TOP.items() if k != "sources"})


def test_without_a_daemon_top_exits_3_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "porttrap.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    assert main(["top", "-c", str(config), "--once"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"porttrap: error: porttrap is not running: no daemon answers on "
                   f"{tmp_path}/control.sock (start it with `porttrap run`, or check -c / "
                   "state_dir)\n")  # fmt: skip


@pytest.mark.parametrize("interval", ["0", "0.1", "nan", "soon", "3601"])
def test_intervals_out_of_range_are_refused(
    capsys: pytest.CaptureFixture[str], interval: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["top", "-n", interval])
    assert exit_.value.code == 2
    assert "give 0.2 to 3600 seconds" in capsys.readouterr().err


def test_the_title_counts_trap_ports_skipped_ports_and_kernel_modes() -> None:
    skipped = {**TCP2323, "reason": "address in use", "holder": None}
    kernel = {"modes": {"tcp": "advanced", "udp": "connect"}}
    status = {**STATUS, "traps": {"set": [TCP23_V4], "skipped": [skipped]}, "kernel": kernel}
    lines = plain(render(View(topdata.parse(status, TOP), (), None, None, 1.0), 140, None))
    assert lines[0].startswith(
        " porttrap 0.1.0  |  up 1h02m  |  1 trap port, 1 skipped (tcp advanced)  |  backend"
    )
