"""The event loop's exception handler. asyncio's own servers (the control socket, the metrics
endpoint) report an accept that ran out of descriptors or buffers there, with a traceback, at
every retry (each second, per server): with descriptors out for minutes that is a log flood.
Those become one WARNING a minute, saying how many were held back; anything else goes to
asyncio's default handler."""

from __future__ import annotations

import asyncio
import errno
import logging
from typing import Any

from porttrap.clock import Clock
from porttrap.log import event
from porttrap.sensors.sockets import WarnLimit

RESOURCE_MESSAGE = "out of system resource"  # asyncio: "socket.accept() out of system resource"


class AcceptErrors:
    """`loop.set_exception_handler(AcceptErrors(clock))`."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._limit = WarnLimit()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if RESOURCE_MESSAGE not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        level = self._limit.level(self._clock.monotonic())
        held = self._limit.take_held() if level == logging.WARNING else None
        exc = context.get("exception")
        number = exc.errno if isinstance(exc, OSError) else None
        event(
            "accept-backoff",
            level,
            errno=errno.errorcode.get(number, str(number)) if number is not None else None,
            held_back=held or None,
            effect="the control socket and the metrics endpoint take no connection for a "
            "second at a time",
            fix="raise the descriptor limit (LimitNOFILE), or trap fewer ports in connect mode",
        )
