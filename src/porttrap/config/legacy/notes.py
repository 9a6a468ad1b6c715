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
    first: int = 0  # a summary's first line: where it sorts among the file's notes

    def order(self) -> int:
        """Where the note sorts among its file's notes."""
        return self.line if self.line is not None else self.first

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


MAX_RANGES = 10  # the line numbers a summary lists; beyond that, a count


def summary(
    file: str, key: str, numbers: list[int], what: str, *, unit: str = "line", at: int | None = None
) -> Note:
    """One note for the lines (or other units: "item", "row") of `file` that did not parse,
    for one reason: their numbers and count, never their text (an import may be pointed at a
    file of secrets). `at`: the line of the note, for units other than lines."""
    numbers = sorted(set(numbers))
    if unit == "line" and len(numbers) == 1:
        return Note(file, numbers[0], key, what)
    first = numbers[0] if unit == "line" else 0
    if len(numbers) == 1:
        return Note(file, at, key, f"{unit} {numbers[0]}: {what}")
    return Note(file, at, key, f"{unit}s {spans(numbers)} ({len(numbers)}): {what}", first)


def spans(numbers: list[int]) -> str:
    """ "1-25, 30, 32-33", the first MAX_RANGES ranges, then how many numbers are left."""
    ranges: list[list[int]] = []
    for number in sorted(set(numbers)):
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])
    shown = [f"{a}-{b}" if a != b else f"{a}" for a, b in ranges[:MAX_RANGES]]
    left = sum(b - a + 1 for a, b in ranges[MAX_RANGES:])
    return ", ".join(shown) + (f" and {left} more" if left else "")
