"""Every value is bounded where it enters (issue 13): durations are finite and at most
`MAX_BAN` (look-backs `MAX_LOOKBACK`), times lie from 1970 to 2106, NaN and Infinity and wrong
JSON types are refused, and nesting too deep is answered. One test group per entry point: the
central bounds, the config, the command line, the control socket, the database rows, the
imports and the bans of other hosts."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from porttrap.cli import output
from porttrap.cli.main import main
from porttrap.config.legacy import datatrap, port_trap
from porttrap.config.loader import load_text
from porttrap.config.locate import locate
from porttrap.config.schema import BanPolicy
from porttrap.core import requests
from porttrap.daemon.control import ControlServer
from porttrap.errors import ConfigError, UsageError
from porttrap.model import Ban, ban_problem
from porttrap.policy import Policy, Protection
from porttrap.store.sqlite import SQLiteStore
from porttrap.units import (
    LAST_TIME,
    MAX_BAN,
    MAX_LOOKBACK,
    TooLong,
    duration_problem,
    parse_duration,
    time_problem,
)

T0 = 1_800_000_000.0
NINES = "9" * 400
TEN_YEARS = 3650 * 86400.0


# -- the bounds themselves ---------------------------------------------------------------


def test_the_longest_ban_is_ten_years_and_the_longest_look_back_a_hundred() -> None:
    assert MAX_BAN.seconds == TEN_YEARS == parse_duration("3650d") == parse_duration("520w10d")
    assert MAX_LOOKBACK.seconds == 10 * TEN_YEARS == parse_duration("36500d", MAX_LOOKBACK)


@pytest.mark.parametrize("text", ["3650d1s", "1000000000000w", f"{NINES}s", "5200w"])
def test_a_duration_text_longer_than_the_longest_is_refused_and_says_so(text: str) -> None:
    with pytest.raises(TooLong, match=r"is longer than 3650d \(10 years\), the longest porttrap "
                       "takes; a ban that should never end is a permanent one"):  # fmt: skip
        parse_duration(text)


def test_a_long_number_is_cut_short_in_the_message() -> None:
    with pytest.raises(TooLong) as refused:
        parse_duration(f"{NINES}s")
    assert "(403 characters)" in str(refused.value) and NINES not in str(refused.value)


@pytest.mark.parametrize(
    ("seconds", "problem"),
    [
        (math.nan, "a duration must be a number of seconds above zero, got nan"),
        (-math.inf, "a duration must be a number of seconds above zero, got -inf"),
        (0, "a duration must be a number of seconds above zero, got 0"),
        (math.inf, "a duration of inf seconds is longer than 3650d (10 years)"),
        (10**400, "a duration of 100000000000...(401 characters) seconds is longer than"),
        (TEN_YEARS + 1, "a duration of 315360001.0 seconds is longer than 3650d (10 years)"),
        (TEN_YEARS, None),
        (0.001, None),
    ],
)
def test_duration_problem(seconds: float, problem: str | None) -> None:
    found = duration_problem(seconds)
    assert found == problem if problem is None else found is not None and problem in found


@pytest.mark.parametrize(
    ("at", "ok"),
    [(0.0, True), (T0, True), (LAST_TIME - 1, True), (LAST_TIME, False), (-1.0, False),
     (math.nan, False), (math.inf, False), (1e300, False)],
)  # fmt: skip
def test_times_lie_from_1970_to_2106(at: float, ok: bool) -> None:
    assert (time_problem(at) is None) is ok


@pytest.mark.parametrize(
    ("banned_at", "expires_at", "problem"),
    [
        (T0, None, None),
        (T0, T0 + TEN_YEARS, None),
        (T0, T0 - 5, None),  # over already: harmless, it is simply not restored
        (T0, T0 + TEN_YEARS + 1, "a ban of 315360001 s is longer than 3650d (10 years)"),
        (T0, math.inf, "expires_at inf is not a time from 1970 to 2106 in seconds"),
        (T0, math.nan, "expires_at nan is not a time"),
        (math.nan, None, "banned_at nan is not a time"),
        (1e300, None, "banned_at 1e+300 is not a time"),
    ],
)
def test_ban_problem(banned_at: float, expires_at: float | None, problem: str | None) -> None:
    found = ban_problem(banned_at, expires_at)
    assert found == problem if problem is None else found is not None and problem in found


# -- the config --------------------------------------------------------------------------


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        load_text(text, None)
    return [str(p) for p in refused.value.problems]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("time = 100000000000000000000",
         "[ban.time] 100000000000000000000 seconds is longer than 3650d (10 years)"),
        (f"max_time = {NINES}",
         "[ban.max_time] 999999999999...(400 characters) seconds is longer than 3650d"),
        (f'max_time = "{NINES}s"',
         "[ban.max_time] duration '99999999999...(403 characters) is longer than 3650d"),
        ('time = "1000000000000w"', "[ban.time] duration '1000000000000w' is longer than 3650d"),
        ('unverified_max_time = "3651d"', "[ban.unverified_max_time] duration '3651d' is longer"),
        ('window = "3651d"', "[ban.window] duration '3651d' is longer than 3650d"),
        ('forget_after = "36501d"',
         "[ban.forget_after] duration '36501d' is longer than 36500d (100 years)"),
    ],
)  # fmt: skip
def test_config_durations_past_the_longest_are_errors(line: str, message: str) -> None:
    (problem,) = problems_of(f"[ban]\n{line}\n")
    assert problem.startswith(f"<config>:2: {message}")


def test_every_kind_of_config_duration_is_bounded() -> None:
    found = problems_of(
        '[[traps.port]]\nport = "9090"\nproto = "tcp"\nban = "3651d"\n'
        '[kernel]\nblock_time = "3651d"\nclient_time = "3651d"\n'
        '[store]\nhit_retention = "36501d"\n'
        '[actions]\n[[actions.command]]\nrun = ["/bin/true"]\ntimeout = "3651d"\n'
    )
    keys = {p.split("] ", 1)[0].split("[", 1)[1] for p in found}
    assert {"kernel.block_time", "kernel.client_time", "store.hit_retention"} <= keys
    assert any(key.startswith("traps.port") and key.endswith("ban") for key in keys), found
    assert any(key.endswith("timeout") for key in keys), found


def test_config_durations_at_the_longest_load() -> None:
    cfg = load_text('[ban]\ntime = "3650d"\nmax_time = 315360000\nforget_after = "5200w"\n', None)
    assert cfg.ban.time == cfg.ban.max_time == TEN_YEARS
    assert cfg.ban.forget_after == 5200 * 604800


@pytest.mark.parametrize("key", ["trigger", "confirm", "permanent_after", "client_trigger"])
def test_config_counts_are_at_most_2147483647(key: str) -> None:
    (problem,) = problems_of(f"[ban]\n{key} = {NINES}\n")
    assert problem == (f"<config>:2: [ban.{key}] expected a whole number of at most 2147483647, "
                       "got 999999999999...(400 characters)")  # fmt: skip


@pytest.mark.parametrize(
    "text",
    ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 5000 + "1" + "}" * 5000],
    ids=["arrays", "inline tables"],
)
def test_toml_nested_too_deeply_is_a_config_error(text: str) -> None:
    (problem,) = problems_of(text)
    assert "nested too deeply for the TOML reader" in problem and "remove the nesting" in problem


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("x." * 100_000 + "a = 1", 1),  # 23 GB and killed, before
        ('[traps]\n["x" . ' + '"x" . ' * 100_000 + "a]", 2),
        ("[ban]\ntrigger = 2\nb = {" + "x." * 100_000 + "a = 1}", 3),
    ],
    ids=["bare", "quoted table", "inline table"],
)
def test_a_key_of_too_many_dotted_parts_is_a_config_error(text: str, line: int) -> None:
    (problem,) = problems_of(text)
    assert problem.startswith(f"<config>:{line}: a dotted key of more than 64 parts")


def test_dots_in_values_are_no_dotted_key() -> None:
    config = load_text('[allow]\npatterns = ["' + "x." * 100 + '"]\n', None)
    assert len(config.allow.patterns) == 1


# -- the command line --------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """A config file; the CLI sends the log to the (captured) stderr: put back as it was."""
    path = tmp_path / "porttrap.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield path
    root.handlers[:] = handlers
    root.setLevel(level)


def test_ban_for_longer_than_the_longest_is_refused_by_the_cli(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code = main(["ban", "--for", "1000000000000w", "198.51.100.7", "-c", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1  # before any daemon is asked
    assert err.startswith("porttrap: error: --for: duration '1000000000000w' is longer than "
                          "3650d (10 years)")  # fmt: skip
    assert err.rstrip().endswith("(--permanent)")


def test_report_since_is_bounded_by_the_look_back(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code = main(["report", "--since", "36501d", "-c", str(config)])
    assert code == 2 and "36500d (100 years)" in capsys.readouterr().err


def test_bans_lists_the_good_rows_and_skips_a_bad_one(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "porttrap.db"
    with SQLiteStore.open(db) as store:
        store.add_bans([Ban(ip_network("198.51.100.7"), 1e9, None, 1, "manual")])
    plant(db, "198.51.100.8", 1e9, 1e9 + 6.048e17)  # the row --for 10^12 weeks once left
    plant(db, "198.51.100.9", 1e9, math.inf)
    code = main(["bans", "--json", "-c", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [b["address"] for b in json.loads(out)] == ["198.51.100.7"]
    assert err.count("event=store-bad-row") == 2


def test_status_says_how_many_rows_the_start_skipped() -> None:
    status = {"running": True, "pid": 1, "started_at": "x", "backend": "nftables",
              "traps": {"set": [], "skipped": []}, "hits": {"total": 0},
              "bans": {"active": 2, "permanent": 0, "skipped_at_start": 1}}  # fmt: skip
    assert output.status_text(status).splitlines()[-2:] == [
        "bans: 2 active, 0 of them permanent",
        "  1 database rows could not be read at start, and their bans were not restored: see "
        "the log (event=store-bad-row)",
    ]


# -- the control socket ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        ({"for": math.nan}, "bad ban duration: a duration must be a number of seconds above"),
        ({"for": math.inf}, "bad ban duration: a duration of inf seconds is longer than 3650d"),
        ({"for": 6.048e17}, "is longer than 3650d (10 years)"),
        ({"for": 0}, "bad ban duration: a duration must be a number of seconds above zero"),
        ({"for": -1}, "above zero, got -1"),
        ({"for": True}, 'bad ban duration true: "for" is a number of seconds'),
        ({"for": "3600"}, 'bad ban duration "3600": "for" is a number of seconds'),
        ({"for": [1]}, 'bad ban duration [1]: "for" is a number of seconds'),
        ({"permanent": "no"}, '"permanent" must be true or false, got "no"'),
        ({"permanent": 1}, '"permanent" must be true or false, got 1'),
        ({"targets": [3221225985]}, "3221225985 is not an address in a string"),
        ({"targets": [{"a": 1}]}, '{"a": 1} is not an address in a string'),
        ({"targets": "198.51.100.7"}, "give at least one address or network"),
    ],
)
def test_a_ban_request_out_of_bounds_or_of_the_wrong_type_is_refused(
    request_: dict[str, Any], problem: str
) -> None:
    with pytest.raises(UsageError) as refused:
        requests.ban({"cmd": "ban", "targets": ["198.51.100.7"]} | request_)
    assert problem in str(refused.value)


def test_a_ban_request_within_bounds_is_taken() -> None:
    event = requests.ban({"targets": ["198.51.100.7"], "for": TEN_YEARS})
    assert event.targets == (ip_network("198.51.100.7/32"),) and event.duration == TEN_YEARS
    assert requests.ban({"targets": ["198.51.100.7"], "permanent": True}).permanent


def test_top_limit_is_not_a_boolean() -> None:
    with pytest.raises(UsageError, match="bad limit True"):
        requests.top_limit({"limit": True})


def answer(line: bytes, handler: Any = None) -> dict[str, Any]:
    """What the control server answers to one request line (ban: `requests.ban` checks it)."""

    def ban(request: dict[str, Any]) -> dict[str, Any]:
        requests.ban(request)
        return {"checked": True}

    server = ControlServer(Path("/nonexistent"), {"ban": handler or ban})
    return asyncio.run(server._answer(line))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_on_the_control_socket_are_refused(constant: str) -> None:
    line = f'{{"cmd": "ban", "targets": ["198.51.100.7"], "for": {constant}}}'.encode()
    assert answer(line) == {
        "ok": False,
        "error": f"bad request: {constant} is not a number JSON allows: give a finite number",
    }


def test_an_overflowing_number_on_the_control_socket_is_refused() -> None:
    line = b'{"cmd": "ban", "targets": ["198.51.100.7"], "for": 1e400}'  # json reads inf
    found = answer(line)
    assert found["ok"] is False and "is longer than 3650d" in found["error"]


@pytest.mark.parametrize("nested", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000])
def test_json_nested_too_deeply_is_answered(nested: bytes) -> None:
    assert answer(nested) == {"ok": False, "error": "bad request: JSON nested too deeply"}


def test_a_handler_that_fails_is_answered_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_request: dict[str, Any]) -> dict[str, Any]:
        raise OverflowError("timestamp out of range for platform time_t")

    with caplog.at_level(logging.ERROR, logger="porttrap"):
        found = answer(b'{"cmd": "ban"}', broken)
    assert found == {"ok": False, "error": "the daemon failed on this request (a bug: see its log)"}
    (record,) = caplog.records
    assert record.getMessage() == "event=control-failed" and record.exc_info is not None


# -- the database ------------------------------------------------------------------------


def plant(db: Path, target: str, banned_at: object, expires_at: object) -> None:
    """A row as a hand edit, an older porttrap or damage could have left it."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO bans (target, banned_at, expires_at, ban_count, reason) "
            "VALUES (?, ?, ?, 1, 'manual')",
            (target, banned_at, expires_at),
        )


@pytest.mark.parametrize(
    ("banned_at", "expires_at", "problem"),
    [
        (T0, T0 + 6.048e17, "expires_at 6.048000018e+17 is not a time from 1970 to 2106"),
        (T0, math.inf, "expires_at inf is not a time"),
        (T0, -math.inf, "expires_at -inf is not a time"),
        (T0, T0 + TEN_YEARS + 1, "a ban of 315360001 s is longer than 3650d (10 years)"),
        (1e300, None, "banned_at 1e+300 is not a time"),
        (-1.0, None, "banned_at -1.0 is not a time"),
        (int(T0), 2**62, "expires_at 4.611686018427388e+18 is not a time"),
    ],
)
def test_a_ban_row_out_of_bounds_is_skipped_counted_and_named(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    banned_at: float,
    expires_at: float | None,
    problem: str,
) -> None:
    good = Ban(ip_network("198.51.100.7"), T0, T0 + 3600, 1, "manual")
    with SQLiteStore.open(tmp_path / "porttrap.db") as store:
        store.add_bans([good])
        plant(tmp_path / "porttrap.db", "198.51.100.8", banned_at, expires_at)
        with caplog.at_level(logging.WARNING, logger="porttrap"):
            restored = store.bans_to_restore(T0, 0.0)
            assert store.active_bans(T0) == [good]
        assert [s.ban for s in restored] == [good]
        assert store.bad_rows == 1
    # (an earlier test may leave the logger at INFO: the store's migration is logged too)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "event=store-bad-row table=bans" in warning and problem in warning


# -- imports -----------------------------------------------------------------------------


def datatrap_rows(*rows: tuple[Any, Any]) -> datatrap.History:
    return datatrap.convert(
        [(n, ts, end, "198.51.100.7", "23", 1) for n, (ts, end) in enumerate(rows, 1)], "db"
    )


def test_a_port_trap_row_that_ends_past_the_bounds_is_left_out_with_a_note() -> None:
    history = datatrap_rows(
        (1_700_000_000, 1_700_003_600),
        (1_700_010_000, float(NINES)),  # SQLite reads 400 nines in an INTEGER column as inf
        (1_700_020_000, NINES),
        (1_700_030_000, 1_700_030_000 + TEN_YEARS + 1),
    )
    assert [b.expires_at for b in history.bans] == [1_700_003_600.0]
    notes = [str(n) for n in history.problems]
    assert len(notes) == 2 and all(n.endswith(": left out") for n in notes)
    assert notes[0].startswith("db: row ids 2-3 (2): ")  # the same problem, grouped
    assert "expires_at inf is not a time from 1970 to 2106" in notes[0]
    assert all("9999" not in n for n in notes)  # the row's text is never shown
    assert "row id 4:" in notes[1] and "longer than 3650d (10 years)" in notes[1]


def test_a_port_trap_database_with_400_nines_imports_only_the_good_rows(tmp_path: Path) -> None:
    path = tmp_path / "datatrap.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        columns = "ts INTEGER, delafter INTEGER, ip TEXT, port TEXT, detected INTEGER"
        conn.execute(f"CREATE TABLE ips (id INTEGER PRIMARY KEY, {columns}, banned INTEGER, "
                     "inet TEXT)")  # fmt: skip
        conn.execute(f"INSERT INTO ips VALUES (1, 1700000000, {NINES}, '198.51.100.7', '23', 1, "
                     "1, '4')")  # fmt: skip
        conn.execute("INSERT INTO ips VALUES (2, 1700000000, 1700003600, '::ffff:198.51.100.8', "
                     "'23', 1, 1, '4')")  # fmt: skip
    history = datatrap.read(path)
    assert [(str(b.target), b.expires_at) for b in history.bans] == [
        ("198.51.100.8/32", 1_700_003_600.0)
    ]
    assert history.rows == 2 and len(history.problems) == 1


def port_trap_config(tmp_path: Path, timeout: int, permanent: str) -> str:
    (tmp_path / "list_of_ports.txt").write_text(f"23#{timeout}\n")
    (tmp_path / "for_permanent_ban.txt").write_text(f"{permanent}\n")
    return port_trap.convert(port_trap.read(tmp_path)).toml


def test_the_port_trap_import_caps_its_longest_ban_at_the_longest(tmp_path: Path) -> None:
    text = port_trap_config(tmp_path, 99999, "101")  # 99999 s x 100^2: 31 years
    cfg = load_text(text, None)
    assert cfg.ban.max_time == TEN_YEARS and cfg.ban.permanent_after == 101
    assert "longer than porttrap's longest" in text


def test_a_port_trap_permanent_count_no_one_reaches_is_never(tmp_path: Path) -> None:
    conversion_text = port_trap_config(tmp_path, 60, "99999999999")
    assert load_text(conversion_text, None).ban.permanent_after == 0


# -- bans of other hosts -----------------------------------------------------------------


def test_a_remote_ban_out_of_bounds_is_refused() -> None:
    policy = Policy(BanPolicy(), (), Protection([]))
    far = Ban(ip_network("198.51.100.7"), T0, T0 + 6.048e17, 1, "trap:tcp/23")
    why = policy.adopt(far, T0)
    assert isinstance(why, str) and "expires_at" in why and "2106" in why


def test_a_ban_row_whose_text_is_not_utf8_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sqlite3 would fail the whole read (and so the start) on such text: the address is a bad
    row, skipped and reported; a reason that is not UTF-8 reads with U+FFFD in its place."""
    good = Ban(ip_network("198.51.100.7"), T0, T0 + 3600, 1, "manual")
    with SQLiteStore.open(tmp_path / "porttrap.db") as store:
        store.add_bans([good])
        with closing(sqlite3.connect(tmp_path / "porttrap.db")) as conn, conn:
            conn.execute(
                "INSERT INTO bans (target, banned_at, expires_at, ban_count, reason) VALUES "
                "(CAST(x'3139382e35312e3130302eff' AS TEXT), ?, ?, 1, 'manual'), "
                "('198.51.100.9', ?, ?, 1, CAST(x'7472617020ff' AS TEXT))",
                (T0, T0 + 3600, T0 + 1, T0 + 3600),
            )
        with caplog.at_level(logging.WARNING, logger="porttrap"):
            restored = store.bans_to_restore(T0, 0.0)
        assert [(str(s.ban.target), s.ban.reason) for s in restored] == [
            ("198.51.100.7/32", "manual"),
            ("198.51.100.9/32", "trap \ufffd"),
        ]
        assert store.bad_rows == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "event=store-bad-row table=bans rowid=2" in warning


def test_the_line_finder_keeps_what_it_found_past_its_recursion_depth() -> None:
    """Under a deep stack (the loader's, while it reports a problem) arrays that tomllib read
    made the finder of the lines that decorate the errors raise RecursionError, which ended
    the load with a traceback (found by the config fuzzer)."""
    found = locate("[allow]\naddresses = " + "[" * 5000 + "]" * 5000)
    assert (found["allow"], found["allow.addresses"]) == (1, 2)
