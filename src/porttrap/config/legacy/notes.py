"""What an import could not carry over exactly, each said where it came from."""

from __future__ import annotations

from dataclasses import dataclass

# What `permanent_after = 1` means next to forgeable evidence: every import that writes it says
# so, since the old tools banned on any packet for good.
UNVERIFIED_NOTE = (
    "bans on forgeable evidence (stealth probes, UDP datagrams) are never permanent and last at "
    "most [ban] unverified_max_time, so forged packets cannot make a permanent ban"
)


@dataclass(frozen=True, slots=True)
class Note:
    """One thing the reader of an import should know: `file:line: KEY: message`."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Conversion:
    """An import's result: the porttrap config as TOML text, and the notes about it."""

    toml: str
    notes: tuple[Note, ...]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file of the old tool, as read: `name` is how notes name it (its path)."""

    name: str
    text: str

    def lines(self) -> list[tuple[int, str]]:
        """(line number from 1, text without the line break)."""
        return list(enumerate(self.text.splitlines(), start=1))
