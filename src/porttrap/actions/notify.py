"""Notifications to chat and mail (`[[actions.notify]]`) through Apprise: Slack, Matrix,
Telegram, e-mail and ~100 more, each configured by one URL (https://github.com/caronc/apprise).

Grouped and rate-limited, so that a scan of 10,000 ports is one message, not 10,000: the first
event after a quiet spell opens a burst and waits `group` seconds for the rest of it; then at
most one message goes every `every` seconds, holding every event since the one before (the
first MAX_LINES of them by line, the rest counted). Never in the way of a ban: events are
collected on the daemon's loop (an append), and Apprise sends on a thread of its own.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import apprise

from porttrap import log
from porttrap.actions.events import ActionEvent
from porttrap.config.schema import NotifyAction

MAX_LINES = 20  # events listed one per line in a message; the rest are counted
KEPT = 1000  # events held between two messages; beyond, only counted
SEND_TIMEOUT = 30.0  # seconds `close` waits for the last message

Send = Callable[[str, str], bool]  # (title, body) -> delivered to every URL


@contextmanager
def _plugins() -> Iterator[None]:
    """Around Apprise's calls that may load its plugins (on first use): some import modules
    deprecated in Python 3.11 (imghdr) or warn as they load, which is theirs to change, not
    porttrap's warning. Only on the daemon's thread: `catch_warnings` is process-wide."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


with _plugins():  # every plugin loaded now, so that a send (on a thread) imports nothing
    apprise.Apprise.instantiate("json://localhost/")


def url_problem(url: str) -> str | None:
    """Why Apprise cannot send to `url` (None: it can), naming only its scheme: the rest of
    an Apprise URL is often a password or a token."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    with _plugins():
        if apprise.Apprise.instantiate(url) is not None:
            return None
    if not scheme:
        return "an Apprise URL starts with its service, as in mailtos://, tgram://, slack://"
    return (
        f"{scheme}:// is not a service Apprise knows, or the rest of that URL is wrong (see "
        "https://github.com/caronc/apprise/wiki for its form)"
    )


@dataclass
class Burst:
    """The events of one message: the first KEPT, and how many of each kind in all."""

    events: list[ActionEvent] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, event: ActionEvent) -> None:
        self.counts[event.name.value] += 1
        if len(self.events) < KEPT:
            self.events.append(event)

    def __len__(self) -> int:
        return sum(self.counts.values())


def message(burst: Burst, title: str, host: str) -> tuple[str, str]:
    """(title, body) of a burst: a summary line, then one line per event (MAX_LINES)."""
    summary = ", ".join(f"{n} {name}" for name, n in sorted(burst.counts.items()))
    lines = [summary] + [_line(event) for event in burst.events[:MAX_LINES]]
    if len(burst) > MAX_LINES:
        lines.append(f"... and {len(burst) - MAX_LINES} more (porttrap history)")
    return title.replace("$HOST$", host) + f": {summary}", "\n".join(lines)


def _line(event: ActionEvent) -> str:
    at = log.iso(event.at)
    if event.name.value == "hit":
        return f"{at} hit from {event.address} on {event.proto}/{event.port}: {event.outcome}"
    if event.name.value == "unban":
        return f"{at} unban {event.address} ({event.reason})"
    until = "for good" if event.permanent else f"until {log.iso(event.expires_at)}"
    return (
        f"{at} {event.name.value} {event.address} {until} (ban #{event.ban_count}, {event.reason})"
    )


def apprise_sender(urls: tuple[str, ...]) -> Send:
    """Sends through Apprise to every URL (checked when the config was loaded)."""
    sender = apprise.Apprise()
    with _plugins():
        for url in urls:
            sender.add(url)

    def send(title: str, body: str) -> bool:
        return bool(sender.notify(title=title, body=body))

    return send


class Notices:
    """One `[[actions.notify]]`: collects events on the loop, sends a message per burst on a
    thread. `add` is called on the daemon's loop and never blocks."""

    def __init__(self, action: NotifyAction, host: str, send: Send | None = None) -> None:
        self.action = action
        self._host = host
        self._send = apprise_sender(action.urls) if send is None else send
        self._burst = Burst()
        self._timer: asyncio.TimerHandle | None = None
        self._last: float | None = None  # the loop's time of the last message
        self._threads: list[threading.Thread] = []
        self.sent = self.failed = 0

    def add(self, event: ActionEvent) -> None:
        if event.name not in self.action.on:
            return
        self._burst.add(event)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._delay(loop.time()), self._fire)

    def _delay(self, now: float) -> float:
        """`group` seconds for the burst to gather; longer when the last message was less
        than `every` seconds ago."""
        wait = self.action.group
        if self._last is not None:
            wait = max(wait, self._last + self.action.every - now)
        return wait

    def _fire(self) -> None:
        self._timer = None
        self._last = asyncio.get_running_loop().time()
        burst, self._burst = self._burst, Burst()
        thread = threading.Thread(
            target=self._deliver, args=(burst,), name="porttrap-notify", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _deliver(self, burst: Burst) -> None:
        title, body = message(burst, self.action.title, self._host)
        try:
            delivered = self._send(title, body)
        except Exception as err:  # a plugin's bug must not end the thread unlogged
            delivered, error = False, f"{type(err).__name__}: {err}"
        else:
            error = "Apprise could not deliver to every URL (its log lines say why)"
        if delivered:
            self.sent += 1
            log.event("notified", events=len(burst), urls=len(self.action.urls))
        else:
            self.failed += 1
            log.event("action-failed", logging.WARNING, action="notify", events=len(burst),
                      error=error)  # fmt: skip

    async def close(self, timeout: float = SEND_TIMEOUT) -> None:
        """Send what is pending now (the daemon stops), and wait for the messages under way."""
        if self._timer is not None:
            self._timer.cancel()
            self._fire()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, timeout)
