"""The two kinds of job the runner runs: a command for one event, a webhook delivery of one
event. Each logs how it ended (`event=action-failed` with the argv or the URL when it failed)
and tells the runner, which counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
import threading
from collections.abc import Mapping

from porttrap import log
from porttrap.actions import events
from porttrap.actions.events import ActionEvent
from porttrap.actions.process import Ending, Exit, Process
from porttrap.actions.webhook import BACKOFF, Delivery, Post, deliver, post, request, safe_url
from porttrap.config.schema import CommandAction, Event, WebhookAction


def _done(loop: asyncio.AbstractEventLoop, ending: Ending) -> asyncio.Future[Ending]:
    future: asyncio.Future[Ending] = loop.create_future()
    future.set_result(ending)
    return future


class CommandJob:
    """Runs one command for one event: argv expanded, PORTTRAP_* in its environment."""

    def __init__(
        self, action: CommandAction, event: ActionEvent, base_env: Mapping[str, str]
    ) -> None:
        self.hit = event.name is Event.HIT
        self.argv = events.argv(action, event)
        self.env = {**base_env, **events.environment(event)}
        self.timeout = action.timeout
        self._event = event
        self._process: Process | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Ending]:
        try:
            process = Process.start(loop, self.argv, self.env, self.timeout)
        except OSError as err:
            self._failed(logging.WARNING, error=f"cannot start: {err.strerror or err}")
            return _done(loop, Ending.FAILED)
        self._process = process
        ended: asyncio.Future[Ending] = loop.create_future()

        def report(done: asyncio.Future[Exit]) -> None:
            if not ended.done():
                ended.set_result(self._report(done.result()))

        process.ended.add_done_callback(report)
        return ended

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def _report(self, result: Exit) -> Ending:
        output = _text(result.output, result.truncated)
        if result.timed_out:
            self._failed(
                logging.WARNING,
                error=f"timed out after {self.timeout:g}s",
                signal=_signal_name(result.code),
                output=output or None,
            )
            return Ending.TIMED_OUT
        if result.code != 0:
            self._failed(
                logging.WARNING,
                exit=result.code if result.code > 0 else None,
                signal=_signal_name(result.code),
                output=output or None,
            )
            return Ending.FAILED
        log.event("action-done", logging.DEBUG, **self._fields(), output=output or None)
        return Ending.OK

    def _failed(self, level: int, **details: object) -> None:
        log.event("action-failed", level, **self._fields(), **details)

    def _fields(self) -> dict[str, object]:
        return {
            "action": "command",
            "on": self._event.name.value,
            "address": self._event.address,
            "argv": shlex.join(self.argv),
        }


def _text(output: bytes, truncated: bool) -> str:
    text = output.decode("utf-8", "replace").strip()
    return f"{text} [...]" if truncated else text


def _signal_name(code: int) -> str | None:
    if code >= 0:
        return None
    with contextlib.suppress(ValueError):
        return signal.Signals(-code).name
    return str(-code)


class WebhookJob:
    """Delivers one event to one webhook, on a thread of its own (urllib blocks)."""

    def __init__(
        self,
        action: WebhookAction,
        event: ActionEvent,
        host: str,
        stopping: threading.Event,
        *,
        send: Post = post,
        backoff: float = BACKOFF,
    ) -> None:
        self.hit = event.name is Event.HIT
        self.request = request(action.url, events.body(event, host), action.headers)
        self._action = action
        self._event = event
        self._stopping = stopping
        self._send = send
        self._backoff = backoff

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Ending]:
        ended: asyncio.Future[Ending] = loop.create_future()

        def work() -> None:
            delivery = deliver(
                self.request,
                self._action.timeout,
                self._action.retries,
                self._stopping,
                send=self._send,
                backoff=self._backoff,
            )
            with contextlib.suppress(RuntimeError):  # the loop is gone: the daemon stopped
                loop.call_soon_threadsafe(self._report, ended, delivery)

        try:
            threading.Thread(target=work, name="porttrap-webhook", daemon=True).start()
        except RuntimeError as err:  # no thread could be started
            self._log(Delivery(Ending.FAILED, 0, str(err)))
            return _done(loop, Ending.FAILED)
        return ended

    def kill(self) -> None:
        """No further attempt; a request under way ends with its timeout, unwaited for."""
        self._stopping.set()

    def _report(self, ended: asyncio.Future[Ending], delivery: Delivery) -> None:
        self._log(delivery)
        if not ended.done():
            ended.set_result(delivery.ending)

    def _log(self, delivery: Delivery) -> None:
        ok = delivery.ending is Ending.OK
        log.event(
            "action-done" if ok else "action-failed",
            logging.DEBUG if ok else logging.WARNING,
            action="webhook",
            on=self._event.name.value,
            address=self._event.address,
            url=safe_url(self._action.url),
            status=delivery.status,
            attempts=delivery.attempts,
            error=delivery.error or None,
        )
