"""The hosts.deny line of each ban (PortSentry's KILL_HOSTS_DENY), written safely.

- Which lines are porttrap's: a state file (`state_dir/hosts-deny.json`) lists the line
  porttrap wrote for each target. Only those are ever removed; a line the admin wrote stays,
  even when it is the very line porttrap would write (porttrap then adds nothing and owns
  nothing).
- The file holds, for every active ban, its line; and no line of porttrap's for a ban that
  ended (removed on unban and expiry, unless `keep`: the line is then left and forgotten, as
  PortSentry did). On start the file is reconciled with the active bans: lines of bans that
  ended while porttrap was down go.
- Atomic: the new content goes to a temporary file in the same directory, fsync, rename; the
  mode and owner of the old file are kept. A reader sees the old file or the new one, whole.
  When the file changed since it was read (the admin saved an edit meanwhile), the new one is
  not renamed over it: it is read and edited again.
- A symbolic link is refused: the rename would replace the link, not the file it points to.
- Crash-safe ownership: the state file lists a line before it is added to hosts.deny and
  until after it is removed, so a crash can leave a stale entry in the state (harmless: its
  line is not found) but never a line of porttrap's that nothing will remove.
- Blocking file I/O runs on a thread of its own, never on the event loop: a ban never waits
  for it. Requests queued while a write runs are done together in the next one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import stat
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from porttrap import log

STATE_VERSION = 1
ATTEMPTS = 3  # reads and rewrites when the file keeps changing under porttrap
NEW_FILE_MODE = 0o644  # hosts.deny is read by every program linked with libwrap


class HostsDenyError(Exception):
    """hosts.deny cannot be read or replaced; the message says why and what to do."""


class ChangedMeanwhile(HostsDenyError):
    """The file changed between porttrap's read and its rename: read it again."""


# -- the pure part -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Edit:
    """The outcome of one reconciliation: the new lines of the file (None: unchanged), what
    porttrap owns afterwards, and what it owns in between (while the file is replaced)."""

    lines: list[str] | None
    owned: dict[str, str]
    owned_meanwhile: dict[str, str]


def reconcile(
    lines: list[str],
    owned: dict[str, str],
    wanted: dict[str, str],
    targets: Iterable[str],
    keep: bool,
) -> Edit:
    """Make `lines` (the file, without line ends) hold wanted[t] for each of `targets` that
    has one, and no line porttrap owns for a target that has none. `owned`: the line porttrap
    wrote per target. With `keep`, porttrap's lines are never removed, only forgotten."""
    present = Counter(line.strip() for line in lines)
    new_owned, drop, added = dict(owned), Counter[str](), list[str]()
    for target in targets:
        want, have = wanted.get(target), owned.get(target)
        if want == have:
            continue
        if have is not None:
            del new_owned[target]
            if not keep and present[have.strip()] > 0:
                present[have.strip()] -= 1
                drop[have.strip()] += 1
        if want is not None and present[want.strip()] == 0:  # the admin's own line counts
            present[want.strip()] += 1
            added.append(want)
            new_owned[target] = want
    if not drop and not added:
        return Edit(None, new_owned, new_owned)
    kept = _without(lines, drop)
    return Edit(kept + added, new_owned, owned | new_owned)


def _without(lines: list[str], drop: Counter[str]) -> list[str]:
    """`lines` less drop[line] occurrences of each line, the last ones (porttrap appends)."""
    kept = []
    for line in reversed(lines):
        key = line.strip()
        if drop[key] > 0:
            drop[key] -= 1
            continue
        kept.append(line)
    kept.reverse()
    return kept


# -- the file ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The file as read: its lines, its mode and owner (None: it does not exist), and what
    tells whether it changed since (inode, modification time, size)."""

    lines: list[str]
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    identity: tuple[int, int, int] | None = None


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _current(path: Path) -> tuple[int, int, int] | None:
    try:
        return _identity(path.lstat())
    except FileNotFoundError:
        return None


def read(path: Path) -> Snapshot:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return Snapshot([])
    except OSError as err:
        if path.is_symlink():
            raise HostsDenyError(_symlink_message(path)) from None
        raise HostsDenyError(f"cannot read {path}: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise HostsDenyError(f"{path} is not a regular file; set [actions.hosts_deny] file")
        data = file.read()
    text = data.decode("utf-8", "surrogateescape")  # the admin's bytes go back unchanged
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    mode = stat.S_IMODE(info.st_mode)
    return Snapshot(lines, mode, info.st_uid, info.st_gid, _identity(info))


def _symlink_message(path: Path) -> str:
    return (
        f"{path} is a symbolic link: porttrap replaces the file by renaming a new one over it, "
        "which would replace the link, not the file it points to; set [actions.hosts_deny] "
        f"file to the real file ({path.resolve()})"
    )


def write(path: Path, lines: list[str], like: Snapshot) -> None:
    """Replace `path` atomically with `lines`, keeping the mode and owner it had. Raises
    ChangedMeanwhile, and changes nothing, when `path` is no longer what `like` read."""

    def unchanged() -> None:
        if path.is_symlink():  # it may have become one since it was read
            raise HostsDenyError(_symlink_message(path))
        if _current(path) != like.identity:
            raise ChangedMeanwhile(f"{path} changed while porttrap rewrote it")

    data = "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape")
    mode = NEW_FILE_MODE if like.mode is None else like.mode
    owner = (like.uid, like.gid) if like.mode is not None else None
    try:
        _replace(path, data, mode, owner, check=unchanged)
    except OSError as err:
        raise HostsDenyError(f"cannot write {path}: {err.strerror or err}") from None


def _replace(
    path: Path,
    data: bytes,
    mode: int,
    owner: tuple[int, int] | None,
    check: Callable[[], None] | None = None,
) -> None:
    """Write `data` to a temporary file beside `path`, sync it, then (when `check` does not
    raise) rename it over `path`."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.porttrap-")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                os.fchown(file.fileno(), *owner)
            os.fsync(file.fileno())
        if check is not None:
            check()
        Path(temporary).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(temporary).unlink()
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """The rename itself reaches the disk (ext4 and others need the directory fsynced)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the state file ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class State:
    """The lines porttrap wrote, per target, and in which file."""

    file: Path | None
    lines: dict[str, str]


def load_state(path: Path) -> State:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return State(None, {})
    except (OSError, ValueError) as err:
        log.event("hosts-deny-state-unreadable", logging.WARNING, file=path, error=str(err))
        return State(None, {})
    ok = isinstance(data, dict) and data.get("version") == STATE_VERSION
    lines = data.get("lines") if ok else None
    if not ok or not isinstance(lines, dict) or not isinstance(data.get("file"), str):
        log.event("hosts-deny-state-unreadable", logging.WARNING, file=path, error="unknown format")
        return State(None, {})
    return State(Path(data["file"]), {str(k): str(v) for k, v in lines.items()})


def save_state(path: Path, state: State) -> None:
    if state.file is None or not state.lines:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    text = json.dumps(
        {"version": STATE_VERSION, "file": str(state.file), "lines": state.lines}, indent=0
    )
    _replace(path, text.encode(), 0o600, None)


# -- the worker ----------------------------------------------------------------------------

Request = Callable[["HostsDeny"], None]


class HostsDeny:
    """Keeps `file` in line with the bans, on a thread of its own.

    `update` and `sync` are called from the event loop and return at once; the thread
    applies what has queued up in one rewrite. A failed write is logged and counted, and what
    it should have done is tried again with the next request (and at the next start).
    """

    def __init__(self, file: Path | None, keep: bool, state_path: Path) -> None:
        """`file` None: hosts.deny is no longer configured; `sync` removes the lines porttrap
        left in the file named by the state file, and nothing is added."""
        self.file = file
        self.keep = keep
        self.failed = 0
        self._state_path = state_path
        self._wanted: dict[str, str] = {}  # the line each active ban should have
        self._dirty: dict[str, None] = {}  # targets whose line may not match yet, in order
        self._owned: dict[str, str] = {}
        self._state_file: Path | None = None
        self._requests: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def lines(self) -> int:
        """Lines porttrap has in the file now (read by `status`; a snapshot from the thread)."""
        return len(self._owned)

    # -- from the event loop --

    def update(self, changes: list[tuple[str, str | None]]) -> None:
        """(target, its line) for each new ban, (target, None) for each ban that ended."""
        self._submit(lambda me: me._want(changes))

    def sync(self, wanted: dict[str, str]) -> None:
        """The active bans' lines: on start, reconcile the file with them."""
        self._submit(lambda me: me._sync(wanted))

    def close(self) -> None:
        """Finish every request queued so far, then stop the thread."""
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None

    def _submit(self, request: Request) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name="porttrap-hosts-deny", daemon=True
            )
            self._thread.start()
        self._requests.put(request)

    # -- on the thread --

    def _work(self) -> None:
        self._load()
        stopping = False
        while not stopping:
            batch = [self._requests.get()]
            with contextlib.suppress(queue.Empty):
                while batch[-1] is not None:
                    batch.append(self._requests.get_nowait())
            stopping = batch[-1] is None
            try:
                for request in batch:
                    if request is not None:
                        request(self)
                self._write()
            except Exception:  # a bug must not silently stop every later edit
                self.failed += 1
                log.LOGGER.exception(log.fields("action-failed", action="hosts-deny"))

    def _load(self) -> None:
        state = load_state(self._state_path)
        self._state_file, self._owned = state.file, dict(state.lines)

    def _want(self, changes: list[tuple[str, str | None]]) -> None:
        for target, line in changes:
            if line is None:
                self._wanted.pop(target, None)
            else:
                self._wanted[target] = line
            self._dirty[target] = None

    def _sync(self, wanted: dict[str, str]) -> None:
        self._wanted = dict(wanted) if self.file is not None else {}
        self._dirty |= dict.fromkeys([*self._owned, *self._wanted])

    def _write(self) -> None:
        if not self._dirty:
            return
        try:
            if self._state_file is not None and self._state_file != self.file:
                self._leave(self._state_file)
            if self.file is not None:
                self._apply(self.file)
        except (HostsDenyError, OSError) as err:
            self.failed += 1
            level = logging.DEBUG if self._failing else logging.ERROR  # once per streak
            self._failing = True
            log.event("action-failed", level, action="hosts-deny", file=self.file, error=str(err))
            return
        if self._failing:
            log.event("hosts-deny-recovered", file=self.file)
        self._failing = False
        self._dirty.clear()

    def _apply(self, file: Path) -> None:
        self._state_file = file
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._edit(file)
                return
            except ChangedMeanwhile:
                if attempt == ATTEMPTS:
                    raise

    def _edit(self, file: Path) -> None:
        snapshot = read(file)
        edit = reconcile(snapshot.lines, self._owned, self._wanted, self._dirty, self.keep)
        if edit.lines is not None:
            save_state(self._state_path, State(file, edit.owned_meanwhile))
            write(file, edit.lines, snapshot)
        save_state(self._state_path, State(file, edit.owned))
        self._owned = edit.owned

    def _leave(self, old: Path) -> None:
        """Another file was configured before (or none is now): take porttrap's lines out of
        the old one, unless `keep`."""
        if not self.keep:
            snapshot = read(old)
            edit = reconcile(snapshot.lines, self._owned, {}, list(self._owned), keep=False)
            if edit.lines is not None:
                write(old, edit.lines, snapshot)
            log.event("hosts-deny-left", file=old, removed=len(self._owned))
        save_state(self._state_path, State(None, {}))
        self._owned, self._state_file = {}, None
        self._dirty |= dict.fromkeys(self._wanted)
