"""`porttrap fleet init|add-host` before any database is reached: the password and URL checks
(the commands against a real PostgreSQL: tests/integration/test_fleet_db.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from porttrap.cli import fleet
from porttrap.cli import main as cli
from porttrap.errors import UsageError

URL = "postgresql:///porttrap?host=/nonexistent"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["fleet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_password_inside_the_admin_url_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("postgresql://postgres:s3cret@db.example.net/porttrap", "host=x password=s3cret"):
        code, out, err = run(capsys, "init", "--admin-url", url)
        assert code == cli.EXIT_USAGE
        assert "holds a password" in err and "~/.pgpass" in err
        assert "s3cret" not in err + out


def test_an_admin_url_that_is_no_url_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "init", "--admin-url", "host='unterminated")
    assert code == cli.EXIT_ERROR
    assert "is not a PostgreSQL URL" in err


def test_a_password_file_others_can_read_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password = tmp_path / "web-1.password"
    password.write_text("s3cret\n")
    password.chmod(0o640)
    code, _, err = run(capsys, "add-host", "web-1", "--admin-url", URL,
                       "--password-file", str(password))  # fmt: skip
    assert code == cli.EXIT_USAGE
    assert "can be read or changed by others" in err and "mode -rw-r-----" in err
    assert f"chmod 600 {password}" in err


def test_the_password_is_the_first_line_of_the_file(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("s3cret\r\nsecond line\n")
    password.chmod(0o600)
    assert fleet.read_password(password) == "s3cret"
    password.write_text("\nlater\n")
    with pytest.raises(UsageError, match="its first line is empty"):
        fleet.read_password(password)


def test_an_existing_password_file_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "web-1.password"
    target.write_text("keep me\n")
    code, _, err = run(capsys, "add-host", "web-1", "--admin-url", URL,
                       "--write-password", str(target))  # fmt: skip
    assert code == cli.EXIT_USAGE
    assert "exists already (never overwritten)" in err
    assert target.read_text() == "keep me\n"


def test_a_failed_add_host_leaves_no_password_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "web-1.password"
    code, _, err = run(capsys, "add-host", "web-1", "--admin-url", URL,
                       "--write-password", str(target))  # fmt: skip
    assert code == cli.EXIT_ERROR
    assert "fleet add-host web-1: cannot connect to postgres" not in err  # no user in the URL
    assert "cannot connect to" in err and "/porttrap" in err
    assert not target.exists()


def test_password_file_and_write_password_exclude_each_other(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fleet", "add-host", "web-1", "--admin-url", URL,
                  "--password-file", "a", "--write-password", "b"])  # fmt: skip
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
