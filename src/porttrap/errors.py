"""The errors porttrap raises. Each says what failed, where, and how to fix it when known."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class PorttrapError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file."""

    path: Path | None
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = str(self.path) if self.path else "<config>"
        if self.line is not None:
            where += f":{self.line}"
        key = f" [{self.key}]" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(PorttrapError):
    """The configuration is invalid; `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RemoteConfigError(PorttrapError):
    """The daemon found its configuration invalid (`porttrap reload`): the problems, as text."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class UsageError(PorttrapError):
    """A bad argument on the command line or in a control request."""


class Refused(PorttrapError):
    """A request understood and declined: a protected target, a running daemon in the way,
    an unconfirmed `unban --all`. The CLI exits 5."""


class FirewallError(PorttrapError):
    """The kernel refused a firewall change; the message carries what was attempted."""


class StoreError(PorttrapError):
    """The database cannot be opened, migrated or read."""


class NoDatabase(StoreError):
    """A read-only open found no database: porttrap has not stored anything there yet. A
    command that can do without one (`porttrap status`) says so rather than failing."""


class DaemonNotRunning(PorttrapError):
    """A command needs the running daemon and none answers on the control socket."""


class FleetError(PorttrapError):
    """The fleet's PostgreSQL database cannot be reached, set up or used as asked."""
