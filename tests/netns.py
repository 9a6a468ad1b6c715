"""Network namespaces for kernel tests: each test gets its own, and nothing touches the host's.

`Netns.create()` makes `pt-<random>` with `lo` up; `run()` execs inside it; `inside()` moves
only the calling thread into it (setns), which is how a libnftables context gets bound to it;
`veth()` joins two namespaces. `delete()` kills the processes the test started there (by PID)
and removes the namespace; the `netns_factory` fixture calls it for every namespace it made.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess  # noqa: TID251 - test helper
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CLONE_NEWNET = 0x40000000
THREAD_NETNS = Path("/proc/thread-self/ns/net")
HOST_NETNS = Path("/proc/1/ns/net")
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except PermissionError:  # /proc/1 is out of reach in some containers
        return None


STARTED_IN = _inode(THREAD_NETNS)  # read at import, before any test moves a thread


def in_host_netns() -> bool:
    """Whether this thread is in the namespace of PID 1 or the one this process started in."""
    here = _inode(THREAD_NETNS)
    return here in (STARTED_IN, _inode(HOST_NETNS))


def ip(*argv: str, timeout: float = 10) -> str:
    """Run `ip ARGV...` (namespace management only); stdout, or CalledProcessError."""
    return _run(["ip", *argv], timeout)


def _run(argv: Sequence[str], timeout: float) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


class Netns:
    """A network namespace that this test created and will delete."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.processes: list[subprocess.Popen[str]] = []

    @classmethod
    def create(cls, prefix: str = "pt-") -> Netns:
        netns = cls(f"{prefix}{secrets.token_hex(4)}")
        ip("netns", "add", netns.name)
        try:
            netns.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            netns.delete()
            raise
        return netns

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def run(self, argv: Sequence[str], timeout: float = 10) -> str:
        """Run `argv` inside the namespace; stdout, or CalledProcessError with stderr."""
        return _run(["ip", "netns", "exec", self.name, *argv], timeout)

    def start(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start a long-running process inside; `delete()` kills it by PID."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    @contextmanager
    def inside(self) -> Iterator[None]:
        """Move this thread into the namespace for the block, and back afterwards."""
        with THREAD_NETNS.open("rb") as home, self.path.open("rb") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def veth(self, other: Netns, mine: Sequence[str], theirs: Sequence[str]) -> tuple[str, str]:
        """A veth pair between this namespace and `other`, up, with addresses (CIDR strings;
        IPv6 ones without duplicate address detection). Returns the two interface names."""
        here, there = f"v{secrets.token_hex(3)}a", f"v{secrets.token_hex(3)}b"
        self.run(["ip", "link", "add", here, "type", "veth", "peer", "name", there,
                  "netns", other.name])  # fmt: skip
        for netns, device, addresses in ((self, here, mine), (other, there, theirs)):
            for address in addresses:
                netns.run(["ip", "addr", "add", address, "dev", device, *_nodad(address)])
            netns.run(["ip", "link", "set", device, "up"])
        return here, there

    def delete(self) -> None:
        """Kill the processes started here, then remove the namespace."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)
        self.processes.clear()
        if self.path.exists():
            ip("netns", "del", self.name)


def _nodad(address: str) -> list[str]:
    return ["nodad"] if ":" in address else []
