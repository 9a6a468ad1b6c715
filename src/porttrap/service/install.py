"""Installing and removing porttrap's systemd service: the unit, the configuration in
/etc/porttrap, the state in /var/lib/porttrap, and on removal the firewall and hosts.deny lines
porttrap made.

Everything that can refuse is checked before anything is written: an existing configuration
that does not load, a unit that differs from the one porttrap would write (without `force`),
an executable that ProtectHome= would hide, a daemon still running. `root` installs into a
prefix, as `systemctl --root` does (packagers, tests): paths are taken under it and the running
systemd is never asked anything. What was done is reported line by line through `note`; only
the CLI prints. Run from an SSH session on this machine, the first line says whether the
service will protect that session's peer (porttrap.sshsession), as the service will see it.

Removal deletes only what porttrap writes (its database, backups, control socket and state
files, its config file), then the directories when that leaves them empty; anything else in
them is left and named, as dpkg does. Log files are the admin's record and are left too.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import porttrap
from porttrap.actions import hostsdeny
from porttrap.clock import SystemClock
from porttrap.config import loader as config_mod
from porttrap.config.schema import DEFAULT_CONFIG_PATH, Config
from porttrap.daemon import control
from porttrap.errors import ConfigError, ConfigProblem, FirewallError, PorttrapError, Refused
from porttrap.firewall import registry
from porttrap.firewall.claim import claim
from porttrap.firewall.exec import Exec
from porttrap.firewall.select import make_backend
from porttrap.service import unit
from porttrap.service.template import DEFAULT_CONFIG
from porttrap.sshsession import SshConnection, admin_session, sentence, ssh_ports, unit_view

Note = Callable[[str], None]
SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(3)
SYSTEMCTL_TIMEOUT = 180.0  # `start` waits for READY=1 (restoring 100,000 bans takes ~1 s)
# with the fleet's outbox (bans not yet published): kept with the database, or removed with it
DATABASE_FILES = ("porttrap.db", "porttrap.db-wal", "porttrap.db-shm", "porttrap.db-journal",
                  "fleet-outbox.db", "fleet-outbox.db-wal", "fleet-outbox.db-shm")  # fmt: skip
# clean-stop: the daemon's marker of a stop that wrote every record (shell.py's CLEAN_STOP); the
# next start without it reads the kernel's bans, the safe way: it goes even with --keep-database
STATE_FILES = (*DATABASE_FILES, "porttrap.db.bak-v*", "control.sock", "hosts-deny.json",
               ".hosts-deny.json.porttrap-*", "clean-stop")  # fmt: skip
CONFIG_FILES = ("porttrap.toml", ".porttrap.toml.*")


class Systemd(Protocol):
    """The service manager: the seam unit tests fake."""

    def running(self) -> bool:
        """Whether systemd manages this machine (sd_booted)."""
        ...

    def systemctl(self, *args: str) -> str:
        """Run `systemctl ARGS`; its output, or PorttrapError with its error text."""
        ...


@dataclass(frozen=True, slots=True)
class Systemctl:
    """The real one: `systemctl` through porttrap's one program runner."""

    timeout: float = SYSTEMCTL_TIMEOUT

    def running(self) -> bool:
        return SYSTEMD_RUNNING.is_dir()

    def systemctl(self, *args: str) -> str:
        try:
            return Exec(timeout=self.timeout).run(["systemctl", *args])
        except FirewallError as err:  # Exec's errors carry the argv and systemctl's text
            raise PorttrapError(str(err)) from err


@dataclass(frozen=True, slots=True)
class Root:
    """Where the file system starts: '/' on the machine itself, a directory for --root."""

    path: Path = Path("/")

    def __call__(self, path: Path) -> Path:
        """`path` (absolute, as the service sees it) under this root."""
        return self.path / path.relative_to("/") if self.offline else path

    @property
    def offline(self) -> bool:
        return self.path != Path("/")

    def systemctl_args(self) -> tuple[str, ...]:
        return (f"--root={self.path}",) if self.offline else ()


# -- install ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstallRequest:
    executable: Path  # absolute, as the service sees it
    root: Root = Root()
    config: Path | None = None  # a config to install as /etc/porttrap/porttrap.toml
    force: bool = False  # replace a differing unit (and config, with `config`)
    start: bool = True
    session: SshConnection | None = None  # $SSH_CONNECTION of the admin running this


def install(request: InstallRequest, systemd: Systemd, note: Note) -> None:
    root = request.root
    config_text, cfg = _config_to_install(request)
    if request.session is not None and not root.offline:
        note(session_line(request.session, cfg))
    check_executable(request.executable, root, note)
    try:
        unit_text = unit.render(request.executable, unit.sandbox(cfg))
    except ValueError as err:  # a path a unit file cannot hold
        raise PorttrapError(f"cannot write {unit.UNIT_NAME}: {err}") from err
    unit_file = root(unit.UNIT_PATH)
    unit_changed = _differs(unit_file, unit_text)
    if unit_changed and unit_file.exists() and not request.force:
        raise Refused(
            f"{unit_file} exists and differs from the unit this porttrap would write: give "
            "--force to replace it (changes of your own belong in a drop-in: systemctl edit "
            "porttrap)"
        )
    _write_config(request, config_text, note)
    _make_state_dir(root(cfg.state_dir), note)
    if unit_changed:
        _make_dirs(unit_file.parent)
        write_file(unit_file, unit_text, 0o644)
        note(f"wrote {unit_file}")
    else:
        note(f"{unit_file} is up to date")
    _enable(request, systemd, note, unit_changed)


def session_line(session: SshConnection, cfg: Config) -> str:
    """Whether the service will protect the peer of the admin's SSH session. The service
    cannot see sshd's ports (no CAP_SYS_PTRACE): its SSH ports are the config's, or 22."""
    return sentence(admin_session(session, ssh_ports(cfg.protect.ssh_ports, unit_view), cfg.allow))


def default_executable() -> Path:
    """The `porttrap` of the environment this process runs from (setup.sh: the venv in
    /opt/porttrap/venv), else the first on PATH."""
    beside = Path(sys.prefix) / "bin" / "porttrap"
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("porttrap")
    if found is None:
        raise PorttrapError(
            "cannot find the porttrap executable (not in this Python environment's bin, not on "
            "PATH): install porttrap with ./scripts/setup.sh run, or give --executable PATH"
        )
    return Path(found).absolute()


def check_executable(executable: Path, root: Root, note: Note) -> None:
    """The unit runs `executable`: absolute, executable, and not where ProtectHome=yes hides
    it. A root-owned daemon run from a home directory would also run whatever its owner puts
    there, so porttrap refuses rather than weakening ProtectHome."""
    if not executable.is_absolute():
        raise PorttrapError(f"--executable {executable}: give an absolute path")
    places = [executable, root(executable).resolve()]
    if not root.offline:
        places.append(Path(porttrap.__file__).resolve())  # an editable install's source
    for place in places:
        hidden = unit.hidden_by_protect_home(place)
        if hidden is not None:
            raise PorttrapError(
                f"porttrap is installed under {hidden} ({place}), which the service cannot see "
                "(ProtectHome=yes) and which should not hold code run as root: install it "
                "elsewhere (./scripts/setup.sh run puts it in /opt/porttrap/venv), then run "
                "install-service from there"
            )
    if not os.access(root(executable), os.X_OK):
        where = f"{root(executable)} (under --root)" if root.offline else str(executable)
        if not root.offline:
            raise PorttrapError(f"{where} is not an executable file: give --executable PATH")
        note(f"note: {where} does not exist yet: the service cannot start until it does")


def _config_to_install(request: InstallRequest) -> tuple[str | None, Config]:
    """The config text to write (None: keep the one there) and the config the service will
    run with. Raises ConfigError (its problems) when that config does not load."""
    target = request.root(DEFAULT_CONFIG_PATH)
    if request.config is not None:
        text = _read(request.config)
        cfg = config_mod.load_text(text, request.config)
        if target.exists() and _differs(target, text) and not request.force:
            raise Refused(
                f"{target} exists and differs from {request.config}: give --force to replace "
                "it, or leave out -c to keep it"
            )
        return (text if _differs(target, text) else None), cfg
    if target.exists():
        return None, config_mod.load(target)  # an invalid one is refused, with its errors
    return DEFAULT_CONFIG, config_mod.load_text(DEFAULT_CONFIG, target)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PorttrapError(f"cannot read {path}: {err}") from err


def _write_config(request: InstallRequest, text: str | None, note: Note) -> None:
    target = request.root(DEFAULT_CONFIG_PATH)
    if text is None:
        note(f"kept {target} (valid)")
        return
    _make_dirs(target.parent, 0o700)
    write_file(target, text, 0o600)
    what = f"copied {request.config} to" if request.config is not None else "wrote"
    note(f"{what} {target}")


def _make_state_dir(path: Path, note: Note) -> None:
    if path.is_dir():
        return
    _make_dirs(path, 0o700)
    note(f"made {path} (mode 0700)")


def _enable(request: InstallRequest, systemd: Systemd, note: Note, changed: bool) -> None:
    root = request.root
    live = not root.offline and systemd.running()
    if not live:
        systemd.systemctl(*root.systemctl_args(), "enable", unit.UNIT_NAME)
        note(f"enabled {unit.UNIT_NAME}")
        if root.offline:
            note(f"installed into {root.path}; systemd there starts porttrap at boot")
        else:
            note(
                f"systemd is not running here (no {SYSTEMD_RUNNING}): porttrap starts at the "
                "next boot with systemd, or now in the foreground with: porttrap run"
            )
        return
    systemd.systemctl("daemon-reload")
    if not request.start:
        systemd.systemctl("enable", unit.UNIT_NAME)
        note(f"enabled {unit.UNIT_NAME}; start it with: systemctl start porttrap")
        return
    try:
        if changed:  # a running service keeps its old sandbox until it restarts
            systemd.systemctl("try-restart", unit.UNIT_NAME)
        systemd.systemctl("enable", "--now", unit.UNIT_NAME)
    except PorttrapError as err:
        raise PorttrapError(
            f"{unit.UNIT_NAME} is installed but did not start: {err} (porttrap's own error is in "
            "`journalctl -u porttrap`; fix it, then: systemctl restart porttrap)"
        ) from err
    note(f"enabled and started {unit.UNIT_NAME}; see it with: systemctl status porttrap")


# -- uninstall -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UninstallRequest:
    root: Root = Root()
    config: Path | None = None  # default: the installed one (its state_dir, table, hosts.deny)
    keep_database: bool = False
    keep_config: bool = False


Teardown = Callable[[Config], list[str]]


def uninstall(request: UninstallRequest, systemd: Systemd, teardown: Teardown, note: Note) -> None:
    """Stop and remove the service, then porttrap's firewall, hosts.deny lines, state and
    config. Refuses, having changed nothing but the stop, while a daemon still answers."""
    root = request.root
    cfg = _installed_config(request)
    live = not root.offline and systemd.running()
    unit_file = root(unit.UNIT_PATH)
    if live and unit_file.exists():
        systemd.systemctl("stop", unit.UNIT_NAME)
        note(f"stopped {unit.UNIT_NAME}")
    if _answers(root(cfg.control_socket)):
        raise Refused(
            f"porttrap is still running outside systemd (it answers on "
            f"{root(cfg.control_socket)}): stop it (Ctrl-C, or kill the `porttrap run` "
            "process), then run uninstall-service again; nothing was removed"
        )
    _remove_unit(unit_file, root, live, systemd, note)
    for line in teardown(cfg):
        note(line)
    _remove_hosts_deny_lines(cfg, root, note)
    keep = DATABASE_FILES if request.keep_database else ()
    _remove_owned(root(cfg.state_dir), STATE_FILES, keep, note)
    if request.keep_config:
        note(f"kept {root(DEFAULT_CONFIG_PATH).parent} (--keep-config)")
    else:
        _remove_owned(root(DEFAULT_CONFIG_PATH).parent, CONFIG_FILES, (), note)
    for output in cfg.log.outputs:
        if output.to.startswith("/") and root(Path(output.to)).exists():
            note(f"left the log file {root(Path(output.to))} (remove it yourself if unwanted)")


def _answers(socket_path: Path) -> bool:
    """Whether a daemon answers on `socket_path` (no socket file: none does)."""
    if not socket_path.exists():
        return False
    try:
        return control.ping(socket_path)
    except OSError as err:  # e.g. a path longer than AF_UNIX takes, deep under --root
        raise PorttrapError(f"cannot ask whether porttrap runs on {socket_path}: {err}") from err


def _installed_config(request: UninstallRequest) -> Config:
    path = request.config if request.config is not None else request.root(DEFAULT_CONFIG_PATH)
    if request.config is None and not path.exists():
        return config_mod.load_text("", None)  # never configured: the defaults were used
    try:
        return config_mod.load(path)
    except ConfigError as err:
        why = ("uninstall-service reads it for state_dir, the firewall table and hosts.deny: "
               "fix it, or give -c with the config porttrap ran with")  # fmt: skip
        err.problems.append(ConfigProblem(path, None, "", why))
        raise


def _remove_unit(unit_file: Path, root: Root, live: bool, systemd: Systemd, note: Note) -> None:
    if not unit_file.exists():
        note(f"no {unit_file} (not installed as a service)")
        return
    systemd.systemctl(*root.systemctl_args(), "disable", unit.UNIT_NAME)
    unit_file.unlink()
    note(f"disabled {unit.UNIT_NAME}, removed {unit_file}")
    drop_ins = unit_file.with_name(unit_file.name + ".d")
    if drop_ins.exists():
        note(f"left {drop_ins}: drop-ins are yours (remove it with rm -r)")
    if live:
        systemd.systemctl("daemon-reload")
        with contextlib.suppress(PorttrapError):  # only there after a failure
            systemd.systemctl("reset-failed", unit.UNIT_NAME)


def remove_firewall(cfg: Config) -> list[str]:
    """Tear down porttrap's table (nftables) or sets and chains (ipset) in this network
    namespace, as `porttrap flush` does; with backend "auto", of each backend that can run."""
    backend = cfg.firewall.backend
    kernel = [info for info in registry.candidates(backend) if info.in_kernel]
    if not kernel:
        return [f"firewall: nothing to remove (backend {backend})"]
    done = []
    for info in kernel:
        if backend == registry.AUTO and not info.is_supported()[0]:
            continue  # it cannot run here, so porttrap never made anything with it
        done.append(_tear_down(info, cfg.firewall.table))
    return done


def _tear_down(info: registry.BackendInfo, table: str) -> str:
    firewall = make_backend(info.name, table, SystemClock())
    with claim(info.name, table):  # never the table of a live daemon (another state_dir's)
        if info.one_object and not firewall.present():
            return f"no {info.removes(table)} (already gone)"
        firewall.teardown()
    return f"removed {info.removes(table)}"


def _remove_hosts_deny_lines(cfg: Config, root: Root, note: Note) -> None:
    """Take porttrap's lines out of the hosts.deny file its state file names (unless the
    config keeps them: `keep = true` makes them the admin's)."""
    state_path = root(cfg.state_dir) / "hosts-deny.json"
    if not state_path.exists():
        return
    state = hostsdeny.load_state(state_path)
    if state.file is None or not state.lines:
        return
    file = root(state.file)
    if cfg.actions.hosts_deny is not None and cfg.actions.hosts_deny.keep:
        note(f"left porttrap's {len(state.lines)} lines in {file} ([actions.hosts_deny] keep)")
        return
    try:
        snapshot = hostsdeny.read(file)
        edit = hostsdeny.reconcile(snapshot.lines, state.lines, {}, list(state.lines), keep=False)
        if edit.lines is not None:
            hostsdeny.write(file, edit.lines, snapshot)
    except hostsdeny.HostsDenyError as err:
        raise PorttrapError(f"cannot take porttrap's lines out of {file}: {err}") from err
    count = len(snapshot.lines) - len(edit.lines if edit.lines is not None else snapshot.lines)
    note(f"removed porttrap's {count} lines from {file}")


def _remove_owned(directory: Path, patterns: Sequence[str], keep: Sequence[str],
                  note: Note) -> None:  # fmt: skip
    """Remove the files of `directory` that match `patterns` and not `keep`, then the
    directory when empty; name what is left."""
    if not directory.is_dir():
        return
    gone, kept, foreign = [], [], []
    for entry in sorted(directory.iterdir()):
        if _matches(entry.name, keep):
            kept.append(entry.name)
        elif _matches(entry.name, patterns) and not entry.is_dir():
            entry.unlink()
            gone.append(entry.name)
        else:
            foreign.append(entry.name)
    if gone:
        note(f"removed {', '.join(gone)} from {directory}")
    if kept:
        note(f"kept {', '.join(kept)} in {directory}")
    elif foreign:
        note(
            f"left {directory}: it also holds {', '.join(foreign)}, which porttrap did not "
            "write (remove them yourself)"
        )
    else:
        directory.rmdir()
        note(f"removed {directory}")


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# -- files -----------------------------------------------------------------------------------


def _differs(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") != text
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return True


def _make_dirs(path: Path, mode: int = 0o755) -> None:
    """`path` and its missing parents; the last one gets `mode` (parents 0755)."""
    for parent in reversed(list(_missing(path.parent))):
        parent.mkdir(mode=0o755)
    if not path.is_dir():
        path.mkdir(mode=mode)
        path.chmod(mode)  # mkdir's mode goes through the umask


def _missing(path: Path) -> Iterator[Path]:
    while not path.exists():
        yield path
        path = path.parent


def write_file(path: Path, text: str, mode: int) -> None:
    """Replace `path` atomically (a synced temporary file renamed over it) with `text`."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
