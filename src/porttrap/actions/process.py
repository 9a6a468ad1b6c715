"""Running one command: started at once (synchronously), watched on the event loop.

Why not `asyncio.create_subprocess_exec`: it starts the process in a task, that is on a later
turn of the loop, and `first = true` (PortSentry's KILL_RUN_CMD_FIRST) promises that the
command has started before the kernel ban of its batch is applied, in the same turn. So the
process is spawned here with `os.posix_spawn` (argv, never a shell unless the config asked
for `/bin/sh -c`; glibc spawns with vfork semantics, a fraction of a millisecond whatever the
daemon's size) and then watched without blocking: its exit through a pidfd, its output
through a pipe, both on the loop. It runs in a session (and process group) of its own, so
that a timeout ends it and everything it started: SIGTERM, then SIGKILL 5 s later.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OUTPUT_LIMIT = 4096  # bytes of a command's output kept for the log
KILL_AFTER = 5.0  # seconds from SIGTERM to SIGKILL
_READ = 65536


class Ending(enum.Enum):
    """How a command or webhook ended, as the runner counts it."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed-out"


@dataclass(frozen=True, slots=True)
class Exit:
    """How a process ended: `code` as `os.waitstatus_to_exitcode` gives it (negative: the
    signal that killed it), its output (at most OUTPUT_LIMIT bytes), whether it ran out of
    time."""

    code: int
    output: bytes
    truncated: bool
    timed_out: bool


def spawn(argv: Sequence[str], env: dict[str, str]) -> tuple[int, int]:
    """Start `argv` in a new session with stdin /dev/null and stdout+stderr into a pipe.
    Returns (pid, read end of the pipe, non-blocking). Raises OSError when it cannot start
    (no such program, not executable ...)."""
    read_fd, write_fd = os.pipe()  # both close-on-exec; dup2 makes the child's 1 and 2
    actions: list[tuple[int, int] | tuple[int, int, int] | tuple[int, int, str, int, int]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, write_fd, 1),
        (os.POSIX_SPAWN_DUP2, write_fd, 2),
    ]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in inherited_fds()]
    start = os.posix_spawn if "/" in argv[0] else os.posix_spawnp  # a name: looked up in PATH
    try:
        pid = start(
            argv[0],
            list(argv),
            env,
            file_actions=actions,
            setsid=True,
            setsigmask=(),  # nothing blocked, whatever the calling thread blocks
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores these; a child must not
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return pid, read_fd


def inherited_fds() -> list[int]:
    """The daemon's descriptors above 2 that a child would inherit. Python opens everything
    close-on-exec, but C libraries in the daemon may not (libnftables' netlink socket does
    not): a hook must not hold porttrap's sockets. (posix_spawn, unlike subprocess, does not
    close them; a descriptor closed meanwhile by another thread is no error.)"""
    found = []
    for entry in Path("/proc/self/fd").iterdir():
        fd = int(entry.name)
        with contextlib.suppress(OSError):  # the listing's own descriptor, now closed
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
    return found


class Process:
    """A started process, watched on `loop` until it exits; `ended` resolves with its Exit.
    After `timeout` seconds its process group gets SIGTERM, KILL_AFTER later SIGKILL."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, pid: int, output: int, timeout: float
    ) -> None:
        self.pid = pid
        self.ended: asyncio.Future[Exit] = loop.create_future()
        self._loop = loop
        self._output_fd: int | None = output
        self._output = bytearray()
        self._truncated = False
        self._timed_out = False
        self._pidfd: int | None = None
        self._kill: asyncio.TimerHandle | None = None
        loop.add_reader(output, self._read)
        self._timer: asyncio.TimerHandle | None = loop.call_later(timeout, self._terminate)
        self._watch_exit()

    @classmethod
    def start(
        cls, loop: asyncio.AbstractEventLoop, argv: Sequence[str], env: dict[str, str],
        timeout: float,
    ) -> Process:  # fmt: skip
        pid, output = spawn(argv, env)
        return cls(loop, pid, output, timeout)

    def kill(self) -> None:
        """SIGKILL to the process group now (the daemon is stopping and the grace is over)."""
        self._signal(signal.SIGKILL)

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # Linux before 5.3: a thread waits instead
            waited = self._loop.run_in_executor(None, os.waitpid, self.pid, 0)
            waited.add_done_callback(lambda done: self._ended(done.result()[1]))
            return
        self._loop.add_reader(self._pidfd, self._reap)

    def _reap(self) -> None:
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._ended(status)

    def _ended(self, status: int) -> None:
        """The process is reaped: its pid may be reused from now on, so no signal goes out."""
        for timer in (self._timer, self._kill):
            if timer is not None:
                timer.cancel()
        self._timer = self._kill = None
        self._read()  # what it wrote before exiting; a child it left behind may hold the pipe
        self._close_output()
        code = os.waitstatus_to_exitcode(status)
        if not self.ended.done():
            self.ended.set_result(Exit(code, bytes(self._output), self._truncated, self._timed_out))

    def _read(self) -> None:
        if self._output_fd is None:
            return
        while True:
            try:
                chunk = os.read(self._output_fd, _READ)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self._close_output()
                return
            room = OUTPUT_LIMIT - len(self._output)
            self._output += chunk[: max(room, 0)]
            self._truncated = self._truncated or len(chunk) > room

    def _close_output(self) -> None:
        if self._output_fd is not None:
            self._loop.remove_reader(self._output_fd)
            os.close(self._output_fd)
            self._output_fd = None

    def _terminate(self) -> None:
        self._timer = None
        self._timed_out = True
        self._signal(signal.SIGTERM)
        self._kill = self._loop.call_later(KILL_AFTER, self._signal, signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.ended.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
