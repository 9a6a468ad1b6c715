"""`porttrap report` on the command line: where the page goes, the period's options, the help,
and one-line errors for a missing, older or newer database; the database is never written."""

from __future__ import annotations

import ipaddress
import sqlite3
from pathlib import Path

import pytest

from porttrap.cli.main import main
from porttrap.cli.report import parse_time
from porttrap.clock import SystemClock
from porttrap.model import Ban, Hit, Outcome, Proto
from porttrap.store.migrations import LATEST
from porttrap.store.sqlite import SQLiteStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "porttrap.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return path


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A store with a hit and a ban an hour ago (the command reads the real clock)."""
    path = tmp_path / "state" / "porttrap.db"
    at = SystemClock().now() - 3600
    source = ipaddress.ip_address("198.51.100.7")
    local = ipaddress.ip_address("192.0.2.1")
    with SQLiteStore.open(path) as store:
        store.add_hits([(Hit(at, source, 40000, local, 2323, Proto.TCP), Outcome.BANNED)])
        store.add_bans([Ban(ipaddress.ip_network(source), at, at + 3600, 1, "trap:tcp/2323")])
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("database")
def test_the_page_goes_to_stdout(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, err = run(capsys, "report", "-c", str(config))
    assert code == 0 and err == ""
    assert out.startswith("<!doctype html>") and out.endswith("</html>\n")
    assert "198.51.100.7" in out and "tcp/2323" in out


def test_o_replaces_the_file_atomically(
    capsys: pytest.CaptureFixture[str], config: Path, database: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old report")
    before = database.read_bytes()
    code, out, err = run(capsys, "report", "--since", "1d", "-c", str(config), "-o", str(target))
    # (the last line: building the store may log through an earlier test's closed stream)
    assert code == 0 and out == "" and err.splitlines()[-1] == f"wrote {target}"
    assert "198.51.100.7" in target.read_text() and "hits per 1h" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary left
    assert database.read_bytes() == before


def test_a_terminal_gets_no_html(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    code, out, err = run(capsys, "report", "-c", str(config))
    assert code == 2 and out == ""
    assert err == (
        "porttrap: error: the report is an HTML page: give -o FILE (e.g. -o report.html) or "
        "redirect stdout to a file\n"
    )


def test_until_and_since_set_the_period(
    capsys: pytest.CaptureFixture[str], config: Path, database: Path
) -> None:
    code, out, _ = run(
        capsys, "report", "-c", str(config), "--since", "2d", "--until", "2027-01-15"
    )
    assert code == 0
    assert "13 Jan 2027 00:00 to 15 Jan 2027 00:00 UTC (2d)" in out
    assert "No hits in this period." in out  # the hit is from today


def test_parse_time() -> None:
    assert parse_time("2027-01-15") == 1_799_971_200
    assert parse_time("2027-01-15T01:30") == 1_799_971_200 + 5400
    assert parse_time("2027-01-15 01:30+01:00") == 1_799_971_200 + 1800
    assert parse_time("2027-01-15T00:00:00Z") == 1_799_971_200


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "7x"], "porttrap: error: --since: bad duration '7x'"),
        (["--until", "yesterday"], "porttrap: error: --until: 'yesterday' is not a date or time"),
    ],
)
@pytest.mark.usefixtures("database")
def test_bad_period_options_are_one_line(
    capsys: pytest.CaptureFixture[str], config: Path, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "report", "-c", str(config), *argv)
    assert code == 2 and out == "" and err.startswith(message) and len(err.splitlines()) == 1


def test_a_missing_database_is_one_line(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = run(capsys, "report", "-c", str(config))
    assert code == 1 and "no database at" in err and "has not run yet" in err
    assert len(err.splitlines()) == 1
    assert not (config.parent / "state" / "porttrap.db").exists()  # and none made


@pytest.mark.parametrize(("version", "says"), [(LATEST + 1, "upgrade porttrap"), (0, "older")])
def test_another_schema_is_refused_and_left_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, version: int, says: str
) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE hits (at REAL)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    code, _, err = run(capsys, "report", "--database", str(path), "-o", str(tmp_path / "r.html"))
    assert code == 1 and says in err and str(path) in err and len(err.splitlines()) == 1
    assert path.read_bytes() == before and not (tmp_path / "r.html").exists()


def test_help_describes_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["report", "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    for needed in ("--since", "--until", "--top", "--database", "-o", "read-only", "examples:"):
        assert needed in text
    assert "  porttrap report --since 1d -o today.html" in text  # examples kept as written


def test_fleet_needs_a_fleet_section(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, err = run(capsys, "report", "--fleet", "-c", str(config), "-o", "x.html")
    assert code == 2 and out == "" and "has no [fleet] section" in err
    assert len(err.splitlines()) == 1


def test_fleet_and_database_exclude_each_other(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--fleet", "--database", "other.db", "-c", str(config)])
    assert "not allowed with argument" in capsys.readouterr().err
