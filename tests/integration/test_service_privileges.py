"""Least privilege, proven: the real daemon, run with exactly the unit's capability bounding set
(setpriv, as systemd's CapabilityBoundingSet= and NoNewPrivileges= do) and with
memory-deny-write-execute in force (prctl PR_SET_MDWE, what MemoryDenyWriteExecute= asks for),
still sets a trap below 1024 and bans a scanner in nftables; an action command it runs inherits
the same limits. Without CAP_NET_ADMIN or CAP_NET_BIND_SERVICE it stops with an error that says
which capability is missing."""

from __future__ import annotations

import json
import subprocess  # noqa: TID251 - starts the daemon under setpriv
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_env import ATK4, PORTTRAP, SRV4, Env, tcp_works

from porttrap.service.unit import CAPABILITIES
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

CAP_NET_BIND_SERVICE, CAP_NET_ADMIN = 10, 12  # bit numbers (linux/capability.h)
UNIT_CAPS = (1 << CAP_NET_BIND_SERVICE) | (1 << CAP_NET_ADMIN)

# Turns on MDWE for itself (inherited across fork and execve), checks that it holds, then
# becomes `python ARGS...`.
MDWE_LAUNCHER = """
import ctypes, mmap, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE: " + os.strerror(ctypes.get_errno()))
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE is not in force: a writable and executable mapping was made")
except PermissionError:
    pass
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

# An action command that writes down what it inherited from the daemon.
HOOK = """
import ctypes, json, sys
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
libc = ctypes.CDLL(None)
json.dump({"target": sys.argv[2], "eff": int(status["CapEff"], 16),
           "bnd": int(status["CapBnd"], 16), "nnp": int(status["NoNewPrivs"]),
           "mdwe": libc.prctl(66, 0, 0, 0, 0)}, open(sys.argv[1], "w"))
"""


def setpriv(capabilities: tuple[str, ...]) -> list[str]:
    """setpriv keeping only `capabilities` (CAP_NET_ADMIN ...) in the bounding set."""
    keep = ",".join(f"+{cap.removeprefix('CAP_').lower()}" for cap in capabilities)
    return ["setpriv", "--bounding-set", f"-all,{keep}", "--inh-caps", "-all", "--no-new-privs"]


def start(env: Env, capabilities: tuple[str, ...]) -> subprocess.Popen[str]:
    argv = [*setpriv(capabilities), sys.executable, "-c", MDWE_LAUNCHER, *PORTTRAP[1:], "run",
            "-c", str(env.config)]  # fmt: skip
    with env.log.open("a") as log:
        daemon = subprocess.Popen(["ip", "netns", "exec", env.srv.name, *argv], stdout=log,
                                  stderr=log, text=True)  # fmt: skip
    env.srv.processes.append(daemon)
    env.daemon = daemon
    return daemon


def capabilities_of(pid: int) -> tuple[int, int]:
    """(CapEff, CapBnd) of process `pid`."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["CapEff"], 16), int(status["CapBnd"], 16)


def test_the_units_capabilities_are_enough_to_trap_and_ban(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    hook, seen = tmp_path / "hook.py", tmp_path / "hook.json"
    hook.write_text(HOOK)
    env = env_factory(
        '[traps]\ntcp = ["23"]\nudp = []\n'  # below 1024: needs CAP_NET_BIND_SERVICE
        f'[[actions.command]]\non = ["ban"]\nrun = ["{sys.executable}", "{hook}", "{seen}", '
        '"$TARGET$"]\n'
    )
    assert CAPABILITIES == ("CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE")  # what the unit keeps
    daemon = start(env, CAPABILITIES)

    def answers() -> bool:
        assert daemon.poll() is None, env.log_text()
        return env.porttrap("status", check=False).returncode == 0

    wait_until(answers, PATIENCE, "daemon answers status")
    assert capabilities_of(daemon.pid) == (UNIT_CAPS, UNIT_CAPS)
    assert "event=trap-set proto=tcp port=23" in env.log_text()

    assert tcp_works(env.atk, ATK4, SRV4, 23)
    wait_until(lambda: env.in_set("ban_v4", ATK4), PATIENCE, "the scanner banned in nftables")
    wait_until(seen.exists, PATIENCE, "the ban's action command ran")
    inherited = json.loads(seen.read_text())
    assert inherited == {"target": ATK4, "eff": UNIT_CAPS, "bnd": UNIT_CAPS, "nnp": 1, "mdwe": 1}
    env.stop()


@pytest.mark.parametrize(
    ("kept", "error"),
    [
        (("CAP_NET_BIND_SERVICE",), "changing nftables needs CAP_NET_ADMIN"),
        (("CAP_NET_ADMIN",), "ports below 1024 need root or CAP_NET_BIND_SERVICE"),
    ],
)
def test_without_either_capability_it_stops_and_says_which(
    env_factory: Callable[[str], Env], kept: tuple[str, ...], error: str
) -> None:
    env = env_factory('[traps]\ntcp = ["23"]\nudp = []\n')
    daemon = start(env, kept)
    assert daemon.wait(timeout=30) == 1
    assert error in env.log_text()
    if "CAP_NET_ADMIN" not in kept:
        assert env.srv.run(["nft", "list", "tables"]) == ""  # it could not touch the kernel
