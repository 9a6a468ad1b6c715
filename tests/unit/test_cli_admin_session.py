"""The first line of `porttrap run` from an SSH session: whether the session's peer is safe
from bans (the decision itself: tests/unit/test_sshsession.py)."""

from __future__ import annotations

import argparse
import logging
from ipaddress import ip_network
from pathlib import Path

import pytest

from porttrap import log, sshsession
from porttrap.cli import commands
from porttrap.config.schema import AllowList, Config, Protect
from porttrap.daemon import wiring
from porttrap.log import FIELDS_ATTR

SESSION = "203.0.113.5 50022 192.0.2.1 22"


@pytest.fixture(autouse=True)
def sshd_on_22(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sshsession, "sshd_ports", lambda: ((22,), ""))


def admin_events(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("event=admin-session ")]


def test_a_session_to_sshd_s_port_is_logged_as_protected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "porttrap")
    commands.log_admin_session(Config(), SESSION)
    [record] = admin_events(caplog)
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "event=admin-session peer=203.0.113.5 port=22 protected=yes "
        'why="live SSH session to port 22 (never banned by a trap hit)" ssh_ports=22 source=sshd'
    )


def test_a_session_porttrap_cannot_protect_is_a_warning_with_the_fix(
    caplog: pytest.LogCaptureFixture,
) -> None:
    commands.log_admin_session(Config(protect=Protect(ssh_ports=(2200,))), SESSION)
    [record] = admin_events(caplog)
    assert record.levelno == logging.WARNING
    values = getattr(record, FIELDS_ATTR)
    assert (values["protected"], values["source"]) == ("no", "config")
    assert "add 22 to [protect] ssh_ports" in values["why"]


def test_an_allow_listed_peer_is_protected_whatever_the_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "porttrap")
    allow = AllowList(networks=(ip_network("203.0.113.0/24"),))
    commands.log_admin_session(Config(allow=allow), "203.0.113.5 50022 192.0.2.1 2222")
    [record] = admin_events(caplog)
    assert getattr(record, FIELDS_ATTR)["why"] == "on the allow list, [allow] (never banned)"


@pytest.mark.parametrize("value", [None, "", "not an ssh connection"])
def test_outside_an_ssh_session_nothing_is_logged(
    value: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "porttrap")
    commands.log_admin_session(Config(), value)
    assert admin_events(caplog) == []


def test_run_logs_the_session_before_anything_else(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "porttrap")
    config = tmp_path / "porttrap.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    monkeypatch.setenv("SSH_CONNECTION", SESSION)
    monkeypatch.setattr(log, "configure", lambda cfg, verbose: None)
    monkeypatch.setattr(wiring, "run", lambda cfg, **_: log.event("start"))
    args = argparse.Namespace(config=config, verbose=False, flush_on_exit=False)
    assert commands.run(args) == 0
    names = [r.getMessage().split(" ")[0] for r in caplog.records]
    assert names == ["event=admin-session", "event=start"]
