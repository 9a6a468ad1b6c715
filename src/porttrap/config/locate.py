"""Find the line of a dotted key (`ban.time`, `traps.tcp[2]`, `traps.port[1].address`) in TOML.

tomllib returns values without positions, so error messages would have no line numbers. This
scanner walks text that tomllib has already accepted and records the line where each key,
table header and array item starts. It is best effort: anything it does not understand ends
the scan, and keys it never reached have no line.
"""

from __future__ import annotations

import bisect
import contextlib
import re
from collections.abc import Mapping

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}#\r\n]")
_LAST_PART = re.compile(r"(\.[^.\[\]]+|\[\d+\])$")


class _Stop(Exception):
    """The scanner met something it does not understand; keep what it found so far."""


def locate(text: str) -> dict[str, int]:
    """Map each dotted key path in `text` to the 1-based line where it first appears."""
    scanner = _Scanner(text)
    # Lines only decorate error messages: a scanner bug must not hide the real problem, nor
    # must arrays nested deeper than its recursion goes (tomllib read them, with fewer frames).
    with contextlib.suppress(_Stop, IndexError, RecursionError):
        scanner.run()
    return scanner.lines


def line_of(lines: Mapping[str, int], key: str) -> int | None:
    """The line of `key`, else of its nearest enclosing key or table; None when none is known."""
    while key:
        if key in lines:
            return lines[key]
        parent = _LAST_PART.sub("", key)
        if parent == key:
            return None
        key = parent
    return None


def _join(prefix: str, parts: list[str]) -> str:
    return ".".join([prefix, *parts]) if prefix else ".".join(parts)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[str, int] = {}
        self._starts = [0] + [m.end() for m in re.finditer(r"\n", text)]
        self._table = ""
        self._arrays: dict[str, int] = {}  # array-of-tables header -> how many seen so far

    def run(self) -> None:
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.text.startswith("[", self.pos):
                self._header()
            else:
                self._keyval(self._table)

    def _peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def _record(self, path: str) -> None:
        self.lines.setdefault(path, bisect.bisect_right(self._starts, self.pos))

    def _skip(self, *, newlines: bool) -> None:
        """Skip blanks and comments, and line ends too when `newlines`."""
        blanks = " \t\r\n" if newlines else " \t"
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in blanks:
                self.pos += 1
            elif char == "#" and newlines:
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            else:
                return

    def _expect(self, token: str) -> None:
        self._skip(newlines=False)
        if not self.text.startswith(token, self.pos):
            raise _Stop
        self.pos += len(token)

    def _header(self) -> None:
        array = self.text.startswith("[[", self.pos)
        self.pos += 2 if array else 1
        parts = self._key()
        self._expect("]]" if array else "]")
        self._table = self._resolve(parts, array=array)
        self._record(self._table)

    def _resolve(self, parts: list[str], *, array: bool) -> str:
        """`[[traps.port]]` -> `traps.port[n]`; `[a.b]` under `[[a]]` -> `a[n].b`."""
        raw = path = ""
        for number, part in enumerate(parts):
            raw, path = _join(raw, [part]), _join(path, [part])
            if array and number == len(parts) - 1:
                count = self._arrays.get(raw, 0)
                self._arrays = {
                    k: v for k, v in self._arrays.items() if not k.startswith(raw + ".")
                }
                self._arrays[raw] = count + 1
                path += f"[{count}]"
            elif raw in self._arrays:
                path += f"[{self._arrays[raw] - 1}]"
        return path

    def _key(self) -> list[str]:
        parts = [self._key_part()]
        self._skip(newlines=False)
        while self._peek() == ".":
            self.pos += 1
            parts.append(self._key_part())
            self._skip(newlines=False)
        return parts

    def _key_part(self) -> str:
        self._skip(newlines=False)
        char = self._peek()
        if char in ('"', "'"):
            start = self.pos
            self._string()
            return self.text[start + 1 : self.pos - 1]
        match = _BARE_KEY.match(self.text, self.pos)
        if not match:
            raise _Stop
        self.pos = match.end()
        return match.group()

    def _keyval(self, prefix: str) -> None:
        parts = self._key()
        self._expect("=")
        self._skip(newlines=False)
        self._value(_join(prefix, parts))

    def _value(self, path: str) -> None:
        self._record(path)
        char = self._peek()
        if char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        elif char in ('"', "'"):
            self._string()
        else:
            match = _SCALAR_END.search(self.text, self.pos)
            self.pos = match.start() if match else len(self.text)

    def _array(self, path: str) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip(newlines=True)
            char = self._peek()
            if char in ("]", ""):
                self.pos += 1
                return
            if char == ",":
                self.pos += 1
                continue
            self._value(f"{path}[{index}]")
            index += 1

    def _inline_table(self, path: str) -> None:
        self.pos += 1
        while True:
            self._skip(newlines=True)
            char = self._peek()
            if char in ("}", ""):
                self.pos += 1
                return
            if char == ",":
                self.pos += 1
                continue
            self._keyval(path)

    def _string(self) -> None:
        quote = self.text[self.pos]
        if self.text.startswith(quote * 3, self.pos):
            end = self.text.find(quote * 3, self.pos + 3)
            if end < 0:
                raise _Stop
            self.pos = end + 3
            while self._peek() == quote:  # up to two quotes may end the content
                self.pos += 1
            return
        self.pos += 1
        while self.pos < len(self.text) and self.text[self.pos] not in (quote, "\n"):
            self.pos += 2 if quote == '"' and self.text[self.pos] == "\\" else 1
        if self._peek() != quote:
            raise _Stop
        self.pos += 1
