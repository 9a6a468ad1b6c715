"""Keeping a daemon that holds 100,000 bans small and responsive.

Bans are long-lived objects without reference cycles. Python's cycle collector would walk all
of them again and again while a bulk request creates more (it is what makes a 100,000-address
ban twice as slow), and freed memory stays with the process unless it is handed back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cycle collector while many acyclic objects are made (rows, bans)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def bulk() -> Iterator[None]:
    """Pause the cycle collector for a bulk operation, then settle the heap."""
    try:
        with collector_paused():
            yield
    finally:
        settle()


def settle() -> None:
    """Collect, move what survives out of the collector's way, and give freed memory back."""
    gc.collect()
    gc.freeze()  # long-lived bans: never scanned again
    _malloc_trim()


def _malloc_trim() -> None:
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    trim = getattr(libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)
