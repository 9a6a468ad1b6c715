"""Writing TOML by hand, with comments: tomllib only reads, and an imported config is meant to
be read by a person (each value says where it came from)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable

WIDTH = 100


def string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, except that TOML also escapes DEL."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def literal(text: str) -> str:
    """A TOML literal string ('...', no escapes) when the text allows it: regular expressions
    read as written. Otherwise a basic string."""
    if "'" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        return string(text)
    return f"'{text}'"


def array(items: Iterable[str], indent: str = "") -> str:
    """An inline array of already-rendered items, wrapped to WIDTH with one item per line
    when it does not fit on one."""
    rendered = list(items)
    one_line = "[" + ", ".join(rendered) + "]"
    if len(indent) + len(one_line) < WIDTH - 20:
        return one_line
    lines, line = [], ""
    for item in rendered:
        candidate = f"{line} {item}," if line else f"{item},"
        if line and len(indent) + 4 + len(candidate) > WIDTH:
            lines.append(line)
            candidate = f"{item},"
        line = candidate
    lines.append(line)
    body = "".join(f"{indent}    {text}\n" for text in lines)
    return "[\n" + body + indent + "]"


def strings(items: Iterable[str], indent: str = "") -> str:
    return array((string(item) for item in items), indent)


def quiet(text: str) -> str:
    """`text` fit for a comment: TOML allows no control character there but tab, so each
    other one is written as an escape (a file read for an import may hold any)."""
    return "".join(c if c == "\t" or 32 <= ord(c) != 127 else f"\\x{ord(c):02x}" for c in text)


def comment(text: str, indent: str = "") -> list[str]:
    """`text` as comment lines of at most WIDTH characters."""
    width = WIDTH - len(indent) - 2
    lines = textwrap.wrap(quiet(text), width, break_long_words=False, break_on_hyphens=False)
    return [f"{indent}# {line}" for line in lines] or [f"{indent}#"]
