"""Reading an old tool's files, and nothing else: `porttrap import` runs as root on files that
another user may have written, and its notes go to a terminal or a log.

- Only files inside the directory the import is given (after following links), or files named
  on the command line. A path in an imported config that leads elsewhere is not followed.
- Regular files only: a FIFO would block the import, a device may act on being opened, and a
  kernel pseudo-file (/proc, /sys) is no tool's config.
- At most MAX_BYTES each. The largest file these tools ship is Debian's portsentry.conf (12 KB
  with its comments); an ignore list or a port_trap whitelist of MAX_BYTES holds some 50,000
  entries, which no hand-kept list reaches. The cap bounds the import's memory (a 200 MB file
  took 0.6 GB) and its notes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from porttrap.config.legacy.notes import SourceFile
from porttrap.errors import PorttrapError

MAX_BYTES = 1 << 20
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def inside(path: Path, directory: Path) -> bool:
    """Whether `path`, links followed, is within `directory` (links followed too)."""
    return path.resolve().is_relative_to(directory.resolve())


def read_inside(path: Path, directory: Path) -> SourceFile:
    """`path`, a file the import found in `directory`; refused (PorttrapError) when a link
    takes it outside, or as `read`."""
    _check_inside(path, directory)
    return read(path, within=directory)


def check_database(path: Path, directory: Path) -> None:
    """Refuse `path` (PorttrapError) unless it is a regular file inside `directory`, of any
    size: a database, which SQLite reads page by page."""
    _check_inside(path, directory)
    found = path.stat()
    _check(path, found, cap=False)


def _check_inside(path: Path, directory: Path) -> None:
    if not inside(path, directory):
        raise PorttrapError(
            f"{path}: a link to {path.resolve()}, outside {directory}: not read (an import "
            f"reads only the files in the directory it is given); copy the file into {directory}"
        )


def read(path: Path, within: Path | None = None) -> SourceFile:
    """`path` as text (UTF-8, undecodable bytes replaced). Raises PorttrapError when it is not
    a regular file, is larger than MAX_BYTES, or (`within`) was swapped for a link out of that
    directory after it was checked; OSError when it cannot be opened."""
    before = path.stat()
    _check(path, before)  # before opening: opening a device may act on it
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise PorttrapError(f"{path}: replaced while it was read: import again")
        _check(path, opened)
        if within is not None:
            _check_opened(path, fd, within)
        data = handle.read(opened.st_size + 1)
    if len(data) != opened.st_size:
        raise PorttrapError(
            f"{path}: its content is not the {opened.st_size} bytes its size says: a kernel "
            "pseudo-file (/proc, /sys) or a file being written: not read (an import reads "
            "regular files only)"
        )
    return SourceFile(str(path), data.decode("utf-8", errors="replace"))


def _check_opened(path: Path, fd: int, directory: Path) -> None:
    """The file actually opened is inside `directory` (a link swapped in between the check and
    the open is caught here); skipped where /proc is not mounted."""
    try:
        opened = Path(f"/proc/self/fd/{fd}").readlink()
    except OSError:
        return
    if not opened.is_relative_to(directory.resolve()):
        raise PorttrapError(f"{path}: replaced by a link out of {directory}: not read")


def _check(path: Path, found: os.stat_result, cap: bool = True) -> None:
    if not stat.S_ISREG(found.st_mode):
        kind = _KINDS.get(stat.S_IFMT(found.st_mode), "not a regular file")
        raise PorttrapError(f"{path}: {kind}: not read (an import reads regular files only)")
    if cap and found.st_size > MAX_BYTES:
        raise PorttrapError(
            f"{path}: {found.st_size} bytes, over the {MAX_BYTES} an import reads (the old "
            "tools' files are a few KB): not read; check that it is the right file"
        )
