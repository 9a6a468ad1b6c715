"""The CLI habits admins' fingers know (issue 16): global options before the command, a bare
`porttrap`, a mistyped command, `unban --all`'s confirmation, `-f FILE` errors by line, an
unreadable database, and the one table of exit codes."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess  # noqa: TID251 - runs the CLI as another user would
import sys
import tempfile
from pathlib import Path

import pytest

from porttrap import log
from porttrap.cli import commands
from porttrap.cli import main as cli
from porttrap.core import requests
from porttrap.errors import Refused, UsageError
from porttrap.store.sqlite import SQLiteStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "porttrap.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[traps]\ntcp = ["23"]\n')
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_global_options_work_before_the_command(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    before = run(capsys, "-c", str(config), "status")
    after = run(capsys, "status", "-c", str(config))
    assert before == after == (3, "porttrap is not running\n", "")
    parsed = cli.build_parser().parse_args(["-v", "-c", str(config), "bans"])
    assert (parsed.verbose, parsed.config) == (True, config)
    assert cli.build_parser().parse_args(["bans"]).verbose is False


def test_an_option_after_the_command_wins_over_one_before(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "-c", str(tmp_path / "nope.toml"), "status", "-c", str(config))
    assert (code, err) == (3, "")


def test_a_bare_porttrap_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys)
    assert (code, err) == (0, "")
    assert out.startswith("usage: porttrap") and "typical use" in out and "exit codes" in out


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["stauts"], "unknown command 'stauts': did you mean 'status'?"),
        (["unbna", "203.0.113.7"], "unknown command 'unbna': did you mean 'unban'?"),
        (["fleet", "stats"], "unknown command 'stats': did you mean 'status'?"),
    ],
)
def test_an_unknown_command_names_the_nearest(
    capsys: pytest.CaptureFixture[str], argv: list[str], suggestion: str
) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == cli.EXIT_USAGE and suggestion in capsys.readouterr().err


def test_a_command_near_nothing_lists_them_all(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["xyzzy"])
    err = capsys.readouterr().err
    assert "unknown command 'xyzzy' (choose from run, check-config, status" in err


def test_unban_all_without_a_terminal_needs_yes(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))  # not a terminal: never read
    code, out, err = run(capsys, "unban", "--all", "-c", str(config))
    assert (code, out) == (cli.EXIT_REFUSED, "")
    assert "add --yes to confirm" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "unban", "--all", "--yes", "-c", str(config))  # asks the daemon
    assert code == cli.EXIT_NOT_RUNNING and "porttrap is not running" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# "": Ctrl-D at the prompt (end of input), which is no "yes" either
@pytest.mark.parametrize(
    ("typed", "code"), [("no\n", cli.EXIT_REFUSED), ("", cli.EXIT_REFUSED), ("yes\n", 3)]
)
def test_unban_all_at_a_terminal_asks(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    monkeypatch: pytest.MonkeyPatch,
    typed: str,
    code: int,
) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal(typed))
    done, out, err = run(capsys, "unban", "--all", "-c", str(config))
    assert "Lift every active ban of this host? Type 'yes' to confirm" in out
    assert done == code  # "yes": on to the daemon, which is not running here (3)
    assert ("not confirmed, nothing lifted" in err) is (code == cli.EXIT_REFUSED)


def test_unban_all_takes_no_address(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = run(capsys, "unban", "--all", "--yes", "203.0.113.7", "-c", str(config))
    assert code == cli.EXIT_USAGE and "takes no ADDRESS" in err


def test_ban_file_errors_name_the_file_and_line(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    listed = tmp_path / "blocklist.txt"
    listed.write_text("# scanners\n203.0.113.7\n\n203.0.113.300  # typo\n198.51.100.7/24\n")
    code, _, err = run(capsys, "ban", "-f", str(listed), "-c", str(config))
    assert code == cli.EXIT_USAGE and len(err.splitlines()) == 1
    assert f"{listed}:4: " in err and "203.0.113.300" in err
    assert f"{listed}:5: " in err and "did you mean 198.51.100.0/24" in err
    assert "nothing was sent" in err


def test_ban_file_that_cannot_be_read(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, "ban", "-f", str(tmp_path / "nope.txt"), "-c", str(config))
    assert code == cli.EXIT_USAGE
    assert (
        err == f"porttrap: error: cannot read {tmp_path / 'nope.txt'}: No such file or directory\n"
    )
    binary = tmp_path / "list.bin"
    binary.write_bytes(b"203.0.113.7\n\xff\xfe\n")
    code, _, err = run(capsys, "unban", "-f", str(binary), "-c", str(config))
    assert code == cli.EXIT_USAGE and f"{binary}: not UTF-8 text" in err


def test_ban_file_from_stdin_names_stdin(
    capsys: pytest.CaptureFixture[str], config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("203.0.113.7\nnonsense\n"))
    code, _, err = run(capsys, "unban", "-f", "-", "-c", str(config))
    assert code == cli.EXIT_USAGE and "<stdin>:2: " in err


def test_an_unreadable_database_says_so_with_the_fix() -> None:
    with tempfile.TemporaryDirectory() as name:
        home = Path(name)
        home.chmod(0o755)  # the config readable by all, the state_dir by its owner only
        config = home / "porttrap.toml"
        config.write_text(f'state_dir = "{home / "state"}"\n')
        _unreadable(home, config)


def _unreadable(tmp_path: Path, config: Path) -> None:
    SQLiteStore.open(tmp_path / "state" / "porttrap.db").close()  # state 0700, db 0600
    root = os.geteuid() == 0
    if not root:
        (tmp_path / "state").chmod(0)
    elif _as_nobody([sys.executable, "-c", "import porttrap"]).returncode:
        pytest.skip("nobody cannot run this checkout's Python (the in-process test stays)")
    for command in ("bans", "history"):
        argv = [sys.executable, "-m", "porttrap", "-c", str(config), command]
        done = _as_nobody(argv) if root else subprocess.run(argv, capture_output=True, text=True,
                                                            timeout=60, check=False)  # fmt: skip
        assert done.returncode == cli.EXIT_ERROR, done.stderr
        assert done.stderr.splitlines() == [
            f"porttrap: error: permission denied reading {tmp_path / 'state' / 'porttrap.db'}: "
            "the database is root's; run this as root (sudo porttrap ...), or give -c a "
            "config whose state_dir you may read"
        ]
    (tmp_path / "state").chmod(0o700)


def _as_nobody(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          user="nobody", group="nogroup", extra_groups=[])  # fmt: skip


def test_a_database_without_read_permission_in_process(
    capsys: pytest.CaptureFixture[str],
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = tmp_path / "state" / "porttrap.db"
    log.setup(verbose=False)  # to this test's stderr: the store's open logs its creation
    SQLiteStore.open(database).close()
    capsys.readouterr()
    monkeypatch.setattr("porttrap.store.sqlite.os.access", lambda *_args: False)
    code, _, err = run(capsys, "history", "-c", str(config))
    assert code == cli.EXIT_ERROR and len(err.splitlines()) == 1
    assert f"permission denied reading {database}: the database is root's" in err


def test_the_admins_reason_is_checked() -> None:
    assert requests.ban({"targets": ["203.0.113.7"]}).reason is None
    assert requests.ban({"targets": ["203.0.113.7"], "reason": " spam "}).reason == "spam"
    for bad in ("", "   ", "two\nlines", "x" * 201, 7):
        with pytest.raises(UsageError, match="reason"):
            requests.ban({"targets": ["203.0.113.7"], "reason": bad})


def test_unban_all_requests_are_checked() -> None:
    assert requests.unban({"all": True}).everything
    for bad in ({"all": True, "targets": ["203.0.113.7"]}, {"all": True, "fleet": True}):
        with pytest.raises(UsageError, match="--all"):
            requests.unban(bad)


def test_exit_codes_follow_the_table() -> None:
    assert cli.exit_code(UsageError("x")) == 2
    assert cli.exit_code(Refused("x")) == 5
    assert cli.exit_code(OSError("x")) == 1
    assert (cli.EXIT_NOT_RUNNING, cli.EXIT_NOT_RECORDED) == (3, 4)


def test_docs_cli_lists_every_exit_code() -> None:
    text = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    for code in (0, 1, 2, 3, 4, 5, 130):
        assert f"\n| {code} |" in text, code


def test_docs_cli_gives_every_commands_exit_paths() -> None:
    text = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`([a-z-]+)[ `]", row.split("|")[1])}
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) <= listed


def test_an_address_held_by_a_prefix_ban_is_told_the_prefix_and_the_allow_list() -> None:
    """A prefix ban's answer (`prefix_bans`) adds its reason and the other way out: the allow
    list, around which a reload carves the prefix; an admin's network ban keeps the plain line."""
    reason = "prefix 203.0.113.0/24 from 203.0.113.1, 203.0.113.2, 203.0.113.3"
    line = commands._held("203.0.113.9", "203.0.113.0/24", {"203.0.113.0/24": reason})
    assert f"inside the ban on 203.0.113.0/24 ({reason})" in line
    assert "`porttrap unban 203.0.113.0/24`" in line and "[allow] addresses" in line
    plain = commands._held("203.0.113.9", "203.0.113.0/24", {})
    assert "[allow]" not in plain and "(and ban the rest again)" in plain
