"""Executable Python scripts for tests (action hooks): run by this checkout's interpreter,
wherever the checkout lies. A `#!` line cannot name an interpreter whose path holds a space,
and the kernel reads only its first 255 bytes: the script is a /bin/sh wrapper that execs the
interpreter (stdin, arguments and exit status pass through), the code beside it."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def python_script(path: Path, code: str) -> Path:
    """Write `code` to PATH.py and an executable `path` that runs it; `path`."""
    source = path.with_name(f"{path.name}.py")
    source.write_text(code)
    path.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(source))} "$@"\n'
    )
    path.chmod(0o755)
    return path
