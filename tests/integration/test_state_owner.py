"""State belongs to porttrap: one table, one owner; a state directory (and the control socket in
it) that another user could change is refused. Real daemons in test namespaces, as root.

Layout note: pytest's tmp_path lies under /tmp (mode 1777, sticky) and /tmp/pytest-of-root
(0700): a sticky parent is accepted (see porttrap.daemon.statedir), so each test makes the
unsafe directory itself, below tmp_path, and shows the refusal and the accepted fix side by side.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess  # noqa: TID251 - test helper
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_env import PORTTRAP, Env, wait_until

from netns import Netns
from waiting import PATIENCE

pytestmark = pytest.mark.kernel

TRAPS = '[traps]\ntcp = ["2323"]\nudp = []\n'
BANNED = "203.0.113.77"
NOBODY = pwd.getpwnam("nobody")


def write_config(path: Path, state: Path, body: str) -> Path:
    path.write_text(f'state_dir = "{state}"\n{body}')
    return path


def run_in(ns: Netns, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI in `ns`, to its end (a `run` that should be refused: it must exit by itself)."""
    argv = ["ip", "netns", "exec", ns.name, *PORTTRAP, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def tables(ns: Netns) -> list[str]:
    return ns.run(["nft", "list", "tables"]).splitlines()


@pytest.fixture
def impostor() -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Starts, as user nobody, a process that replaces the control socket at a path with its
    own and answers every `ban` with "banned"; it is killed when the test ends. (It starts in
    the socket's directory, as root, then drops to nobody: tmp_path's parents are root's 0700.)"""
    started: list[subprocess.Popen[str]] = []
    # The interpreter the venv links to: nobody may not reach a venv under /root (mode 0700),
    # where a checkout may lie. The impostor needs only the standard library.
    python = str(Path(sys.executable).resolve())

    def start(socket_path: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [python, "-c", IMPOSTOR, socket_path.name], cwd=socket_path.parent,
            user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline() == "listening\n", process.communicate(timeout=10)
        return process

    yield start
    for process in started:
        process.kill()
        process.communicate(timeout=10)


IMPOSTOR = """
import json, os, socket, sys
path = sys.argv[1]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, 0o777)
server.listen()
print("listening", flush=True)
while True:
    conn, _ = server.accept()
    targets = json.loads(conn.makefile().readline()).get("targets", [])
    bans = [{"address": t, "expires_at": None, "ban_count": 1} for t in targets]
    conn.sendall(json.dumps({"ok": True, "count": len(bans), "bans": bans}).encode() + b"\\n")
    conn.close()
"""


# -- one table, one owner ---------------------------------------------------------------------


def test_a_second_instance_on_the_same_table_is_refused_before_it_touches_the_kernel(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    env = env_factory(TRAPS)
    env.start()
    env.porttrap("ban", BANNED, "--permanent")
    first = env.daemon_pid()
    # another state_dir and another trap port: nothing but the table is shared
    other = tmp_path / "other"
    second = write_config(tmp_path / "second.toml", other, '[traps]\ntcp = ["2424"]\nudp = []\n')

    done = run_in(env.srv, "run", "-c", str(second))
    assert done.returncode == 1, done.stderr
    assert f"the nftables table inet porttrap in this network namespace is owned by another " \
           f"porttrap, PID {first}" in done.stderr  # fmt: skip
    assert "event=restored" not in done.stderr and "event=trap-set" not in done.stderr
    assert not (other / "porttrap.db").exists()  # refused before the database too
    assert env.permanent_in("ban_v4", BANNED)

    # the teardowns of another state_dir's config never take a live daemon's table
    done = run_in(env.srv, "flush", "-c", str(second))
    assert done.returncode == 1 and f"PID {first}" in done.stderr, done.stderr
    remove = (
        "import pathlib; from porttrap.config.loader import load; from porttrap.service.install "
        f"import remove_firewall; remove_firewall(load(pathlib.Path('{second}')))"
    )
    done = subprocess.run(["ip", "netns", "exec", env.srv.name, sys.executable, "-c", remove],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1 and f"PID {first}" in done.stderr, done.stderr
    assert env.permanent_in("ban_v4", BANNED)
    assert env.json("status")["running"]

    # the claim ends with its process, even one killed with SIGKILL: the second may start
    assert env.daemon is not None
    os.kill(first, signal.SIGKILL)
    env.daemon.wait(timeout=20)
    later = env.srv.start([*PORTTRAP, "run", "-c", str(second)])
    wait_until(lambda: run_in(env.srv, "status", "-c", str(second)).returncode == 0, PATIENCE,
               "the second instance runs once the first is gone")  # fmt: skip
    assert later.poll() is None


def test_the_ipset_backend_has_one_owner_too(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    ipset = TRAPS + '[firewall]\nbackend = "ipset"\n'
    env = env_factory(ipset)
    env.start()
    env.porttrap("ban", BANNED, "--permanent")
    second = write_config(tmp_path / "second.toml", tmp_path / "other",
                          ipset.replace('"2323"', '"2424"'))  # fmt: skip
    owned = (
        "the ipset backend's sets and chains for table 'porttrap' in this network namespace is "
        f"owned by another porttrap, PID {env.daemon_pid()}"
    )
    for command in ("run", "flush"):
        done = run_in(env.srv, command, "-c", str(second))
        assert done.returncode == 1 and owned in done.stderr, done.stderr
    assert BANNED in env.srv.run(["ipset", "list", "porttrap_v4"])


def test_the_same_table_name_in_two_namespaces_is_two_tables(
    env_factory: Callable[[str], Env], netns_factory: Callable[[], Netns], tmp_path: Path
) -> None:
    env = env_factory(TRAPS)
    env.start()
    elsewhere = netns_factory()
    other = write_config(tmp_path / "other.toml", tmp_path / "other", TRAPS)
    elsewhere.start([*PORTTRAP, "run", "-c", str(other)])
    wait_until(lambda: run_in(elsewhere, "status", "-c", str(other)).returncode == 0, PATIENCE,
               "the daemon of the other namespace runs")  # fmt: skip
    env.porttrap("ban", BANNED, "--permanent")
    assert (
        run_in(elsewhere, "ban", "198.51.100.78", "--permanent", "-c", str(other)).returncode == 0
    )
    assert env.permanent_in("ban_v4", BANNED) and not env.in_set("ban_v4", "198.51.100.78")
    listing = elsewhere.run(["nft", "list", "set", "inet", "porttrap", "ban_v4"])
    assert "198.51.100.78" in listing and BANNED not in listing


def test_a_busy_nflog_group_is_refused_before_the_table_is_made(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    stealth = '[traps]\nmode = "stealth"\ntcp = ["2323"]\nudp = []\n'
    env = env_factory(stealth)
    env.start()
    other = tmp_path / "other"
    # another table, but the same NFLOG group, which the first daemon holds
    second = write_config(tmp_path / "second.toml", other, stealth + '[firewall]\ntable = "pt2"\n')
    done = run_in(env.srv, "run", "-c", str(second))
    assert done.returncode == 1
    assert "cannot receive reports on NFLOG group" in done.stderr, done.stderr
    assert tables(env.srv) == ["table inet porttrap"]  # pt2 was never made
    assert "event=restored" not in done.stderr


def test_a_claim_squatted_by_a_local_user_is_refused_naming_that_user(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    squat = "import socket, time; s = socket.socket(socket.AF_UNIX); " \
            "s.bind('\\0porttrap/nftables/porttrap'); s.listen(); print('bound', flush=True); " \
            "time.sleep(600)"  # fmt: skip
    user = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]
    squatter = env.srv.start([*user, sys.executable, "-c", squat])
    assert squatter.stdout is not None and squatter.stdout.readline() == "bound\n"
    done = env.porttrap("run", check=False)
    assert done.returncode == 1
    assert f"of uid {NOBODY.pw_uid} (nobody), which is not porttrap" in done.stderr, done.stderr
    assert tables(env.srv) == []


# -- the state directory and the control socket -----------------------------------------------


def test_a_state_dir_another_user_owns_is_refused_by_run_with_the_fix(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(TRAPS)
    env.state.mkdir(mode=0o700)
    os.chown(env.state, NOBODY.pw_uid, NOBODY.pw_gid)
    done = env.porttrap("run", check=False)
    assert done.returncode == 1
    assert f"state_dir {env.state} is not safe: {env.state} is owned by uid {NOBODY.pw_uid} " \
           f"(nobody)" in done.stderr  # fmt: skip
    assert f"fix: chown root:root {env.state} && chmod 0700 {env.state}" in done.stderr
    assert tables(env.srv) == [] and list(env.state.iterdir()) == []
    os.chown(env.state, 0, 0)  # the fix it gave
    env.start()
    env.porttrap("ban", BANNED, "--permanent")
    assert env.permanent_in("ban_v4", BANNED)


def test_a_parent_others_may_write_is_refused_and_a_sticky_one_is_not(
    env_factory: Callable[[str], Env], tmp_path: Path
) -> None:
    env = env_factory(TRAPS)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone could rename the state directory away and put theirs there
    state = shared / "state"
    write_config(env.config, state, TRAPS)
    done = env.porttrap("run", check=False)
    assert done.returncode == 1
    assert f"{shared} is writable by its group and others (mode 0777)" in done.stderr
    assert f"fix: chmod go-w {shared}" in done.stderr
    assert tables(env.srv) == [] and not state.exists()  # nothing made below it either
    shared.chmod(0o1777)  # as /tmp: only root may rename or remove root's state directory
    env.start()  # made with mode 0700 and accepted
    assert (state.stat().st_mode & 0o777, state.stat().st_uid) == (0o700, 0)


def test_the_cli_refuses_an_impostor_on_the_control_socket(
    env_factory: Callable[[str], Env], impostor: Callable[[Path], subprocess.Popen[str]]
) -> None:
    env = env_factory(TRAPS)
    env.start()
    socket_path = env.state / "control.sock"
    # the state directory handed to user nobody, who puts an impostor in the daemon's place
    os.chown(env.state, NOBODY.pw_uid, NOBODY.pw_gid)
    env.state.chmod(0o755)
    fake = impostor(socket_path)

    done = env.porttrap("ban", "--permanent", BANNED, check=False)
    assert done.returncode == 1 and "banned" not in done.stdout
    assert f"state_dir {env.state} is not safe" in done.stderr, done.stderr

    os.chown(env.state, 0, 0)  # the directory is root's again, the socket still nobody's
    env.state.chmod(0o700)
    done = env.porttrap("ban", "--permanent", BANNED, check=False)
    assert done.returncode == 1 and "banned" not in done.stdout
    assert f"the control socket {socket_path} is owned by uid {NOBODY.pw_uid}" in done.stderr

    os.chown(socket_path, 0, 0)  # even a socket file of root's: the process behind it is not
    done = env.porttrap("ban", "--permanent", BANNED, check=False)
    assert done.returncode == 1 and "banned" not in done.stdout
    assert f"(PID {fake.pid}) runs as uid {NOBODY.pw_uid}, not root" in done.stderr
    assert not env.in_set("ban_v4", BANNED)
