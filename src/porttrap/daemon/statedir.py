"""Whether porttrap's state directory is its own: no other user may be able to replace the
control socket or the database in it, nor the directory itself.

The rule, for the state directory and every directory on the way to it (symbolic links
followed, each link checked too): owned by root or by porttrap's own user, and not writable by
group or others. One exception, for the parents only: a directory with the sticky bit (/tmp,
mode 1777) may be writable by all, because the sticky bit lets no user rename or remove an
entry that another user owns, and the entry below it is checked in turn (it must be root's).
The state directory itself is never allowed the exception: in a sticky directory anyone could
still add files, and the database's journal files are made beside it.

The daemon checks before it opens the database or touches the kernel (`ensure`, which makes a
missing directory with safe modes); the CLI checks the control socket's directory and the
socket before it trusts an answer (`check_socket`).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Collection, Iterator
from pathlib import Path

from porttrap.errors import PorttrapError

_MAX_LINKS = 40  # as the kernel's own limit on symbolic links in one lookup


class UnsafePath(PorttrapError):
    """Another user could change what lies at a path porttrap trusts."""


def trusted_uids() -> frozenset[int]:
    """Root and porttrap's own user."""
    return frozenset({0, os.geteuid()})


def check_dir(path: Path, trusted: Collection[int] | None = None) -> None:
    """Raise UnsafePath, with the fix, when another user could change `path` (a directory) or
    any directory on the way to it; FileNotFoundError when part of it is missing."""
    _refuse(path, _walk(path), trusted, path_too=True)


def ensure(path: Path, trusted: Collection[int] | None = None) -> None:
    """The state directory `path`, made when missing (parents 0755, itself 0700), then
    checked as `check_dir` does, before anything is written into it."""
    try:
        check_dir(path, trusted)
        return
    except FileNotFoundError:
        pass
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    if not missing:  # every name exists, yet something on the way leads nowhere
        raise PorttrapError(
            f"state_dir {path} leads to a symbolic link whose target is missing; point "
            "state_dir at a directory, or remove the link (porttrap then makes the directory)"
        )
    try:
        _refuse(path, _walk(missing[-1].parent), trusted, path_too=False)  # what is there
        for directory in reversed(missing):
            directory.mkdir(mode=0o700 if directory == path else 0o755)
        check_dir(path, trusted)
    except OSError as err:
        raise PorttrapError(
            f"cannot create state_dir {path}: {err.strerror} ({err.filename}); run porttrap "
            "as root or point state_dir at a directory it may create"
        ) from err


def check_socket(path: Path, trusted: Collection[int] | None = None) -> None:
    """Raise UnsafePath when the control socket at `path`, or its directory, could be another
    user's; FileNotFoundError when there is none."""
    uids = trusted_uids() if trusted is None else trusted
    check_dir(path.parent, uids)
    st = path.lstat()
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafePath(
            f"{path} is not a socket (it is {_kind(st)}): porttrap did not make it; remove it "
            f"(rm {path}) and restart porttrap"
        )
    if st.st_uid not in uids:
        raise UnsafePath(
            f"the control socket {path} is owned by {_user(st.st_uid)}, not root: another "
            f"user made it, so its answers cannot be trusted; remove it (rm {path}), check "
            f"who could write {path.parent}, and restart porttrap"
        )


def _refuse(path: Path, met: list[tuple[Path, os.stat_result]],
            trusted: Collection[int] | None, path_too: bool) -> None:  # fmt: skip
    uids = trusted_uids() if trusted is None else trusted
    for place, problem, fix in _problems(met, uids, path_too):
        raise UnsafePath(_message(path, place, problem, fix))


def _walk(path: Path) -> list[tuple[Path, os.stat_result]]:
    """Every directory and link met on the way from / to `path` (links followed, as the
    kernel follows them), each with its lstat; the last is `path` itself."""
    if not path.is_absolute():
        raise UnsafePath(f"{path} is not an absolute path")
    met = [(Path("/"), os.lstat("/"))]
    here, todo, links = Path("/"), list(path.parts[1:]), 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        place = here.parent if name == ".." else here / name
        st = os.lstat(place)
        met.append((place, st))
        if not stat.S_ISLNK(st.st_mode):
            if not stat.S_ISDIR(st.st_mode):
                break  # nothing lies below it: `_problems` names it
            here = place
            continue
        links += 1
        if links > _MAX_LINKS:
            raise UnsafePath(f"{path}: too many levels of symbolic links")
        target = place.readlink()
        here = Path("/") if target.is_absolute() else here
        todo[:0] = [part for part in target.parts if part != "/"]
    return met


def _problems(met: list[tuple[Path, os.stat_result]], uids: Collection[int], path_too: bool
              ) -> Iterator[tuple[Path, str, str]]:  # fmt: skip
    """(where, what is wrong, the fix) for each unsafe step; `path_too`: the last one is the
    state directory itself (else a parent)."""
    for index, (place, st) in enumerate(met):
        last = path_too and index == len(met) - 1
        if st.st_uid not in uids:
            mode = "0700" if last else "go-w"
            yield place, f"is owned by {_user(st.st_uid)}", (
                f"chown root:root {place} && chmod {mode} {place}")  # fmt: skip
        elif stat.S_ISLNK(st.st_mode):
            continue  # a link's own mode means nothing: its directory and target are checked
        elif not stat.S_ISDIR(st.st_mode):
            yield place, f"is not a directory (it is {_kind(st)})", f"remove {place}"
        elif (writable := _writable(st)) and (last or not st.st_mode & stat.S_ISVTX):
            bits = stat.S_IMODE(st.st_mode)
            yield place, f"is writable by {writable} (mode {bits:04o})", (
                f"chmod {'0700' if last else 'go-w'} {place}")  # fmt: skip


def _writable(st: os.stat_result) -> str | None:
    group, others = st.st_mode & stat.S_IWGRP, st.st_mode & stat.S_IWOTH
    if group and others:
        return "its group and others"
    return "its group" if group else "others" if others else None


def _message(path: Path, place: Path, problem: str, fix: str) -> str:
    return (
        f"state_dir {path} is not safe: {place} {problem}, so another user could replace "
        f"porttrap's control socket or database; fix: {fix} (or point state_dir at a "
        "directory only root can change, such as /var/lib/porttrap)"
    )


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _kind(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    return "a special file"
