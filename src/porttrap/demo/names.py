"""Names of the demo's namespaces and temporary directories, and which of them are stale.

Each name carries its owner: the PID of the `porttrap demo` that made it and that process's
start time (clock ticks since boot, field 22 of /proc/PID/stat), so that a PID since reused by
another process is not taken for the owner. A name whose owner is gone is stale: left by a demo
that was killed (SIGKILL, a crash, a power cut) before it could clean up. A name that does not
parse as a demo's is never stale: it is not ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PREFIX = "porttrap-demo-"
HOST, SCANNER = "host", "scanner"
PROC = Path("/proc")
_NETNS = re.compile(rf"{PREFIX}(\d+)-(\d+)-({HOST}|{SCANNER})")
_TEMP = re.compile(rf"{PREFIX}(\d+)-(\d+)-[A-Za-z0-9_]+")  # mkdtemp's suffix
_STARTTIME = 19  # field 22 of /proc/PID/stat, counted from field 3 (after "(comm) ")
_GONE_STATES = ("Z", "X")  # a zombie or a dead process can clean nothing up


@dataclass(frozen=True, slots=True)
class Owner:
    """A process, told apart from a later one with the same PID by its start time."""

    pid: int
    start: int

    @property
    def tag(self) -> str:
        """What every name this owner makes starts with: 'porttrap-demo-PID-START-'."""
        return f"{PREFIX}{self.pid}-{self.start}-"


def netns_name(owner: Owner, role: str) -> str:
    """The name of `owner`'s namespace `role` (HOST or SCANNER)."""
    return f"{owner.tag}{role}"


def netns_owner(name: str) -> Owner | None:
    """The owner a namespace name carries; None when it is not a demo namespace's name."""
    match = _NETNS.fullmatch(name)
    return Owner(int(match[1]), int(match[2])) if match else None


def temp_owner(name: str) -> Owner | None:
    """The owner a temporary directory's name carries; None when it is not a demo's."""
    match = _TEMP.fullmatch(name)
    return Owner(int(match[1]), int(match[2])) if match else None


def process(pid: int, proc: Path = PROC) -> Owner | None:
    """The live process `pid` as an Owner; None when there is none (or only its zombie)."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
    if fields[0] in _GONE_STATES:
        return None
    return Owner(pid, int(fields[_STARTTIME]))


def alive(owner: Owner, proc: Path = PROC) -> bool:
    """Whether `owner` is still running (its PID, with the same start time)."""
    return process(owner.pid, proc) == owner


def stale(
    names: Iterable[str],
    owner_of: Callable[[str], Owner | None],
    is_alive: Callable[[Owner], bool] = alive,
) -> list[str]:
    """The names among `names` that `owner_of` reads as a demo's and whose owner is gone."""
    found = []
    for name in names:
        owner = owner_of(name)
        if owner is not None and not is_alive(owner):
            found.append(name)
    return sorted(found)
