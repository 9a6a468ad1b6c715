"""Every table and key porttrap.toml accepts, read from the loader itself.

The loader knows its keys only where it checks them (`Section.check_keys`, in each section's
module). Rather than a second list that could drift, this asks the loader: a probe config with
one unknown key in a table is refused with "expected one of: ..." naming every key of that
table; each key found is probed in turn as a table (`[a.b]`) and as an array of tables
(`[[a.b]]`), so nested tables are found too. The man page porttrap.toml(5) is made from this.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from porttrap.config import loader
from porttrap.errors import ConfigError

PROBE = "zzporttrapprobezz"  # close to no real key: the message lists them all
_EXPECTED = "expected one of: "
_MAX_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the file: its dotted name ("" for the top level), whether it is an array
    of tables ([[name]]), and its keys in the order the loader lists them."""

    path: tuple[str, ...]
    array: bool
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def header(self) -> str:
        """As it is written in the file: [name] or [[name]]; "" for the top level."""
        if not self.path:
            return ""
        return f"[[{self.name}]]" if self.array else f"[{self.name}]"


def tables() -> list[Table]:
    """Every table, the top level first, then depth first in the loader's key order."""
    found: list[Table] = []
    top = _keys((), ())
    if top is None:  # pragma: no cover - the top level always checks its keys
        raise RuntimeError("the config loader no longer reports unknown top-level keys")
    found.append(Table((), False, top))
    found.extend(_children((), (), top))
    return found


def _children(
    path: tuple[str, ...], arrays: tuple[bool, ...], keys: tuple[str, ...]
) -> Iterator[Table]:
    if len(path) >= _MAX_DEPTH:
        return
    for key in keys:
        for array in (False, True):
            sub = _keys((*path, key), (*arrays, array))
            if sub is not None:
                yield Table((*path, key), array, sub)
                yield from _children((*path, key), (*arrays, array), sub)
                break


def _keys(path: tuple[str, ...], arrays: tuple[bool, ...]) -> tuple[str, ...] | None:
    """The keys of the table at `path` (each part an array of tables where `arrays` says so),
    or None when the loader does not take a table there."""
    lines = [f"{PROBE} = 1"] if not path else []
    for depth in range(1, len(path) + 1):
        name = ".".join(path[:depth])
        last = depth == len(path)
        if arrays[depth - 1]:
            lines.append(f"[[{name}]]")
        elif last:
            lines.append(f"[{name}]")
    if path:
        lines.append(f"{PROBE} = 1")
    expected_key = ".".join(
        part + ("[0]" if array else "") for part, array in zip(path, arrays, strict=True)
    )
    expected_key = f"{expected_key}.{PROBE}" if path else PROBE
    try:
        loader.load_text("\n".join(lines) + "\n", Path("probe.toml"))
    except ConfigError as err:
        for problem in err.problems:
            if problem.key == expected_key and _EXPECTED in problem.message:
                listed = problem.message.split(_EXPECTED, 1)[1]
                return tuple(key.strip() for key in listed.split(","))
    return None


def dotted_keys() -> list[str]:
    """Every key as a dotted name (arrays of tables without an index): traps.port.proto."""
    return [f"{t.name}.{k}" if t.path else k for t in tables() for k in t.keys]
