"""Waiting in tests without timing luck. The machine that runs them is shared and noisy (two
CPUs, CPU steal, other suites at once): a test waits on a condition with a generous deadline,
and never sleeps in the hope that something has happened by then.

- `wait_until`: poll a condition until it holds; the deadline is patience, not a claim (the
  wait ends as soon as the condition holds), and the condition is checked once more after it.
- `eventually`: the same on a running asyncio loop.
- `holds_for`: a condition that must stay true for a while ("nothing happens"): a slow machine
  can only make such a check pass where a fast one would fail, never the other way round.
- `bounded`: a run that a test cuts short at a time limit (a scan stopped once its outcome is
  settled, or at the limit): not a wait for something the test needs.
- `pause`: a minimum time that must pass for the kernel (conntrack assures a UDP flow only
  after 2 s) or a pace (a flood's rate). Never a wait for something to happen.
- `Calls`: steps counted instead of time measured ("the first read after the change saw
  it", not "within 1.5 s").

tests/unit/test_test_timing.py holds the rule: these are the only places that sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

PATIENCE = 30.0  # seconds: every wait for something that will happen, CPU-starved CI included
_POLL = 0.1


def _now() -> float:
    return time.monotonic()  # noqa: TID251 - test timing


def wait_until(check: Callable[[], bool], timeout: float = PATIENCE, what: str = "") -> None:
    """Poll `check` every 0.1 s until it holds; AssertionError when it still does not after
    `timeout` seconds (checked one last time then: a check that itself took the whole
    deadline on a starved machine still gets its answer)."""
    deadline = _now() + timeout
    while not check():
        if _now() >= deadline:
            if check():
                return
            raise AssertionError(f"timed out after {timeout}s waiting for: {what or check}")
        time.sleep(_POLL)


async def eventually(
    check: Callable[[], bool], timeout: float = PATIENCE, what: str = "", poll: float = 0.01
) -> None:
    """`wait_until` inside a running event loop: the loop runs while this waits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() >= deadline:
            if check():
                return
            raise AssertionError(f"timed out after {timeout}s waiting for: {what or check}")
        await asyncio.sleep(poll)


def holds_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    """`check` holds now and at every poll for at least `seconds` (and once more after)."""
    end = _now() + seconds
    while True:
        assert check(), f"no longer true: {what}"
        if _now() >= end:
            break
        time.sleep(min(_POLL, max(end - _now(), 0.0)))
    assert check(), f"no longer true: {what}"


def bounded(done: Callable[[], bool], seconds: float) -> bool:
    """Poll `done` until it holds or `seconds` have passed; whether it held. For a run that
    may be cut short at a limit (a scan), never for a condition a test asserts on."""
    end = _now() + seconds
    while not done():
        if _now() >= end:
            return done()
        time.sleep(_POLL)
    return True


def pause(seconds: float, why: str) -> None:
    """Let at least `seconds` pass, for `why` (a minimum the kernel needs, or a pace)."""
    assert why, "say why a test must let time pass"
    time.sleep(seconds)


class Calls:
    """Counts the calls to one method of one object (through pytest's monkeypatch), so that a
    test can say "the first read after the change saw it" where a time bound would say "within
    an interval", which a starved machine breaks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> None:
        self.count = 0
        method = getattr(target, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return method(*args, **kwargs)

        monkeypatch.setattr(target, name, counted)

    def since(self) -> Callable[[], int]:
        """A function that gives the calls made from now on."""
        start = self.count
        return lambda: self.count - start
