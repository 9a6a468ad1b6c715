"""The loop's exception handler: asyncio's accept-out-of-resources reports are rate limited
(one WARNING a minute), everything else goes to asyncio's default handler."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest

from porttrap.daemon.loop_errors import AcceptErrors
from porttrap.sensors.sockets import WARN_EVERY
from porttrap.testing import FakeClock

OUT = "socket.accept() out of system resource"


class Loop:
    def __init__(self) -> None:
        self.default: list[dict[str, Any]] = []

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.default.append(context)


def test_accept_out_of_descriptors_is_one_warning_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="porttrap")
    clock, loop = FakeClock(), Loop()
    handler = AcceptErrors(clock)
    context = {"message": OUT, "exception": OSError(errno.EMFILE, "Too many open files")}
    for _ in range(100):
        handler(loop, context)  # type: ignore[arg-type]
    clock.advance(WARN_EVERY)
    handler(loop, context)  # type: ignore[arg-type]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert warnings[0].startswith("event=accept-backoff errno=EMFILE")
    assert "held_back=99" in warnings[1]
    assert loop.default == []


def test_anything_else_goes_to_asyncio_s_handler() -> None:
    loop = Loop()
    AcceptErrors(FakeClock())(loop, {"message": "Task exception was never retrieved"})  # type: ignore[arg-type]
    assert loop.default == [{"message": "Task exception was never retrieved"}]
