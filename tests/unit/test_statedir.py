"""porttrap.daemon.statedir: which state directories and control sockets are porttrap's own.
Modes and links here; another user's ownership with real users in
tests/integration/test_state_owner.py (it needs root to chown)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from porttrap.daemon import control, statedir
from porttrap.daemon.statedir import UnsafePath
from porttrap.errors import DaemonNotRunning, PorttrapError


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A private directory of this test's user: its parents (tmp_path's) are checked too."""
    tmp_path.chmod(0o700)
    return tmp_path


def make(path: Path, mode: int) -> Path:
    path.mkdir()
    path.chmod(mode)
    return path


def test_a_private_directory_is_accepted(base: Path) -> None:
    statedir.check_dir(make(base / "state", 0o700))
    statedir.check_dir(make(base / "readable", 0o755))  # only writing matters


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o777, "its group and others"), (0o770, "its group"), (0o703, "others"),
     (0o1777, "its group and others")],
)  # fmt: skip
def test_a_state_dir_others_may_write_is_refused_with_the_fix(
    base: Path, mode: int, who: str
) -> None:
    state = make(base / "state", mode)
    with pytest.raises(UnsafePath) as caught:
        statedir.check_dir(state)
    assert str(caught.value) == (
        f"state_dir {state} is not safe: {state} is writable by {who} (mode {mode:04o}), so "
        f"another user could replace porttrap's control socket or database; fix: chmod 0700 "
        f"{state} (or point state_dir at a directory only root can change, such as "
        "/var/lib/porttrap)"
    )


def test_a_parent_others_may_write_is_refused_unless_sticky(base: Path) -> None:
    shared = make(base / "shared", 0o777)
    state = make(shared / "state", 0o700)
    with pytest.raises(UnsafePath, match=rf"{shared} is writable .* fix: chmod go-w {shared} "):
        statedir.check_dir(state)
    shared.chmod(0o1777)  # as /tmp: no one may rename or remove another user's entry
    statedir.check_dir(state)


def test_an_owner_outside_the_trusted_ones_is_refused(base: Path) -> None:
    state = make(base / "state", 0o700)
    others = {os.geteuid() + 1}  # as if every directory were another user's
    with pytest.raises(UnsafePath, match=r"is not safe: / is owned by uid \d+"):
        statedir.check_dir(state, trusted=others)


def test_links_are_followed_and_their_targets_checked(base: Path) -> None:
    safe = make(base / "safe", 0o700)
    unsafe = make(base / "unsafe", 0o777)
    (base / "to-safe").symlink_to(safe)
    (base / "to-unsafe").symlink_to("unsafe")  # relative
    (base / "loop").symlink_to("loop")
    statedir.check_dir(base / "to-safe")
    with pytest.raises(UnsafePath, match=rf"is not safe: {unsafe} is writable"):
        statedir.check_dir(base / "to-unsafe")
    with pytest.raises(UnsafePath, match="too many levels of symbolic links"):
        statedir.check_dir(base / "loop")
    with pytest.raises(UnsafePath, match="is not an absolute path"):
        statedir.check_dir(Path("relative"))


def test_ensure_makes_a_missing_state_dir_private_and_its_parents_0755(base: Path) -> None:
    state = base / "a" / "b" / "state"
    old = os.umask(0)  # the modes do not depend on the umask
    try:
        statedir.ensure(state)
    finally:
        os.umask(old)
    assert (state.stat().st_mode & 0o7777, (base / "a").stat().st_mode & 0o7777) == (0o700, 0o755)
    statedir.ensure(state)  # there already: only checked


def test_ensure_refuses_a_link_that_leads_nowhere_in_words(base: Path) -> None:
    (base / "state").symlink_to(base / "gone")
    with pytest.raises(PorttrapError, match="symbolic link whose target is missing"):
        statedir.ensure(base / "state")


def test_ensure_makes_nothing_below_an_unsafe_parent(base: Path) -> None:
    shared = make(base / "shared", 0o777)
    with pytest.raises(UnsafePath, match=rf"{shared} is writable"):
        statedir.ensure(shared / "new" / "state")
    assert list(shared.iterdir()) == []
    with pytest.raises(UnsafePath, match="is not a directory"):
        (base / "file").write_text("")
        statedir.ensure(base / "file" / "state")


def test_the_control_socket_must_be_a_socket_of_a_trusted_user(base: Path) -> None:
    state = make(base / "state", 0o700)
    path = state / "control.sock"
    with pytest.raises(FileNotFoundError):
        statedir.check_socket(path)
    path.write_text("")
    with pytest.raises(UnsafePath, match=r"is not a socket \(it is a regular file\)"):
        statedir.check_socket(path)
    path.unlink()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        statedir.check_socket(path)  # (another user's socket: test_state_owner.py, as root)


def test_the_client_refuses_a_server_of_another_user_and_sends_nothing() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        control.check_server(ours, Path("/x/control.sock"))  # ourselves: trusted
        with pytest.raises(UnsafePath, match=rf"\(PID {os.getpid()}\) runs as uid \d+, not root"):
            control.check_server(ours, Path("/x/control.sock"), trusted=frozenset({-1}))


def test_a_request_to_an_unsafe_state_dir_is_refused_and_a_missing_one_is_not_running(
    base: Path,
) -> None:
    state = make(base / "state", 0o777)
    with pytest.raises(UnsafePath):
        control.request(state / "control.sock", {"cmd": "status"})
    with pytest.raises(DaemonNotRunning):
        control.request(base / "missing" / "control.sock", {"cmd": "status"})
