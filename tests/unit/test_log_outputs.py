"""`[log]` outputs for real: files (created 0640, appended, reopened after a rename as logrotate
does it), syslog to a datagram socket bound in a temp dir, levels, and the errors at start.
The daemon's SIGHUP is tested end to end in tests/integration/test_log_daemon.py."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from porttrap import log
from porttrap.config.loader import load_text
from porttrap.errors import PorttrapError
from porttrap.logoutputs import FileOutput
from porttrap.model import Outcome, Proto

ATTACKER = ipaddress.ip_address("198.51.100.7")
PORTSENTRY = "attackalert: Connect from host: 198.51.100.7/198.51.100.7 to TCP port: 23"
LOCAL3_INFO, DAEMON_DEBUG, DAEMON_WARNING = 19 * 8 + 6, 3 * 8 + 7, 3 * 8 + 4


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() replaces the root logger's outputs: put pytest's back afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in saved:
            handler.close()
    root.handlers[:] = saved
    root.setLevel(level)


def configure(toml: str, verbose: bool = False, syslog: Path | None = None) -> None:
    config = load_text(toml, None)
    if syslog is None:
        log.configure(config, verbose)
    else:
        log.configure(config, verbose, syslog_address=str(syslog))


def output(to: Path | str, form: str = "porttrap", extra: str = "") -> str:
    return f'[[log.output]]\nto = "{to}"\nformat = "{form}"\n{extra}'


def hit(outcome: Outcome = Outcome.BANNED, level: int = logging.INFO) -> None:
    log.event("hit", level, src=ATTACKER, sport=40000, dst=ipaddress.ip_address("203.0.113.1"),
              port=23, proto=Proto.TCP, kind="connect", outcome=outcome)  # fmt: skip


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --- files ---


def test_a_new_file_is_created_0640_and_gets_every_line(tmp_path: Path) -> None:
    path = tmp_path / "porttrap.log"
    old_umask = os.umask(0o022)
    try:
        configure(output(path))
    finally:
        os.umask(old_umask)
    log.event("start", version="0.1.0")
    hit()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert lines(path) == [
        "level=info event=start version=0.1.0",
        "level=info event=hit src=198.51.100.7 sport=40000 dst=203.0.113.1 port=23 proto=tcp "
        "kind=connect outcome=banned",
    ]


def test_an_existing_file_is_appended_to_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "porttrap.log"
    path.write_text("earlier\n")
    path.chmod(0o600)
    configure(output(path))
    log.event("stop", pid=1)
    assert lines(path) == ["earlier", "level=info event=stop pid=1"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopen_after_a_rename_writes_a_new_file_at_the_path(tmp_path: Path) -> None:
    """logrotate renames porttrap.log to porttrap.log.1, then sends SIGHUP."""
    path, rotated = tmp_path / "porttrap.log", tmp_path / "porttrap.log.1"
    history = tmp_path / "portsentry.history"
    configure(output(path) + output(history, "portsentry-history"))
    hit()
    path.rename(rotated)
    history.rename(tmp_path / "portsentry.history.1")
    log.event("before-reopen")  # still goes to the renamed file: it is the one open
    assert log.reopen() == 2
    log.event("after-reopen")
    hit()
    assert lines(rotated)[-1] == "level=info event=before-reopen"
    assert lines(path)[0] == "level=info event=after-reopen"
    assert len(lines(path)) == 2
    assert len(lines(history)) == 1
    assert lines(history)[0].endswith(" Host: 198.51.100.7/198.51.100.7 Port: 23 TCP Blocked")


def test_a_file_that_cannot_be_reopened_keeps_the_old_one_and_says_so(tmp_path: Path) -> None:
    directory, other = tmp_path / "logs", tmp_path / "other.log"
    directory.mkdir()
    path = directory / "porttrap.log"
    configure(output(path) + output(other))
    path.unlink()
    directory.rmdir()
    assert log.reopen() == 1
    log.event("still-written")
    assert lines(other) == [
        f'level=error event=log-reopen-failed path={path} error="No such file or directory"',
        "level=info event=still-written",
    ]
    stream = next(h for h in logging.getLogger().handlers if isinstance(h, FileOutput))
    assert stream.path == path and not stream.stream.closed


def test_a_file_that_cannot_be_opened_stops_the_start_and_keeps_the_old_outputs(
    tmp_path: Path,
) -> None:
    before = list(logging.getLogger().handlers)
    missing = tmp_path / "no-such-dir" / "porttrap.log"
    with pytest.raises(PorttrapError) as raised:
        configure(output(tmp_path / "ok.log") + output(missing, "json"))
    assert str(raised.value) == (
        f"cannot open log file {missing} (log.output[1].to): No such file or directory; "
        f"create the directory {missing.parent} first (porttrap does not create it)"
    )
    assert logging.getLogger().handlers == before


def test_a_directory_is_not_a_log_file(tmp_path: Path) -> None:
    with pytest.raises(PorttrapError, match="it is a directory: give the path of a file in it"):
        configure(output(tmp_path))


# --- levels ---


def test_level_and_verbose(tmp_path: Path) -> None:
    """`level` applies to porttrap and json outputs, -v forces debug there; compatible outputs
    take info and above whatever the level: their alerts are what a fail2ban jail reads."""
    own, alerts = tmp_path / "own.log", tmp_path / "alerts.log"
    setup = '[log]\nlevel = "warning"\n' + output(own) + output(alerts, "net-bouncer")
    configure(setup)
    hit()
    log.event("firewall-missing", logging.WARNING, table="porttrap")
    assert lines(own) == ["level=warning event=firewall-missing table=porttrap"]
    assert len(lines(alerts)) == 1

    configure(setup, verbose=True)
    hit(Outcome.COUNTED, logging.DEBUG)  # a probe that did not ban: debug
    assert lines(own)[-1].startswith("level=debug event=hit ")
    assert len(lines(alerts)) == 1


def test_compatible_outputs_skip_events_they_have_no_line_for(tmp_path: Path) -> None:
    path = tmp_path / "alerts.log"
    configure(output(path, "portsentry"))
    log.event("start", version="0.1.0")
    hit(Outcome.ALLOWED)
    log.event("ban", address="198.51.100.7", ban_count=1, reason="trap:tcp/23")
    assert [line.split(": ", 1)[1] for line in lines(path)] == [
        "attackalert: Host 198.51.100.7 has been blocked via dropped route using command: "
        '"porttrap ban 198.51.100.7"'
    ]
    assert lines(path)[0].split()[4] == f"porttrap[{os.getpid()}]:"


def test_setup_keeps_writing_porttrap_lines_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log.setup()
    log.event("hits-pruned", count=3)
    log.event("quiet", logging.DEBUG)
    assert capsys.readouterr().err == "level=info event=hits-pruned count=3\n"


# --- syslog ---


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A datagram socket standing in for /dev/log."""
    address = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(address))
        server.settimeout(5)
        yield address, server


def received(server: socket.socket, count: int) -> list[str]:
    return [server.recv(4096).decode() for _ in range(count)]


def test_syslog_gets_one_message_per_line_with_ident_and_facility(
    syslog_socket: tuple[Path, socket.socket],
) -> None:
    address, server = syslog_socket
    configure(output("syslog", "portsentry", 'facility = "local3"\n'), syslog=address)
    hit(Outcome.ALREADY_BANNED)
    ident = f"porttrap[{os.getpid()}]: "
    assert received(server, 2) == [
        f"<{LOCAL3_INFO}>{ident}{PORTSENTRY}",
        f"<{LOCAL3_INFO}>{ident}attackalert: Host: 198.51.100.7 is already blocked. Ignoring",
    ]


def test_syslog_severity_follows_the_level(syslog_socket: tuple[Path, socket.socket]) -> None:
    address, server = syslog_socket
    configure(output("syslog"), verbose=True, syslog=address)
    log.event("quiet", logging.DEBUG)
    log.event("firewall-missing", logging.WARNING, table="porttrap")
    ident = f"porttrap[{os.getpid()}]: "
    assert received(server, 2) == [
        f"<{DAEMON_DEBUG}>{ident}level=debug event=quiet",
        f"<{DAEMON_WARNING}>{ident}level=warning event=firewall-missing table=porttrap",
    ]


def test_syslog_that_listens_nowhere_stops_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "log"
    with pytest.raises(PorttrapError) as raised:
        configure(output("stderr") + output("syslog"), syslog=missing)
    assert str(raised.value) == (
        f"cannot log to syslog (log.output[1]): {missing}: No such file or directory; no syslog "
        "daemon listens there (start systemd-journald or rsyslog), or log to a file or stderr "
        "instead"
    )


def test_syslog_reconnects_once_when_its_daemon_restarted(tmp_path: Path) -> None:
    address = tmp_path / "log"
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(str(address))
    configure(output("syslog"), syslog=address)
    first.close()
    address.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as second:
        second.bind(str(address))
        second.settimeout(5)
        log.event("after-restart")
        assert second.recv(4096).decode().endswith("level=info event=after-restart")
