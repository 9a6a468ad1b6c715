"""The control socket: one JSON request per connection, one JSON answer.

    -> {"cmd": "ban", "targets": ["198.51.100.7"], "for": 3600}
    <- {"ok": true, "bans": [...]}    or    {"ok": false, "error": "..."}

The socket lives in state_dir with mode 0600, and the peer must be root (or the daemon's own
user): banning and unbanning are root's business. The client trusts an answer only from a
socket no other user could have put there (`statedir.check_socket`), served by a process of
root's (or its own user's): SO_PEERCRED, both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from porttrap import log
from porttrap.daemon import statedir
from porttrap.errors import (
    ConfigError,
    DaemonNotRunning,
    PorttrapError,
    Refused,
    RemoteConfigError,
    UsageError,
)

# A handler answers at once, or (ban, unban) once what it did is recorded.
Handler = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024 * 1024  # a ban list read from a file can be large
_CRED = struct.Struct("3i")


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    return peer_cred(sock)[1]


def peer_cred(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, _gid = _CRED.unpack(raw)
    return int(pid), int(uid)


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        if self.path.exists():
            if ping(self.path):
                raise PorttrapError(
                    f"another porttrap is already running (it answers on {self.path})"
                )
            self.path.unlink()  # stale socket of a daemon that died
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            uid = _peer_uid(writer)
            if uid not in (0, os.getuid()):
                answer = {"ok": False, "error": "only root may control porttrap"}
            else:
                answer = await self._answer(await reader.readline())
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as err:
            log.event("control-error", logging.WARNING, error=str(err))
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line, parse_constant=_no_constant)
            handler = self.handlers.get(request.get("cmd", ""))
            if handler is None:
                return {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}
            answer = handler(request)
            if inspect.isawaitable(answer):
                answer = await answer
            return {"ok": True, **answer}
        except Exception as err:  # every failure is answered: `_refusal`
            return _refusal(err)


# A refusal's "kind": the error the client raises again, and so the CLI's exit code
_ERRORS: dict[str, type[PorttrapError]] = {"usage": UsageError, "refused": Refused}


def _refusal(err: Exception) -> dict[str, Any]:
    """The answer to a request that failed, called in its `except`. A bug is logged with its
    traceback, and the client told: it hears of every failure rather than of nothing."""
    if isinstance(err, ConfigError | RemoteConfigError):
        problems = [str(p) for p in err.problems]
        return {"ok": False, "error": "invalid configuration", "problems": problems}
    if isinstance(err, PorttrapError):
        kinds = [kind for kind, cls in _ERRORS.items() if isinstance(err, cls)]
        return {"ok": False, "error": str(err), **({"kind": kinds[0]} if kinds else {})}
    if isinstance(err, ValueError | TypeError | AttributeError):
        return {"ok": False, "error": f"bad request: {err}"}
    if isinstance(err, RecursionError):  # json refuses nesting past Python's recursion limit
        return {"ok": False, "error": "bad request: JSON nested too deeply"}
    log.LOGGER.exception(log.fields("control-failed"))
    return {"ok": False, "error": "the daemon failed on this request (a bug: see its log)"}


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity, which Python's json reads and JSON itself does not have:
    refused, so that no such value reaches a ban ("for": NaN was once stored as no end)."""
    raise ValueError(f"{name} is not a number JSON allows: give a finite number")


def ping(path: Path) -> bool:
    """True when a daemon answers on `path`."""
    try:
        request(path, {"cmd": "status"}, timeout=2.0)
    except DaemonNotRunning:
        return False
    return True


def request(path: Path, payload: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to the daemon and return its answer; raises PorttrapError on {ok: false},
    and `statedir.UnsafePath` (sending nothing) when the socket may not be porttrap's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            statedir.check_socket(path)
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise DaemonNotRunning(
                f"porttrap is not running: no daemon answers on {path} "
                "(start it with `porttrap run`, or check -c / state_dir)"
            ) from err
        except PermissionError as err:
            raise PorttrapError(f"permission denied on {path}: run this as root") from err
        check_server(sock, path)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        return answer_of(_read_line(sock))


def answer_of(data: bytes) -> dict[str, Any]:
    """The daemon's answer in the bytes it sent; PorttrapError when it refused the request,
    or sent something that is not an answer (a broken daemon, or something else listening)."""
    if not data:
        raise PorttrapError("the daemon closed the control connection without an answer")
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise PorttrapError(f"the daemon's answer is not JSON ({err}): {data[:80]!r}") from None
    if not isinstance(answer, dict):
        raise PorttrapError(f"the daemon's answer is not a JSON object: {data[:80]!r}")
    if not answer.get("ok") and isinstance(problems := answer.get("problems"), list):
        raise RemoteConfigError([str(p) for p in problems])
    if not answer.get("ok"):
        raise _ERRORS.get(str(answer.get("kind")), PorttrapError)(
            str(answer.get("error", "the daemon refused the request"))
        )
    return answer


def check_server(sock: socket.socket, path: Path, trusted: frozenset[int] | None = None) -> None:
    """Refuse a server that runs as another user than root (or our own): it is not porttrap,
    whatever its socket file looks like."""
    pid, uid = peer_cred(sock)
    if uid not in (statedir.trusted_uids() if trusted is None else trusted):
        raise statedir.UnsafePath(
            f"the process answering on {path} (PID {pid}) runs as uid {uid}, not root: it is not "
            f"porttrap, and nothing was sent to it; stop it, remove {path}, check who could "
            f"write {path.parent}, and restart porttrap"
        )


def _read_line(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError as err:
            if err.errno == errno.ECONNRESET:
                break
            raise
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)
