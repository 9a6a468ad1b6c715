"""One owner per table: a claim on porttrap's kernel objects (the nftables table, the ipset
backend's sets and chains) in this network namespace, held for as long as the daemon runs.

The claim is a unix socket bound to an abstract name made of the backend and the table
(`@porttrap/nftables/porttrap`). Abstract names belong to the network namespace, exactly the
scope of the table, and the kernel releases one when its process ends, however it ends: a
daemon killed with SIGKILL leaves no stale lock behind. A second instance (another state_dir,
the same table) cannot bind the name and is refused before it touches the kernel; it connects
to the holder and names it from SO_PEERCRED. `porttrap flush` and `uninstall-service` take the
same claim for their teardown, so they never remove a table that a live daemon owns.

An abstract name has no file permissions: a local user could bind it first and so keep porttrap
from starting (never make it share or lose a table). The refusal then names that process and
its user. The daemon answers connections on the claim (accepts and closes them) so that a
refused instance never finds the holder's queue full.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import socket
import struct
from types import TracebackType

from porttrap.errors import FirewallError
from porttrap.firewall import registry

_CRED = struct.Struct("3i")
_BACKLOG = 16


def claim(backend: str, table: str) -> contextlib.AbstractContextManager[Claim | None]:
    """The claim on `table` of `backend` in this network namespace, or FirewallError naming
    its holder. A backend that changes nothing in the kernel (dry-run) needs none: None."""
    if not registry.get(backend).in_kernel:
        return contextlib.nullcontext()
    return Claim(backend, table)


def name_of(backend: str, table: str) -> str:
    """The abstract socket name (without its leading NUL) that claims `table` of `backend`."""
    return f"porttrap/{backend}/{table}"


class Claim:
    """Held: this process owns `table` of `backend` in its network namespace until `release`."""

    def __init__(self, backend: str, table: str) -> None:
        self.backend, self.table = backend, table
        self._sock: socket.socket | None = _bind(backend, table)

    def answer(self, loop: asyncio.AbstractEventLoop) -> None:
        """Accept and close, on `loop`, the connections of instances asking who holds it."""
        if self._sock is not None:
            self._sock.setblocking(False)
            loop.add_reader(self._sock.fileno(), self._drain)

    def _drain(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                self._sock.accept()[0].close()

    def release(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()


def _bind(backend: str, table: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + name_of(backend, table))
        sock.listen(_BACKLOG)
    except OSError as err:
        sock.close()
        if err.errno != errno.EADDRINUSE:
            raise FirewallError(f"cannot claim {_what(backend, table)}: {err}") from err
        raise FirewallError(_held(backend, table)) from None
    return sock


def holder(backend: str, table: str) -> tuple[int, int] | None:
    """(pid, uid) of the process holding the claim, as this process's PID namespace sees it;
    None when none does or it cannot be told."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        try:
            sock.connect("\0" + name_of(backend, table))
        except OSError:
            return None
        pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid), int(uid)


def _held(backend: str, table: str) -> str:
    what = _what(backend, table)
    found = holder(backend, table)
    if found is None:
        who = "another process (its PID could not be read)"
    else:
        pid, uid = found
        who = f"another porttrap, PID {pid}" if uid in (0, os.geteuid()) else (
            f"PID {pid} of {_user(uid)}, which is not porttrap (a local user may be blocking "
            "porttrap: stop that process)")  # fmt: skip
    return (
        f"{what} in this network namespace is owned by {who}; porttrap changed nothing. One "
        "table has one owner: stop that daemon first, or give this configuration another "
        "[firewall] table"
    )


def _what(backend: str, table: str) -> str:
    if backend == "nftables":
        return f"the nftables table inet {table}"
    return f"the {backend} backend's sets and chains for table {table!r}"


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
