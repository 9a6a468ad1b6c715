"""Where log lines go: stderr, a file (reopened on SIGHUP for logrotate), syslog.

Each output writes nothing for a record its formatter renders as "" (a compatible format with
no line for that event). Opening is checked at start: an output that cannot be opened raises
PorttrapError saying which output, what failed and how to fix it, before the daemon runs.
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import socket
from pathlib import Path
from typing import TextIO

from porttrap.errors import PorttrapError

SYSLOG_ADDRESS = "/dev/log"
FILE_MODE = 0o640  # a new log file: root writes, the adm group (logcheck, fail2ban) reads
IDENT = "porttrap"


class LineStream(logging.StreamHandler[TextIO]):
    """A stream output that skips records rendered as nothing."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if text:
                self.stream.write(text + self.terminator)
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class FileOutput(LineStream):
    """A log file opened for appending (created 0640); `reopen()` opens the path again, so
    that after logrotate renamed the file, lines go to a new file at the configured path."""

    def __init__(self, path: Path, index: int) -> None:
        self.path = path
        try:
            stream = open_append(path)
        except OSError as err:
            raise PorttrapError(_open_failure(path, index, err)) from err
        super().__init__(stream)

    def reopen(self) -> None:
        """Swap to a freshly opened file; raises OSError (and keeps writing to the old file)
        when the path cannot be opened."""
        old = self.setStream(open_append(self.path))
        if old is not None:
            old.close()

    def close(self) -> None:
        self.acquire()
        try:
            if not self.stream.closed:
                self.flush()
                self.stream.close()
        finally:
            self.release()
        super().close()


def open_append(path: Path) -> TextIO:
    """`path` for appending; created with FILE_MODE (less the umask) when it does not exist."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(path, flags, FILE_MODE)
    return open(fd, "a", encoding="utf-8", errors="backslashreplace")  # noqa: PTH123 - an fd


def _open_failure(path: Path, index: int, err: OSError) -> str:
    fixes = {
        errno.ENOENT: f"create the directory {path.parent} first (porttrap does not create it)",
        errno.EISDIR: "it is a directory: give the path of a file in it",
        errno.EACCES: "porttrap cannot write there: check the permissions of the file and of "
        "its directory",
        errno.EROFS: "the file system is read-only: choose a path on a writable one",
    }
    fix = fixes.get(err.errno or 0, "fix the path or choose another one")
    return f"cannot open log file {path} (log.output[{index}].to): {err.strerror or err}; {fix}"


class SyslogOutput(logging.Handler):
    """Syslog over a local datagram socket (/dev/log) with the ident porttrap[pid], as
    SysLogHandler sends it, but: a socket that cannot be reached is an error at start (3.11's
    SysLogHandler says nothing), and each line of a record is a message of its own, so that a
    record of several lines (PortSentry's alert, then its block) reads as syslog lines."""

    def __init__(self, address: str, facility: str, index: int) -> None:
        super().__init__()
        self.address = address
        self.facility = FACILITIES[facility]
        self.ident = f"{IDENT}[{os.getpid()}]: "
        try:
            self._socket = _connect(address)
        except OSError as err:
            raise PorttrapError(
                f"cannot log to syslog (log.output[{index}]): {address}: {err.strerror or err}; "
                "no syslog daemon listens there (start systemd-journald or rsyslog), or log to "
                "a file or stderr instead"
            ) from err

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            priority = self.facility << 3 | _severity(record.levelno)
            for line in text.splitlines():
                if line:
                    self._send(f"<{priority}>{self.ident}{line}".encode())
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _send(self, message: bytes) -> None:
        try:
            self._socket.send(message)
        except OSError:  # the syslog daemon restarted: connect again, once
            self._socket.close()
            self._socket = _connect(self.address)
            self._socket.send(message)

    def close(self) -> None:
        self.acquire()
        try:
            self._socket.close()
        finally:
            self.release()
        super().close()


FACILITIES = logging.handlers.SysLogHandler.facility_names
_SEVERITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))  # syslog(3) numbers


def _severity(level: int) -> int:
    """err, warning, info or debug: the syslog severity of a logging level."""
    if level >= logging.CRITICAL:
        return 2
    return next((severity for floor, severity in _SEVERITIES if level >= floor), 7)


def _connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock
