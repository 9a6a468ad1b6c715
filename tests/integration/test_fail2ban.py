"""fail2ban's own fail2ban-regex reads porttrap's compatible lines as fail2ban users expect: every
line that names a scanner matches with that scanner's address (and, where the line has one,
its time), and nothing else matches. Lines come from porttrap's formatters fed the recorded
events of tests/data/logs; test_log_daemon.py does the same with a real daemon's files.

- portsentry-history, with the filter fail2ban ships (filter.d/portsentry.conf);
- net-bouncer, with the filter of net-bouncer's README;
- portsentry (a file: syslog-style lines), with a filter of the kind people wrote for
  PortSentry's syslog alerts (fail2ban ships none)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from fail2ban_regex import Fail2ban, find
from logsamples import SCENARIOS, render, sample
from porttrap.logformats import ALERT_OUTCOMES, HISTORY_OUTCOMES, SCAN_OUTCOMES


@pytest.fixture
def fail2ban() -> Fail2ban:
    return find()


def scanners(name: str, outcomes: Iterable[str]) -> list[tuple[str, float]]:
    """(address, time) of the sample's hits with these outcomes that are not debug events."""
    wanted = set(outcomes)
    return [
        (event["fields"]["src"], event["at"])
        for event in sample(name).events
        if event["name"] == "hit"
        and event["level"] != "debug"
        and event["fields"]["outcome"] in wanted
    ]


def spared(name: str) -> set[str]:
    """Addresses in the sample that no compatible line may name: protected sources, and
    sources of debug events only (hits that cannot prove their source and did not ban)."""
    named = {address for address, _ in scanners(name, SCAN_OUTCOMES)}
    every = {e["fields"]["src"] for e in sample(name).events if "src" in e["fields"]}
    return every - named


def write(path: Path, *groups: list[str]) -> Path:
    path.write_text("".join(line + "\n" for group in groups for line in group))
    return path


@pytest.mark.parametrize("name", SCENARIOS)
def test_fail2bans_portsentry_filter_reads_every_history_line(
    name: str, fail2ban: Fail2ban, tmp_path: Path
) -> None:
    lines = render(sample(name))
    # The history file alone is what the jail reads; porttrap's own lines and PortSentry's
    # syslog alerts beside them must not match the history filter.
    log = write(tmp_path / "mixed", lines["portsentry-history"], lines["porttrap"],
                lines["portsentry"])  # fmt: skip
    found = fail2ban.matches(log, fail2ban.stock_filters / "portsentry.conf")
    assert [(m.host, m.time) for m in found] == [
        (address, float(int(at))) for address, at in scanners(name, HISTORY_OUTCOMES)
    ]
    assert [m.line for m in found] == lines["portsentry-history"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_net_bouncers_filter_reads_every_connection_line(
    name: str, fail2ban: Fail2ban, tmp_path: Path
) -> None:
    lines = render(sample(name))
    log = write(tmp_path / "net-bouncer.log", lines["net-bouncer"])
    found = fail2ban.matches(log, fail2ban.filters(tmp_path) / "net-bouncer.conf")
    assert [(m.host, m.time) for m in found] == [
        (address, float(int(at))) for address, at in scanners(name, SCAN_OUTCOMES)
    ]
    assert not {m.host for m in found} & spared(name)


@pytest.mark.parametrize("name", SCENARIOS)
def test_a_portsentry_alert_filter_reads_the_scan_alerts_of_a_log_file(
    name: str, fail2ban: Fail2ban, tmp_path: Path
) -> None:
    lines = render(sample(name))
    log = write(tmp_path / "alerts.log", lines["portsentry-file"])
    found = fail2ban.matches(log, fail2ban.filters(tmp_path) / "portsentry-attackalert.conf")
    assert [m.host for m in found] == [address for address, _ in scanners(name, ALERT_OUTCOMES)]
    assert all(" from host: " in m.line for m in found)  # not the block or "Ignoring" lines
    assert not {m.host for m in found} & spared(name)


def test_fail2ban_regex_is_the_packaged_one(fail2ban: Fail2ban) -> None:
    """The stock filter is the one Debian ships, not a copy of ours."""
    text = (fail2ban.stock_filters / "portsentry.conf").read_text()
    assert r"failregex = \/<HOST> Port\: [0-9]+ (TCP|UDP) Blocked$" in text
