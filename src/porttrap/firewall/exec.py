"""The one place that runs firewall programs (ipset, iptables, ip6tables and their -restore).

Argv lists only, never a shell: every argument porttrap passes is built from validated
addresses and names, and nothing is ever parsed by /bin/sh. Scripts (`ipset restore`,
`iptables-restore`) go on stdin. A failure raises `CommandFailed`, which carries the argv, the
exit status and the program's own error text, so the log says what was attempted and what the
program answered.

`Exec(netns=NAME)` runs every command inside network namespace NAME (through `ip netns exec`),
which is how the tests drive real ipset and iptables without touching the host; the daemon uses
`Exec()`, in its own namespace.
"""

from __future__ import annotations

import logging
import subprocess  # noqa: TID251 - this is the one place that runs programs
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from porttrap import log
from porttrap.errors import FirewallError

DEFAULT_TIMEOUT = 60.0  # seconds: `ipset restore` of 100,000 bans takes well under one
_ERROR_CHARS = 600  # a program's error text is short; keep a runaway one from flooding the log
PACKAGES = {  # the Debian package that ships each program porttrap runs
    "ipset": "ipset",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "iptables-restore": "iptables",
    "ip6tables-restore": "iptables",
    "ip": "iproute2",
    "nft": "nftables",  # `porttrap demo` reads its namespace's sets with it
}


class CommandFailed(FirewallError):
    """A firewall program exited non-zero. `stderr` is its error text, `argv` what ran."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"`{' '.join(argv)}` failed (exit {returncode}): {clean(stderr)}")


class Runner(Protocol):
    """Runs one firewall program; the seam the ipset backend's unit tests fake."""

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run `argv` with `stdin` as its input; its standard output, or `CommandFailed`."""
        ...


@dataclass(frozen=True, slots=True)
class Exec:
    """Runs programs directly (no shell), optionally inside network namespace `netns`."""

    netns: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def argv(self, argv: Sequence[str]) -> list[str]:
        """What actually runs: `argv`, behind `ip netns exec NAME` when in a namespace."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
        return [*prefix, *argv]

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        full = self.argv(argv)
        lines = None if stdin is None else stdin.count("\n")
        log.event("exec", logging.DEBUG, argv=" ".join(full), stdin_lines=lines)
        try:
            done = subprocess.run(
                full,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as err:
            raise FirewallError(_missing(full[0])) from err
        except PermissionError as err:
            reason = f"cannot run {full[0]}: {err.strerror} (run porttrap as root)"
            raise FirewallError(reason) from err
        except subprocess.TimeoutExpired as err:
            raise FirewallError(
                f"`{' '.join(full)}` did not finish within {self.timeout:g}s and was killed"
            ) from err
        if done.returncode != 0:
            raise CommandFailed(full, done.returncode, done.stderr)
        return done.stdout


def _missing(program: str) -> str:
    package = PACKAGES.get(program.rsplit("/", 1)[-1])
    fix = f": apt-get install {package}" if package else ""
    return f"{program} is not installed or not on PATH{fix}"


def clean(stderr: str) -> str:
    """A program's error text as one line, shortened when it runs away."""
    text = "; ".join(line.strip() for line in stderr.splitlines() if line.strip())
    text = text or "no error text"
    return text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS] + "..."
