"""`porttrap demo`'s pure parts: which namespaces and directories are stale, the config it
writes, its log reading, its signal guard and its terminal output. The demo itself, with real
namespaces and a real daemon, is tested in tests/integration/test_demo.py."""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import shutil
import signal
import subprocess  # noqa: TID251 - a real child whose end makes a dead owner
import sys
from pathlib import Path

import pytest

from porttrap.cli import demo as cli_demo
from porttrap.config import loader as config
from porttrap.config.schema import Escalation, TrapMode
from porttrap.demo import lab, names, plan, run, script
from porttrap.errors import PorttrapError
from porttrap.firewall import kernel
from porttrap.model import Proto
from porttrap.testing import FakeClock

OWNER = names.Owner(pid=4242, start=987654)


def fake_proc(tmp_path: Path, pid: int, comm: str, state: str, start: int) -> Path:
    """A /proc with one process, its stat line as the kernel writes it."""
    rest = [state, "1", "1", "1", "0", "-1", "4194560"] + ["0"] * 12 + [str(start), "0"]
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
    return tmp_path


# -- names: whose namespace is it, and is its demo gone? -----------------------------------


def test_a_namespace_name_carries_its_owner_and_role() -> None:
    host = names.netns_name(OWNER, names.HOST)
    assert host == "porttrap-demo-4242-987654-host"
    assert names.netns_owner(host) == OWNER
    assert names.netns_owner(names.netns_name(OWNER, names.SCANNER)) == OWNER


@pytest.mark.parametrize(
    "name",
    [
        "pt-3f733041",  # a test's namespace
        "try",  # setup.sh's try-out namespace
        "porttrap-demo-4242-987654",  # no role
        "porttrap-demo-4242-987654-hostile",
        "porttrap-demo-4242-987654-host-2",
        "porttrap-demo-x-987654-host",
        "porttrap-demo-4242-host",  # no start time: an older scheme, not ours to judge
        "xporttrap-demo-4242-987654-host",
    ],
)
def test_a_name_that_is_not_a_demo_namespace_has_no_owner(name: str) -> None:
    assert names.netns_owner(name) is None
    assert names.stale([name], names.netns_owner, lambda owner: False) == []


def test_a_temporary_directory_name_carries_its_owner() -> None:
    assert names.temp_owner(OWNER.tag + "3vkqdr14") == OWNER
    assert names.temp_owner(OWNER.tag + "a_b") == OWNER
    assert names.temp_owner(OWNER.tag) is None
    assert names.temp_owner(OWNER.tag + "x/..") is None
    assert names.temp_owner("porttrap-demo-4242-987654-host") == OWNER  # a dir, not a netns:
    # it is only ever looked for in the temporary directory, among directories


def test_stale_names_are_those_whose_owner_is_gone() -> None:
    gone = names.Owner(100, 5)
    living = names.Owner(200, 6)
    listing = [
        names.netns_name(living, names.HOST),
        names.netns_name(gone, names.SCANNER),
        "pt-abc",
        names.netns_name(gone, names.HOST),
        names.netns_name(living, names.SCANNER),
    ]
    found = names.stale(listing, names.netns_owner, lambda owner: owner == living)
    assert found == [names.netns_name(gone, names.HOST), names.netns_name(gone, names.SCANNER)]


def test_a_process_is_read_from_proc_with_its_start_time(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, "python3 (x) y", "S", 987654)
    assert names.process(4242, proc) == OWNER
    assert names.alive(OWNER, proc)


def test_a_reused_pid_is_not_the_owner(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 4242, "bash", "R", 999999)  # same PID, started later
    assert not names.alive(OWNER, proc)
    listing = [names.netns_name(OWNER, names.HOST)]
    assert names.stale(listing, names.netns_owner, lambda o: names.alive(o, proc)) == listing


@pytest.mark.parametrize("state", ["Z", "X"])
def test_a_zombie_or_dead_process_is_gone(tmp_path: Path, state: str) -> None:
    assert names.process(4242, fake_proc(tmp_path, 4242, "porttrap", state, 987654)) is None


def test_no_such_process_is_gone(tmp_path: Path) -> None:
    assert names.process(4242, tmp_path) is None
    assert not names.alive(OWNER, tmp_path)


def test_this_process_is_alive_and_an_ended_child_is_not() -> None:
    me = names.process(os.getpid())
    assert me is not None and names.alive(me)
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert me.start == int(stat[stat.rindex(")") + 2 :].split()[19])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owner = names.process(child.pid)
        assert owner is not None and names.alive(owner)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert not names.alive(owner)


# -- the plan: the config the daemon gets ----------------------------------------------------


@pytest.mark.parametrize("settings", [plan.DEFAULT, plan.QUICK])
def test_the_demo_config_is_valid_and_says_what_the_story_tells(
    settings: plan.Plan, tmp_path: Path
) -> None:
    cfg = config.load_text(settings.config(tmp_path / "state"), None)
    assert cfg.state_dir == tmp_path / "state"
    assert sorted((t.proto, t.port) for t in cfg.traps) == sorted(
        [(Proto.TCP, p) for p in plan.TRAPS_TCP] + [(Proto.UDP, p) for p in plan.TRAPS_UDP]
    )
    assert plan.SERVICE_PORT not in {t.port for t in cfg.traps}
    assert (cfg.modes.tcp, cfg.modes.udp) == (TrapMode.CONNECT, TrapMode.CONNECT)
    assert cfg.ban.time == settings.ban_time
    assert cfg.ban.escalation is Escalation.QUADRATIC
    assert cfg.ban.permanent_after == plan.PERMANENT_AFTER
    assert cfg.ban.confirm == 2
    assert cfg.firewall.table == plan.TABLE


def test_ban_lengths_escalate_quadratically() -> None:
    assert [plan.DEFAULT.length(n) for n in (1, 2)] == [4, 16]
    assert [plan.QUICK.length(n) for n in (1, 2)] == [2, 8]


# -- reading the daemon's log --------------------------------------------------------------


def test_the_log_tail_gives_new_complete_event_lines_once(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    tail = script.LogTail(path)
    assert tail.new_events() == []  # no file yet
    path.write_text(
        "level=info event=trap-set proto=tcp port=23\n"
        "level=info event=start pid=7\n"
        "level=info event=hit src=192.0.2.66 port=23 outcome=banned\n"
        "level=info event=ban address=192.0.2.66 ban_cou"  # still being written
    )
    assert tail.new_events() == ["event=start pid=7", "event=hit src=192.0.2.66 port=23 "
                                 "outcome=banned"]  # fmt: skip
    with path.open("a") as log:
        log.write("nt=1\nlevel=warning event=ban-expired address=192.0.2.66\n")
    assert tail.new_events() == [
        "event=ban address=192.0.2.66 ban_count=1",
        "level=warning event=ban-expired address=192.0.2.66",
    ]
    assert tail.new_events() == []


# -- signals -------------------------------------------------------------------------------


def test_the_guard_raises_once_then_only_remembers() -> None:
    guard = run.Guard()
    with pytest.raises(run.Interrupted) as raised:
        guard.handle(signal.SIGTERM, None)
    assert raised.value.signum == signal.SIGTERM and str(raised.value) == "SIGTERM"
    guard.handle(signal.SIGINT, None)  # during the cleanup: remembered, not raised
    assert guard.pending == signal.SIGINT


def test_a_disarmed_guard_never_raises() -> None:
    guard = run.Guard()
    guard.disarm()
    guard.handle(signal.SIGINT, None)
    assert guard.pending == signal.SIGINT


def test_guarded_installs_and_restores_the_handlers() -> None:
    before = {sig: signal.getsignal(sig) for sig in run.SIGNALS}
    with run.guarded() as guard:
        for sig in run.SIGNALS:
            assert signal.getsignal(sig) == guard.handle
        with pytest.raises(run.Interrupted):
            signal.raise_signal(signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in run.SIGNALS} == before


# -- what the machine lacks ------------------------------------------------------------------


def test_every_missing_requirement_is_named_with_its_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(shutil, "which", lambda program: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(kernel, "SYSTEM_SITE", tmp_path)  # not installed either
    missing = lab.requirements()
    assert len(missing) == 4
    assert "must run as root" in missing[0]
    assert missing[1].endswith("apt-get install iproute2") and "`ip`" in missing[1]
    assert missing[2].endswith("apt-get install nftables") and "`nft`" in missing[2]
    assert "apt-get install nftables python3-nftables" in missing[3]


def test_the_demo_refuses_to_start_without_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out = io.StringIO()
    say = cli_demo.Terminal(out, False, FakeClock())
    with pytest.raises(PorttrapError, match=r"porttrap demo cannot run here: .*as root"):
        run.run(plan.QUICK, say, FakeClock())
    assert out.getvalue() == ""  # refused before anything was made or told


# -- the terminal ----------------------------------------------------------------------------


def test_the_terminal_stamps_each_line_and_colours_only_when_asked() -> None:
    clock = FakeClock()
    out = io.StringIO()
    plain = cli_demo.Terminal(out, False, clock)
    clock.advance(2.25)
    plain.section("1. starts")
    plain.good("up")
    plain.output("$ porttrap bans\nno active bans")
    assert out.getvalue().splitlines() == [
        "",
        "[  2.2s] == 1. starts",
        "[  2.2s] ok up",
        "[  2.2s]      | $ porttrap bans",
        "[  2.2s]      | no active bans",
    ]
    out = io.StringIO()
    cli_demo.Terminal(out, True, clock).bad("no ban")
    assert out.getvalue() == "\033[1;31m[  0.0s] !! no ban\033[0m\n"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "no_color_flag", "no_color_env", "expected"),
    [
        (True, False, None, True),
        (False, False, None, False),  # a pipe or a file
        (True, True, None, False),  # --no-color
        (True, False, "1", False),  # NO_COLOR=1
    ],
)
def test_colour_only_on_a_terminal_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch,
    tty: bool,
    no_color_flag: bool,
    no_color_env: str | None,
    expected: bool,
) -> None:
    if no_color_env is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color_env)
    args = argparse.Namespace(no_color=no_color_flag)
    out = _Tty() if tty else io.StringIO()
    assert cli_demo.use_color(args, out) is expected
