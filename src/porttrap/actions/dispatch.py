"""From the daemon's events to actions: which commands, webhooks, notifications and hosts.deny
lines each event calls for, and when.

The daemon's shell calls, all on its event loop and none of them blocking, as the core's
commands say (`porttrap.core.commands`):
- `hit` for every hit the policy saw (ActionsHit, only when some action listens to "hit");
- `before_kernel` / `after_kernel` around each kernel batch (ActionsBefore, ActionsAfter):
  commands with `first = true` are started (spawned, not awaited) before the batch goes to the
  kernel, every other action after it;
- `expired` for bans that ran out (ActionsExpired, within half a second of their end);
- `start` once the active bans are restored (ActionsStart), `close` when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from porttrap import log
from porttrap.actions import events
from porttrap.actions.events import ActionEvent
from porttrap.actions.hostsdeny import HostsDeny
from porttrap.actions.jobs import CommandJob, WebhookJob
from porttrap.actions.runner import Runner
from porttrap.config.schema import BAN_EVENTS, Actions, CommandAction, Event, Modes, NotifyAction
from porttrap.model import Ban, Change, Hit, IPNetwork, Outcome, Unban, show

if TYPE_CHECKING:
    from porttrap.actions.notify import Notices

GRACE = 5.0  # seconds running actions get to end when the daemon stops
STATE_FILE = "hosts-deny.json"


class Dispatcher:
    """Turns hits, bans and unbans into the configured actions."""

    def __init__(
        self,
        config: Actions,
        modes: Modes,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.modes = modes
        self.runner = Runner(config.max_running, config.queue)
        self.hosts_deny = _hosts_deny(config, state_dir / STATE_FILE)
        self.enabled = bool(config.commands or config.webhooks or config.notify or self.hosts_deny)
        listeners = [c.on for c in config.commands] + [w.on for w in config.webhooks]
        listeners += [n.on for n in config.notify]
        self._hit_actions = sum(1 for on in listeners if Event.HIT in on)
        self.wants_hits = self._hit_actions > 0
        # The lifted ban of an unban (its port and mode) is only needed for actions on unban.
        self._track = any(Event.UNBAN in on for on in listeners)
        self._bans: dict[IPNetwork, Ban] = {}
        self._first = tuple(c for c in config.commands if c.first)
        self._after = tuple(c for c in config.commands if not c.first)
        self._env = dict(os.environ if env is None else env)
        self._host = socket.gethostname() if host is None else host
        self._stopping = threading.Event()
        self._notices = [self._notices_of(n) for n in config.notify]

    def _notices_of(self, action: NotifyAction) -> Notices:
        from porttrap.actions.notify import Notices  # apprise: imported only when used

        return Notices(action, self._host)

    def start(self, active: Sequence[Ban]) -> None:
        """The bans active at start: remembered for their unbans, and hosts.deny made to hold
        exactly their lines (lines of bans that ended while porttrap was down go)."""
        with _contained("start"):
            self._start(active)

    def _start(self, active: Sequence[Ban]) -> None:
        if self._track:
            self._bans = {ban.target: ban for ban in active}
        if self.hosts_deny is not None:
            lines = {
                show(b.target): self._deny_line(events.from_ban(b, self.modes)) for b in active
            }
            self.hosts_deny.sync({target: line for target, line in lines.items() if line})

    def hit(self, hit: Hit, outcome: Outcome, ban: Ban | None) -> None:
        if self.wants_hits:
            with _contained("hit"):
                self._hit(hit, outcome, ban)

    def _hit(self, hit: Hit, outcome: Outcome, ban: Ban | None) -> None:
        if self.runner.full(hit=True):  # a flood: drop at once, without building anything
            self.runner.drop(self._hit_actions)
            return
        event = events.from_hit(hit, outcome, ban, self.modes)
        self._commands(event, self.config.commands)
        self._webhooks(event)
        self._notify(event)

    def before_kernel(self, batch: Sequence[Change]) -> None:
        """Start the `first` commands of `batch`: they run while the kernel is updated."""
        with _contained("before-kernel"):
            for change in batch if self._first else ():
                self._commands(self._event(change, remember=False), self._first)

    def after_kernel(self, batch: Sequence[Change]) -> None:
        """Every other action of `batch`, now that the kernel has it."""
        if self.enabled:
            with _contained("after-kernel"):
                self._after_kernel(batch)

    def _after_kernel(self, batch: Sequence[Change]) -> None:
        deny: list[tuple[str, str | None]] = []
        for change in batch:
            event = self._event(change, remember=True)
            self._commands(event, self._after)
            self._webhooks(event)
            self._notify(event)
            deny.append((event.address, self._deny_line(event)))
        if self.hosts_deny is not None and self.hosts_deny.file is not None:
            self.hosts_deny.update(deny)

    def expired(self, bans: Iterable[Ban]) -> None:
        """Bans that ran out: an unban event (reason "expired") each."""
        if self.enabled:
            with _contained("expired"):
                self._expired(bans)

    def _expired(self, bans: Iterable[Ban]) -> None:
        deny: list[tuple[str, str | None]] = []
        for ban in bans:
            if self._bans.get(ban.target) == ban:
                del self._bans[ban.target]
            event = events.from_expiry(ban, self.modes)
            self._commands(event, self.config.commands)
            self._webhooks(event)
            self._notify(event)
            deny.append((event.address, None))
        if deny and self.hosts_deny is not None and self.hosts_deny.file is not None:
            self.hosts_deny.update(deny)

    def status(self) -> dict[str, Any]:
        status = self.runner.status()
        deny = self.hosts_deny
        status["hosts_deny"] = (
            None
            if deny is None or deny.file is None
            else {"file": str(deny.file), "lines": deny.lines, "failed": deny.failed}
        )
        return status

    async def close(self, grace: float = GRACE) -> tuple[int, int]:
        """Stop: no more webhook retries, waiting actions dropped, running ones given `grace`
        seconds, then killed; hosts.deny brought up to date. Returns (dropped, killed)."""
        self._stopping.set()
        for notices in self._notices:  # the burst under way goes out now
            await notices.close()
        dropped, killed = await self.runner.close(grace)
        if self.hosts_deny is not None:
            await asyncio.to_thread(self.hosts_deny.close)
        return dropped, killed

    def _event(self, change: Change, *, remember: bool) -> ActionEvent:
        if isinstance(change, Unban):
            bans = self._bans
            lifted = bans.pop(change.target, None) if remember else bans.get(change.target)
            return events.from_unban(change, lifted, self.modes)
        if remember and self._track:
            self._bans[change.target] = change
        return events.from_ban(change, self.modes)

    def _commands(self, event: ActionEvent, commands: Iterable[CommandAction]) -> None:
        for command in commands:
            if event.name in command.on and self._room(event):
                self.runner.submit(CommandJob(command, event, self._env))

    def _webhooks(self, event: ActionEvent) -> None:
        for webhook in self.config.webhooks:
            if event.name in webhook.on and self._room(event):
                self.runner.submit(WebhookJob(webhook, event, self._host, self._stopping))

    def _notify(self, event: ActionEvent) -> None:
        for notices in self._notices:
            notices.add(event)

    def _room(self, event: ActionEvent) -> bool:
        """Whether the runner would take an action of `event`; if not, it is counted as
        dropped without being built (a bulk ban of 100,000 addresses, a flood of hits)."""
        if self.runner.full(hit=event.name is Event.HIT):
            self.runner.drop(1)
            return False
        return True

    def _deny_line(self, event: ActionEvent) -> str | None:
        """The hosts.deny line of a ban event; None for an unban (its line goes)."""
        deny = self.config.hosts_deny
        if deny is None or event.name not in BAN_EVENTS:
            return None
        return events.expand(deny.line, events.placeholders(event))


@contextlib.contextmanager
def _contained(during: str) -> Iterator[None]:
    """A bug in an action must not reach the daemon: before_kernel runs ahead of a ban."""
    try:
        yield
    except Exception:
        log.LOGGER.exception(log.fields("action-failed", error="unexpected", during=during))


def _hosts_deny(config: Actions, state: Path) -> HostsDeny | None:
    """The hosts.deny writer; also without [actions.hosts_deny] when a state file says that
    porttrap left lines in a file (they are taken out at start)."""
    deny = config.hosts_deny
    if deny is not None:
        return HostsDeny(deny.file, deny.keep, state)
    if state.exists():
        return HostsDeny(None, False, state)
    return None
