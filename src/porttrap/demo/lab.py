"""The demo's lab: two network namespaces joined by a veth pair, and the processes in them.

Every `ip` and `nft` command goes through `porttrap.firewall.exec.Exec`, the module that runs
the kernel-facing programs, and every one that touches a network runs behind
`ip netns exec <demo namespace>`: the host's own namespace only ever sees `ip netns add`,
`ip netns pids` and `ip netns del` of the demo's namespaces. The daemon, the service and the
`porttrap` commands shown to the reader are long-running or captured Python processes, which
`Exec` (run to completion, firewall errors) is not made for: this module starts them, in a
session of their own so that a Ctrl-C in the terminal reaches the demo alone and the demo
stops them in order, by PID. It is the one demo module allowed `subprocess`.

Everything made is registered on an `ExitStack` the moment it exists, so that however the demo
ends (a failed step, an exception, SIGINT, SIGTERM) the stack undoes it all, newest first:
processes stopped, namespaces deleted (with anything still running in them), the temporary
directory removed. `remove_stale` does the same for what a killed demo left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess  # noqa: TID251 - the demo starts, captures and stops its own processes
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path

from porttrap.clock import SystemClock
from porttrap.demo import names, plan
from porttrap.errors import PorttrapError
from porttrap.firewall import kernel
from porttrap.firewall.exec import CommandFailed, Exec

Note = Callable[[str], None]
PORTTRAP = (sys.executable, "-m", "porttrap")
STOP_WAIT = 10.0  # seconds a process gets after SIGTERM before SIGKILL
KILL_WAIT = 5.0
CLI_TIMEOUT = 30.0  # one `porttrap status/bans/history`
NFT_TIMEOUT = 5.0
_POLL = 0.05
_COMMAND_CHARS = 100  # of a process's command line, in a note


def requirements() -> list[str]:
    """What this machine lacks for the demo, each with its fix; empty when all is there."""
    missing = []
    if os.geteuid() != 0:
        missing.append(
            "porttrap demo must run as root (it creates network namespaces): sudo porttrap demo"
        )
    for program, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(program) is None:
            missing.append(
                f"`{program}` is not installed or not on PATH: apt-get install {package}"
            )
    if importlib.util.find_spec("nftables") is None:
        missing.append(f"{kernel.missing_module()} (porttrap's daemon needs it)")
    return missing


def remove_stale(note: Note) -> int:
    """Remove the namespaces and temporary directories of demos whose process is gone, with
    anything still running in those namespaces; how many things were removed."""
    netns_dir = Path("/run/netns")
    found = names.stale(_listing(netns_dir), names.netns_owner)
    for name in found:
        end_processes(name, note)
        Exec().run(["ip", "netns", "del", name])
        note(f"removed stale namespace {name} (its demo is gone)")
    temp = Path(tempfile.gettempdir())
    dirs = [d for d in names.stale(_listing(temp), names.temp_owner) if _plain_dir(temp / d)]
    for name in dirs:
        shutil.rmtree(temp / name, ignore_errors=True)
        note(f"removed stale directory {temp / name} (its demo is gone)")
    return len(found) + len(dirs)


def _listing(directory: Path) -> list[str]:
    try:
        return [entry.name for entry in directory.iterdir()]
    except FileNotFoundError:
        return []


def _plain_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.geteuid()


def netns_pids(netns: str) -> list[int]:
    """The processes in namespace `netns`."""
    return [int(pid) for pid in Exec().run(["ip", "netns", "pids", netns]).split()]


def end_processes(netns: str, note: Note) -> None:
    """End every process in `netns` (a demo's namespace): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, STOP_WAIT), (signal.SIGKILL, KILL_WAIT)):
        pids = netns_pids(netns)
        if not pids:
            return
        for pid in pids:
            note(f"ending pid {pid} ({_command(pid)}) in {netns} with {sig.name}")
            with suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, sig)
        _wait_for(lambda: not netns_pids(netns), wait)


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    text = " ".join(raw.decode(errors="replace").split("\0")).strip()
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


def _wait_for(check: Callable[[], bool], timeout: float) -> bool:
    clock = SystemClock()
    deadline = clock.monotonic() + timeout
    while clock.monotonic() < deadline:
        if check():
            return True
        time.sleep(_POLL)
    return check()


class Lab:
    """The demo's namespaces, temporary directory and processes. Each thing is registered on
    `cleanup` as soon as it exists; `note` is told what the cleanup did."""

    def __init__(self, owner: names.Owner, cleanup: ExitStack, note: Note) -> None:
        self.host = names.netns_name(owner, names.HOST)
        self.scanner = names.netns_name(owner, names.SCANNER)
        self._cleanup = cleanup
        self._note = note
        self.workdir = Path(tempfile.mkdtemp(prefix=owner.tag))
        cleanup.callback(self._remove_workdir)
        self.config = self.workdir / "porttrap.toml"
        self.daemon_log = self.workdir / "daemon.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.service: subprocess.Popen[bytes] | None = None

    # -- building -------------------------------------------------------------------------

    def build(self, settings: plan.Plan) -> None:
        """The two namespaces (lo up), the veth pair with its addresses, the config file."""
        for netns in (self.host, self.scanner):
            Exec().run(["ip", "netns", "add", netns])
            self._cleanup.callback(self._delete_netns, netns)
            self.ip(netns, "link", "set", "lo", "up")
        self.ip(self.host, "link", "add", plan.VETH_HOST, "type", "veth",
                "peer", "name", plan.VETH_SCANNER, "netns", self.scanner)  # fmt: skip
        for netns, device, v4, v6 in (
            (self.host, plan.VETH_HOST, plan.HOST4, plan.HOST6),
            (self.scanner, plan.VETH_SCANNER, plan.SCANNER4, plan.SCANNER6),
        ):
            self.ip(netns, "addr", "add", f"{v4}/{plan.PREFIX4}", "dev", device)
            self.ip(netns, "addr", "add", f"{v6}/{plan.PREFIX6}", "dev", device, "nodad")
            self.ip(netns, "link", "set", device, "up")
        self.config.write_text(settings.config(self.workdir / "state"))

    def ip(self, netns: str, *argv: str) -> str:
        """`ip ARGV` inside `netns`."""
        return Exec(netns=netns).run(["ip", *argv])

    # -- processes ------------------------------------------------------------------------

    def start_service(self) -> int:
        """The sample service on port 8080 in the host namespace; its PID."""
        script = self.workdir / "service.py"
        script.write_text(plan.SERVICE)
        self.service = self._start([str(script)], self.workdir / "service.log", "service")
        return self.service.pid

    def start_daemon(self) -> int:
        """`porttrap run -c CONFIG` in the host namespace; its PID."""
        argv = ["-m", "porttrap", "run", "-c", str(self.config)]
        self.daemon = self._start(argv, self.daemon_log, "porttrap run")
        return self.daemon.pid

    def _start(self, python_args: Sequence[str], log: Path, what: str) -> subprocess.Popen[bytes]:
        argv = Exec(netns=self.host).argv([sys.executable, *python_args])
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._cleanup.callback(self._stop, process, what)
        return process

    def porttrap(self, *args: str) -> tuple[int, str]:
        """`porttrap ARGS -c CONFIG` inside the host namespace: its exit status and output."""
        argv = Exec(netns=self.host).argv([*PORTTRAP, *args, "-c", str(self.config)])
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise PorttrapError(f"`porttrap {' '.join(args)}` took over {CLI_TIMEOUT:g}s") from err
        return done.returncode, (done.stdout + done.stderr).rstrip()

    # -- the kernel's view ----------------------------------------------------------------

    def ban_set(self, name: str) -> dict[str, int | None]:
        """The elements of the daemon's set `name` (ban_v4, ban_v6) in the host namespace:
        address -> timeout in seconds, None for a permanent ban. {} while there is no set."""
        try:
            out = Exec(netns=self.host, timeout=NFT_TIMEOUT).run(
                ["nft", "-j", "list", "set", "inet", plan.TABLE, name]
            )
        except CommandFailed:
            return {}  # no table yet, or already gone
        found: dict[str, int | None] = {}
        for item in json.loads(out)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                value = elem["elem"] if isinstance(elem, dict) and "elem" in elem else elem
                if isinstance(value, dict):
                    found[str(value["val"])] = value.get("timeout")
                else:
                    found[str(value)] = None
        return found

    # -- cleanup (run by the ExitStack, newest first) -------------------------------------

    def _stop(self, process: subprocess.Popen[bytes], what: str) -> None:
        if process.poll() is not None:
            self._note(f"{what} (pid {process.pid}) had already exited ({process.returncode})")
            return
        for sig, wait in ((signal.SIGTERM, STOP_WAIT), (signal.SIGKILL, KILL_WAIT)):
            process.send_signal(sig)
            try:
                code = process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            ended = f"exit {code}" if code >= 0 else f"ended by {signal.Signals(-code).name}"
            self._note(f"stopped {what} (pid {process.pid}) with {sig.name}: {ended}")
            return
        self._note(f"{what} (pid {process.pid}) did not end even with SIGKILL")

    def _delete_netns(self, netns: str) -> None:
        end_processes(netns, self._note)
        Exec().run(["ip", "netns", "del", netns])
        self._note(f"deleted network namespace {netns}")

    def _remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._note(f"removed {self.workdir}")
