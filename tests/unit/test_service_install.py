"""install-service and uninstall-service on a real file tree under a temporary root, with
systemctl and the firewall faked: which files appear with which modes, what systemctl is asked,
what is refused before anything is written, and what removal leaves."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from porttrap import sshsession
from porttrap.config import loader as config_mod
from porttrap.config.schema import Config
from porttrap.errors import ConfigError, PorttrapError
from porttrap.service import install as service
from porttrap.service.template import DEFAULT_CONFIG

EXE = Path("/opt/porttrap/venv/bin/porttrap")


class FakeSystemd:
    def __init__(self, running: bool = False) -> None:
        self.is_running = running
        self.calls: list[tuple[str, ...]] = []

    def running(self) -> bool:
        return self.is_running

    def systemctl(self, *args: str) -> str:
        self.calls.append(args)
        if args[-2:] == ("reset-failed", "porttrap.service"):
            raise PorttrapError("Unit porttrap.service not loaded.")
        return ""


class Run:
    """One root directory, its notes, the fake systemd and firewall teardowns."""

    def __init__(self, tmp_path: Path, running: bool = False) -> None:
        self.root = tmp_path / "root"
        self.root.mkdir(exist_ok=True)
        self.notes: list[str] = []
        self.systemd = FakeSystemd(running)
        self.torn_down: list[Config] = []

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def install(self, **options: object) -> None:
        root = service.Root(Path("/")) if options.pop("live", False) else service.Root(self.root)
        request = service.InstallRequest(EXE, root=root, **options)  # type: ignore[arg-type]
        service.install(request, self.systemd, self.notes.append)

    def uninstall(self, **options: object) -> None:
        request = service.UninstallRequest(root=service.Root(self.root), **options)  # type: ignore[arg-type]
        service.uninstall(request, self.systemd, self._teardown, self.notes.append)

    def _teardown(self, cfg: Config) -> list[str]:
        self.torn_down.append(cfg)
        return [f"removed nftables table inet {cfg.firewall.table}"]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    made = Run(tmp_path)
    (made.root / "opt/porttrap/venv/bin").mkdir(parents=True)
    exe = made.path(str(EXE))
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return made


def tree(root: Path) -> dict[str, tuple[str, str]]:
    """Every path under `root`: its mode and its content (or link target)."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if path.is_symlink():
            content = "-> " + str(path.readlink())
        elif path.is_file():
            content = path.read_text()
        else:
            content = ""
        found[str(path.relative_to(root))] = (oct(info.st_mode), content)
    return found


# -- install -----------------------------------------------------------------------------


def test_install_offline_writes_unit_config_and_state_and_enables_with_root(run: Run) -> None:
    run.install()
    unit_file = run.path("/etc/systemd/system/porttrap.service")
    assert f"ExecStart={EXE} run -c /etc/porttrap/porttrap.toml" in unit_file.read_text()
    assert oct(unit_file.stat().st_mode & 0o777) == "0o644"
    config = run.path("/etc/porttrap/porttrap.toml")
    assert config.read_text() == DEFAULT_CONFIG
    assert oct(config.stat().st_mode & 0o777) == "0o600"  # webhook headers may hold tokens
    assert oct(config.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(run.path("/var/lib/porttrap").stat().st_mode & 0o777) == "0o700"
    assert run.systemd.calls == [(f"--root={run.root}", "enable", "porttrap.service")]
    assert f"installed into {run.root}" in run.notes[-1]


def test_install_twice_changes_nothing_the_second_time(run: Run) -> None:
    run.install()
    before = tree(run.root)
    run.notes.clear()
    run.install()
    assert tree(run.root) == before
    assert any("is up to date" in n for n in run.notes)
    assert any("kept" in n and "porttrap.toml" in n for n in run.notes)


def test_live_install_reloads_systemd_then_enables_and_starts(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "check_executable", lambda *_: None)
    monkeypatch.setattr(service.Root, "__call__", lambda _self, p: run.root / p.relative_to("/"))
    run.systemd.is_running = True
    run.install(live=True)
    assert run.systemd.calls == [
        ("daemon-reload",),
        ("try-restart", "porttrap.service"),  # a running one gets the new unit
        ("enable", "--now", "porttrap.service"),
    ]
    run.systemd.calls.clear()
    run.install(live=True, start=False)  # unchanged: no restart; --no-start: enable only
    assert run.systemd.calls == [("daemon-reload",), ("enable", "porttrap.service")]


def live_install_from(run: Run, monkeypatch: pytest.MonkeyPatch, ssh_connection: str) -> None:
    monkeypatch.setattr(service, "check_executable", lambda *_: note_executable(run))
    monkeypatch.setattr(service.Root, "__call__", lambda _self, p: run.root / p.relative_to("/"))
    monkeypatch.setattr(sshsession, "sshd_ports", lambda: ((2222,), ""))  # not the service's
    run.install(live=True, session=sshsession.parse_ssh_connection(ssh_connection))


def note_executable(run: Run) -> None:
    run.notes.append("(the executable's notes)")


def test_from_an_ssh_session_the_first_line_says_whether_the_service_protects_it(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    live_install_from(run, monkeypatch, "203.0.113.5 50022 192.0.2.1 22")
    assert run.notes[:2] == [
        "admin session from 203.0.113.5 (port 22): protected, live SSH session to port 22 "
        "(never banned by a trap hit)",
        "(the executable's notes)",
    ]


def test_a_session_on_a_port_the_service_cannot_know_is_a_warning_with_the_fix(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sshd listens on 2222 here, but the service cannot read sshd's sockets: it assumes 22."""
    live_install_from(run, monkeypatch, "203.0.113.5 50022 192.0.2.1 2222")
    assert run.notes[0].startswith(
        "warning: admin session from 203.0.113.5 (port 2222) NOT protected: port 2222 is not a "
        "known SSH port (SSH ports 22 from default: the service cannot read sshd's sockets"
    )
    assert "add 2222 to [protect] ssh_ports" in run.notes[0]


def test_the_configured_ssh_ports_are_the_service_s(
    run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "porttrap.toml"
    config.write_text("[protect]\nssh_ports = [2222]\n")
    monkeypatch.setattr(service, "check_executable", lambda *_: None)
    monkeypatch.setattr(service.Root, "__call__", lambda _self, p: run.root / p.relative_to("/"))
    session = sshsession.parse_ssh_connection("203.0.113.5 50022 192.0.2.1 2222")
    run.install(live=True, config=config, session=session)
    assert run.notes[0].startswith("admin session from 203.0.113.5 (port 2222): protected")


def test_an_offline_install_says_nothing_of_this_machine_s_session(run: Run) -> None:
    run.install(session=sshsession.parse_ssh_connection("203.0.113.5 50022 192.0.2.1 2222"))
    assert not any("admin session" in note for note in run.notes)


def test_a_start_that_fails_says_where_porttraps_error_is(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "check_executable", lambda *_: None)
    monkeypatch.setattr(service.Root, "__call__", lambda _self, p: run.root / p.relative_to("/"))
    run.systemd.is_running = True

    def fail(*args: str) -> str:
        if "--now" in args:
            raise PorttrapError("`systemctl enable --now porttrap.service` failed (exit 1)")
        return ""

    monkeypatch.setattr(run.systemd, "systemctl", fail)
    with pytest.raises(PorttrapError, match=r"installed but did not start.*journalctl -u porttrap"):
        run.install(live=True)
    assert run.path("/etc/systemd/system/porttrap.service").exists()


def test_live_install_without_systemd_running_enables_for_the_next_boot(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "check_executable", lambda *_: None)
    monkeypatch.setattr(service.Root, "__call__", lambda _self, p: run.root / p.relative_to("/"))
    run.install(live=True)
    assert run.systemd.calls == [("enable", "porttrap.service")]
    assert "systemd is not running here" in run.notes[-1]
    assert "porttrap run" in run.notes[-1]


def test_a_differing_unit_is_refused_without_force_and_nothing_is_written(run: Run) -> None:
    unit_file = run.path("/etc/systemd/system/porttrap.service")
    unit_file.parent.mkdir(parents=True)
    unit_file.write_text("[Service]\nExecStart=/usr/bin/other\n")
    with pytest.raises(PorttrapError, match=r"exists and differs.*--force.*systemctl edit"):
        run.install()
    assert unit_file.read_text() == "[Service]\nExecStart=/usr/bin/other\n"
    assert not run.path("/etc/porttrap").exists()  # refused before writing anything
    assert not run.path("/var/lib/porttrap").exists()
    assert run.systemd.calls == []
    run.install(force=True)
    assert "Type=notify" in unit_file.read_text()


def test_an_invalid_existing_config_is_refused_with_its_errors(run: Run) -> None:
    config = run.path("/etc/porttrap/porttrap.toml")
    config.parent.mkdir(parents=True)
    config.write_text('[ban]\ntime = "soon"\ntrigerr = 2\n')
    with pytest.raises(ConfigError) as caught:
        run.install()
    problems = [str(p) for p in caught.value.problems]
    assert len(problems) == 2  # every problem at once
    assert any(f"{config}:2: [ban.time]" in p for p in problems)
    assert any("trigerr" in p for p in problems)
    assert config.read_text() == '[ban]\ntime = "soon"\ntrigerr = 2\n'
    assert not run.path("/etc/systemd/system/porttrap.service").exists()


def test_a_valid_existing_config_is_kept_and_shapes_the_unit(run: Run) -> None:
    config = run.path("/etc/porttrap/porttrap.toml")
    config.parent.mkdir(parents=True)
    text = 'state_dir = "/srv/porttrap"\n[firewall]\nbackend = "ipset"\n'
    config.write_text(text)
    run.install()
    assert config.read_text() == text
    unit_text = run.path("/etc/systemd/system/porttrap.service").read_text()
    assert "ReadWritePaths=/srv/porttrap\n" in unit_text
    assert "CAP_NET_RAW" in unit_text
    assert run.path("/srv/porttrap").is_dir()  # ReadWritePaths= needs it at start
    assert not run.path("/var/lib/porttrap").exists()


def test_config_option_installs_that_file_and_refuses_to_replace_another(
    run: Run, tmp_path: Path
) -> None:
    mine = tmp_path / "imported.toml"
    mine.write_text('[ban]\ntime = "2h"\n')
    run.install(config=mine)
    installed = run.path("/etc/porttrap/porttrap.toml")
    assert installed.read_text() == '[ban]\ntime = "2h"\n'
    mine.write_text('[ban]\ntime = "3h"\n')
    with pytest.raises(PorttrapError, match=r"differs from .*imported\.toml: give --force"):
        run.install(config=mine)
    assert installed.read_text() == '[ban]\ntime = "2h"\n'
    run.install(config=mine, force=True)
    assert installed.read_text() == '[ban]\ntime = "3h"\n'
    mine.write_text('[ban]\ntime = "never"\n')
    with pytest.raises(ConfigError, match=r"imported\.toml"):
        run.install(config=mine, force=True)
    assert installed.read_text() == '[ban]\ntime = "3h"\n'


@pytest.mark.parametrize("path", ["/home/alice/venv/bin/porttrap", "/root/venv/bin/porttrap"])
def test_an_executable_protect_home_would_hide_is_refused(run: Run, path: str) -> None:
    request = service.InstallRequest(Path(path), root=service.Root(run.root))
    with pytest.raises(PorttrapError, match=r"ProtectHome=yes.*/opt/porttrap/venv"):
        service.install(request, run.systemd, run.notes.append)
    assert not run.path("/etc").exists()


def test_a_symlink_into_a_home_directory_is_refused_too(run: Run, tmp_path: Path) -> None:
    link = run.path("/usr/local/sbin/porttrap")
    link.parent.mkdir(parents=True)
    link.symlink_to("/home/alice/venv/bin/porttrap")
    request = service.InstallRequest(Path("/usr/local/sbin/porttrap"), root=service.Root(run.root))
    with pytest.raises(PorttrapError, match="under /home"):
        service.install(request, run.systemd, run.notes.append)


def test_a_relative_executable_is_refused(run: Run) -> None:
    request = service.InstallRequest(Path("venv/bin/porttrap"), root=service.Root(run.root))
    with pytest.raises(PorttrapError, match="absolute path"):
        service.install(request, run.systemd, run.notes.append)


def test_a_missing_executable_under_root_is_only_a_note(run: Run) -> None:
    run.path(str(EXE)).unlink()
    run.install()
    assert "does not exist yet" in run.notes[0]


# -- uninstall ---------------------------------------------------------------------------


def skeleton(run: Run) -> None:
    """What an OS image has before porttrap: the directories it installs into."""
    for directory in ("/etc/systemd/system", "/var/lib", "/var/log"):
        run.path(directory).mkdir(parents=True, exist_ok=True)
    run.path("/etc/hosts.deny").write_text("# the admin's\nsshd: 203.0.113.9\n")


def daemon_leftovers(run: Run, state: str = "/var/lib/porttrap") -> None:
    """What a daemon leaves in its state directory (a fleet host's outbox too)."""
    for name in ("porttrap.db", "porttrap.db-wal", "porttrap.db-shm", "porttrap.db.bak-v2",
                 "fleet-outbox.db", "fleet-outbox.db-wal"):  # fmt: skip
        run.path(f"{state}/{name}").write_text(name)


def test_uninstall_leaves_the_root_exactly_as_before_install(run: Run) -> None:
    skeleton(run)
    before = tree(run.root)
    run.install()
    daemon_leftovers(run)
    run.uninstall()
    assert tree(run.root) == before
    assert run.systemd.calls[-1] == (f"--root={run.root}", "disable", "porttrap.service")
    assert [cfg.firewall.table for cfg in run.torn_down] == ["porttrap"]
    assert "removed nftables table inet porttrap" in run.notes
    assert f"removed {run.path('/var/lib/porttrap')}" in run.notes
    assert f"removed {run.path('/etc/porttrap')}" in run.notes


def test_keep_database_keeps_only_the_database(run: Run) -> None:
    skeleton(run)
    run.install()
    daemon_leftovers(run)
    run.uninstall(keep_database=True)
    state = run.path("/var/lib/porttrap")
    assert sorted(p.name for p in state.iterdir()) == [
        "fleet-outbox.db", "fleet-outbox.db-wal", "porttrap.db", "porttrap.db-shm",
        "porttrap.db-wal"
    ]  # fmt: skip
    assert not run.path("/etc/porttrap").exists()
    assert not run.path("/etc/systemd/system/porttrap.service").exists()


def test_keep_config_keeps_etc_porttrap(run: Run) -> None:
    run.install()
    run.uninstall(keep_config=True)
    assert run.path("/etc/porttrap/porttrap.toml").read_text() == DEFAULT_CONFIG
    assert not run.path("/var/lib/porttrap").exists()


def test_files_porttrap_did_not_write_are_left_and_named(run: Run) -> None:
    run.install()
    run.path("/etc/porttrap/notes.txt").write_text("mine")
    run.uninstall()
    assert run.path("/etc/porttrap/notes.txt").read_text() == "mine"
    assert not run.path("/etc/porttrap/porttrap.toml").exists()
    assert any("it also holds notes.txt" in n for n in run.notes)


def test_a_custom_state_dir_is_emptied_of_porttraps_files_only(run: Run) -> None:
    config = run.path("/etc/porttrap/porttrap.toml")
    config.parent.mkdir(parents=True)
    config.write_text('state_dir = "/srv"\n')  # a shared directory: never removed wholesale
    run.path("/srv").mkdir()
    run.path("/srv/www").mkdir()
    daemon_leftovers(run, "/srv")
    run.install()
    run.uninstall()
    assert sorted(p.name for p in run.path("/srv").iterdir()) == ["www"]


def test_porttraps_hosts_deny_lines_go_and_the_admins_stay(run: Run) -> None:
    skeleton(run)
    config = run.path("/etc/porttrap/porttrap.toml")
    config.parent.mkdir(parents=True)
    config.write_text('[actions.hosts_deny]\nfile = "/etc/hosts.deny"\n')
    run.install()
    hosts_deny = run.path("/etc/hosts.deny")
    hosts_deny.write_text(hosts_deny.read_text() + "ALL: 192.0.2.7\nALL: 192.0.2.8\n")
    state = {"version": 1, "file": "/etc/hosts.deny",
             "lines": {"192.0.2.7": "ALL: 192.0.2.7", "192.0.2.8": "ALL: 192.0.2.8"}}  # fmt: skip
    run.path("/var/lib/porttrap/hosts-deny.json").write_text(json.dumps(state))
    run.uninstall()
    assert hosts_deny.read_text() == "# the admin's\nsshd: 203.0.113.9\n"
    assert f"removed porttrap's 2 lines from {hosts_deny}" in run.notes
    assert not run.path("/var/lib/porttrap").exists()


def test_hosts_deny_lines_stay_when_the_config_keeps_them(run: Run) -> None:
    skeleton(run)
    config = run.path("/etc/porttrap/porttrap.toml")
    config.parent.mkdir(parents=True)
    config.write_text('[actions.hosts_deny]\nfile = "/etc/hosts.deny"\nkeep = true\n')
    run.install()
    hosts_deny = run.path("/etc/hosts.deny")
    hosts_deny.write_text("ALL: 192.0.2.7\n")
    state = {"version": 1, "file": "/etc/hosts.deny", "lines": {"192.0.2.7": "ALL: 192.0.2.7"}}
    run.path("/var/lib/porttrap/hosts-deny.json").write_text(json.dumps(state))
    run.uninstall()
    assert hosts_deny.read_text() == "ALL: 192.0.2.7\n"
    assert any("keep" in n and "hosts.deny" in n for n in run.notes)


def test_a_hosts_deny_symlink_is_refused_with_the_reason(run: Run) -> None:
    skeleton(run)
    run.install()
    real = run.path("/etc/hosts.deny.real")
    real.write_text("ALL: 192.0.2.7\n")
    run.path("/etc/hosts.deny").unlink()
    run.path("/etc/hosts.deny").symlink_to(real)
    state = {"version": 1, "file": "/etc/hosts.deny", "lines": {"192.0.2.7": "ALL: 192.0.2.7"}}
    run.path("/var/lib/porttrap/hosts-deny.json").write_text(json.dumps(state))
    with pytest.raises(PorttrapError, match=r"hosts\.deny.*symbolic link"):
        run.uninstall()
    assert real.read_text() == "ALL: 192.0.2.7\n"


def test_a_path_a_unit_cannot_hold_is_refused(run: Run) -> None:
    config = run.path("/etc/porttrap/porttrap.toml")
    config.parent.mkdir(parents=True)
    config.write_text('state_dir = "/srv/a\\nb"\n')
    with pytest.raises(PorttrapError, match="control characters"):
        run.install()
    assert not run.path("/etc/systemd/system/porttrap.service").exists()


@pytest.fixture
def answering(run: Run) -> Iterator[Path]:
    """A control socket that answers like a running daemon."""
    path = run.path("/var/lib/porttrap/control.sock")
    path.parent.mkdir(parents=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    server.settimeout(10)

    def answer() -> None:
        with server, server.accept()[0] as conn:
            conn.recv(4096)
            conn.sendall(b'{"ok": true, "running": true}\n')

    thread = threading.Thread(target=answer)
    thread.start()
    yield path
    thread.join(timeout=10)


def test_uninstall_refuses_while_a_daemon_answers_outside_systemd(
    run: Run, answering: Path
) -> None:
    run.install()
    with pytest.raises(PorttrapError, match=r"still running outside systemd.*nothing was removed"):
        run.uninstall()
    assert run.path("/etc/systemd/system/porttrap.service").exists()
    assert run.path("/etc/porttrap/porttrap.toml").exists()
    assert run.torn_down == []


def test_live_uninstall_stops_before_checking_then_reloads(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "check_executable", lambda *_: None)
    monkeypatch.setattr(service.Root, "__call__", lambda _self, p: run.root / p.relative_to("/"))
    run.install(live=True, start=False)
    run.systemd.is_running = True
    run.systemd.calls.clear()
    request = service.UninstallRequest()  # Root("/"), paths redirected above
    service.uninstall(request, run.systemd, run._teardown, run.notes.append)
    assert run.systemd.calls == [
        ("stop", "porttrap.service"),
        ("disable", "porttrap.service"),
        ("daemon-reload",),
        ("reset-failed", "porttrap.service"),  # fails when not failed: ignored
    ]
    assert not run.path("/etc/systemd/system/porttrap.service").exists()


def test_uninstall_with_an_invalid_config_says_what_it_needs_it_for(run: Run) -> None:
    run.install()
    run.path("/etc/porttrap/porttrap.toml").write_text("state_dir = 7\n")
    with pytest.raises(ConfigError) as caught:
        run.uninstall()
    assert "state_dir" in str(caught.value.problems[0])
    assert "give -c with the config porttrap ran with" in str(caught.value.problems[-1])
    assert run.path("/etc/systemd/system/porttrap.service").exists()


def test_uninstall_of_nothing_installed_says_so(run: Run) -> None:
    run.uninstall()
    assert run.notes[0].startswith("no ") and "not installed as a service" in run.notes[0]


def test_removing_the_firewall_of_dry_run_touches_nothing() -> None:
    """Nothing of dry-run's is in the kernel (the registry says so): no backend is made."""
    cfg = config_mod.load_text('[firewall]\nbackend = "dry-run"\n', None)
    assert service.remove_firewall(cfg) == ["firewall: nothing to remove (backend dry-run)"]
