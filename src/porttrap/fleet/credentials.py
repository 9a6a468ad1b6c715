"""The fleet's password file: root's alone, or porttrap refuses it (the password lets anyone
who reads it publish bans in this host's name on every host of the fleet)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from porttrap.errors import PorttrapError

MAX_PASSWORD_FILE = 4096


def read_password(path: Path, what: str = "[fleet] password_file") -> str:
    """The first line of `path` (`what` names it in errors), which only root (or this
    process's user) may read or change: refused otherwise, with the fix."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise PorttrapError(f"{what} {path}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        found = os.fstat(file.fileno())
        fix = f"chown root:root {path} && chmod 600 {path}"
        if not stat.S_ISREG(found.st_mode):
            raise PorttrapError(f"{what} {path} is not a regular file")
        if found.st_uid not in (0, os.geteuid()) or found.st_mode & 0o077:
            raise PorttrapError(
                f"{what} {path} can be read or changed by others (owner uid {found.st_uid}, "
                f"mode {stat.filemode(found.st_mode)}); fix: {fix}"
            )
        data = file.read(MAX_PASSWORD_FILE + 1)
    if len(data) > MAX_PASSWORD_FILE:
        raise PorttrapError(f"{what} {path} is over {MAX_PASSWORD_FILE} bytes")
    lines = data.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].strip():
        raise PorttrapError(f"{what} {path}: its first line is empty; write the password there")
    return lines[0].strip()
