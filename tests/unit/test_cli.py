"""The command line without a daemon: exit codes, one-line errors, check-config output."""

from __future__ import annotations

import shlex
import subprocess  # noqa: TID251 - runs the CLI as a user would
import sys
from ipaddress import ip_network
from pathlib import Path

import pytest

from porttrap.cli.main import main
from porttrap.model import Ban
from porttrap.store.sqlite import SQLiteStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "porttrap.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n[traps]\ntcp = ["23", "5900-5902"]\n'
                    'udp = []\n[allow]\naddresses = ["192.0.2.0/24"]\n')  # fmt: skip
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_summarises_a_valid_file(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, out, _ = run(capsys, "check-config", "-c", str(config))
    assert code == 0
    assert out == (f"{config}: OK (TCP: 4 trap ports, connect mode; UDP: 0 trap ports, "
                   "connect mode; 1 allow-list entries, backend nftables)\n")  # fmt: skip


def test_check_config_summarises_the_trap_modes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "modes.toml"
    config.write_text('[traps]\nmode = { tcp = "advanced", udp = "stealth" }\nudp = ["69"]\n')
    code, out, _ = run(capsys, "check-config", "-c", str(config))
    assert code == 0
    assert "TCP: advanced mode, 65533 ports watched unless served" in out
    assert "UDP: 1 trap ports, stealth mode" in out


def test_check_config_summarises_respond_actions_and_log_outputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "acts.toml"
    config.write_text(
        '[traps]\nmode = "connect"\n[ban]\nrespond = { udp = "log" }\n'
        '[[actions.command]]\nrun = ["/bin/true", "$TARGET$"]\n'
        '[[actions.webhook]]\nurl = "https://hooks.example.org/x"\n'
        '[[actions.notify]]\nurls = "json://127.0.0.1:8080/porttrap"\n'
        '[[log.output]]\nto = "syslog"\nformat = "portsentry"\n'
    )
    code, out, _ = run(capsys, "check-config", "-c", str(config))
    assert code == 0
    assert out.splitlines()[1:] == [
        "  respond: tcp ban, udp log",
        "  actions: 1 command(s), 1 webhook(s), 1 notification(s)",
        "  log: syslog (portsentry)",
    ]


def test_check_config_lists_every_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[ban]\ntme = "1h"\nwindow = "soon"\n[firewall]\nbackend = "iptables"\n')
    code, out, err = run(capsys, "check-config", "-c", str(bad))
    lines = err.splitlines()
    assert (code, out, len(lines)) == (2, "", 3)
    assert lines[0].startswith(f"porttrap: config error: {bad}:2: [ban.tme]")
    assert "did you mean" in lines[0] and "time" in lines[0]
    assert lines[1].startswith(f"porttrap: config error: {bad}:3: [ban.window]")
    assert lines[2].startswith(f"porttrap: config error: {bad}:5: [firewall.backend]")


def test_run_refuses_an_invalid_config_before_anything_else(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[traps]\ntcp = ["70000"]\n')
    code, _, err = run(capsys, "run", "-c", str(bad))
    assert code == 2 and "traps.tcp[0]" in err
    assert not (tmp_path / "state").exists()


def test_missing_config_file_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "status", "-c", str(tmp_path / "nope.toml"))
    assert code == 2 and len(err.splitlines()) == 1 and "nope.toml" in err


def test_status_without_daemon_exits_3(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, out, _ = run(capsys, "status", "-c", str(config))
    assert (code, out) == (3, "porttrap is not running\n")


def test_status_without_daemon_counts_the_stored_bans(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    with SQLiteStore.open(tmp_path / "state" / "porttrap.db") as store:
        store.add_bans([Ban(ip_network("2001:db8::7"), 1e9, None, 1, "manual")])
    code, out, _ = run(capsys, "status", "-c", str(config))
    assert (code, out) == (
        3,
        "porttrap is not running\nbans: 1 active, 1 of them permanent\n",
    )


@pytest.mark.parametrize("command", [["ban", "198.51.100.7"], ["unban", "198.51.100.7"]])
def test_ban_and_unban_need_the_daemon(
    capsys: pytest.CaptureFixture[str], config: Path, command: list[str]
) -> None:
    code, _, err = run(capsys, *command, "-c", str(config))
    assert code == 3
    assert err.startswith("porttrap: porttrap is not running")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_arguments_are_one_line(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = run(capsys, "ban", "198.51.100.7", "--for", "soon", "-c", str(config))
    assert code == 2 and "--for: bad duration 'soon'" in err
    code, _, err = run(capsys, "history", "198.51.100.7/24", "-c", str(config))
    assert code == 2 and "did you mean 198.51.100.0/24" in err
    code, _, err = run(capsys, "ban", "-c", str(config))
    assert code == 2 and "give at least one ADDRESS" in err


def test_bans_before_the_first_run_says_why(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    code, _, err = run(capsys, "bans", "-c", str(config))
    assert code == 1 and "has not run yet" in err and len(err.splitlines()) == 1


def test_verbose_shows_the_traceback(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    code, _, err = run(capsys, "bans", "-v", "-c", str(config))
    assert code == 1 and "Traceback" in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("porttrap 0.")
    with pytest.raises(SystemExit):
        main(["ban", "--help"])
    assert "--permanent" in capsys.readouterr().out


def test_a_closed_pipe_is_not_an_error(config: Path, tmp_path: Path) -> None:
    store = SQLiteStore.open(tmp_path / "state" / "porttrap.db")
    bans = [Ban(ip_network(f"2001:db8::{n:x}"), 1e9, None, 1, "manual") for n in range(1, 5000)]
    store.add_bans(bans)
    store.close()
    # far more than a pipe holds, so the write fails once head has gone
    listing = shlex.join([sys.executable, "-m", "porttrap", "bans", "--json", "-c", str(config)])
    script = f"{listing} | head -c 1"
    piped = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=False)
    assert piped.stdout == "["
    assert piped.stderr == ""
