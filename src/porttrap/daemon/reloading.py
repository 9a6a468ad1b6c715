"""A reload's I/O, step by step: the shell reads the file, opens what the new configuration
needs (the metrics listener, log outputs, the hold's queue), and puts the old ones back if
anything is refused; the core decides everything else (`porttrap.core.core`, `_reload_*`).

    file read ──▶ ReloadRequested | ReloadInvalid
                    ◀── PrepareReload          (or Refuse, or Reloaded: nothing changed)
    metrics, logs, queue ─▶ ReloadPrepared | ReloadFailed
                    ◀── Setup(reload)          (when the table's rules change)
    kernel ─────────▶ ReloadCommitted | ReloadFailed
                    ◀── ReplaceActions, UpdateTraps, Reloaded   (or Refuse)
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from porttrap import log
from porttrap.actions.dispatch import Dispatcher
from porttrap.config import loader
from porttrap.config.fleet import named
from porttrap.config.schema import Config
from porttrap.core import commands as c
from porttrap.core import events as e
from porttrap.core import views
from porttrap.errors import ConfigError, PorttrapError

if TYPE_CHECKING:
    from porttrap.daemon.shell import Shell

Undo = Callable[[], Awaitable[None]]


async def reload(shell: Shell) -> dict[str, Any]:
    """Read the configuration again and apply it. Returns the control socket's answer; raises
    PorttrapError (RemoteConfigError for an invalid file) with the running one left as it was."""
    started = shell.clock.monotonic()
    try:
        event: e.Event = e.ReloadRequested(named(loader.load(shell.config_path)))
    except ConfigError as err:
        event = e.ReloadInvalid(tuple(str(p) for p in err.problems))
    left = await _steps(shell, shell.feed(event))
    done = next((x for x in left if isinstance(x, c.Reloaded)), None)
    if done is None:
        await shell.answer(left)  # raises the refusal
        raise PorttrapError("the reload ended without an answer (a bug: please report)")
    seconds = round(shell.clock.monotonic() - started, 3)
    changed = list(done.changed)
    log.event("reloaded", changed=",".join(changed) or "nothing", seconds=seconds)
    return {"changed": changed, "seconds": seconds, "traps": views.traps_json(shell.report)}


async def _steps(shell: Shell, left: list[c.Command]) -> list[c.Command]:
    """Carry out the reload's asynchronous steps, in order, with what they lead to."""
    pending = deque(left)
    rest: list[c.Command] = []
    while pending:
        command = pending.popleft()
        if isinstance(command, c.PrepareReload):
            pending.extend(await _prepare(shell, command))
        elif isinstance(command, c.ReplaceActions):
            pending.extend(await _replace_actions(shell, command.config))
        else:
            rest.append(command)
    return rest


async def _prepare(shell: Shell, command: c.PrepareReload) -> list[c.Command]:
    """Open what can fail to open first (the metrics listener, log outputs); then the core goes
    on (the kernel, then the rest). On any refusal, the old ones come back."""
    old, new = shell.config, command.config
    undo: list[Undo] = []
    try:
        if "metrics" in command.changed:
            await shell.metrics.restart(new.metrics.listen)  # back on the old one, or raises
            undo.append(lambda: _metrics_back(shell, old))
        if "log" in command.changed:
            log.configure(new, shell.verbose)  # opens every output first, or raises
            undo.append(lambda: _log_back(shell, old))
        if shell.hold is not None and shell.hold.reader is None:  # the hold turned on
            shell.open_hold(new)  # binds its queue, or raises
            undo.append(lambda: _hold_back(shell))
    except PorttrapError as err:
        await _undo(undo)
        return shell.feed(e.ReloadFailed(str(err)))
    left = shell.feed(e.ReloadPrepared())  # the kernel may refuse the new table
    if any(isinstance(each, c.Refuse) for each in left):
        await _undo(undo)
    return left


async def _undo(steps: list[Undo]) -> None:
    for step in reversed(steps):
        await step()


async def _metrics_back(shell: Shell, old: Config) -> None:
    with contextlib.suppress(PorttrapError):
        await shell.metrics.restart(old.metrics.listen)


async def _log_back(shell: Shell, old: Config) -> None:
    log.configure(old, shell.verbose)


async def _hold_back(shell: Shell) -> None:
    if shell.hold is not None:
        shell.hold.close()  # nothing is held yet: the old table has no hold rules


async def _replace_actions(shell: Shell, new: Config) -> list[c.Command]:
    """A new dispatcher; the old one first finishes its running actions (up to its grace
    time) and writes hosts.deny, so that both never write it at once. The core then starts
    it with the bans active by then."""
    await shell.actions.close()
    shell.effects.actions = Dispatcher(new.actions, new.modes, new.state_dir)
    return shell.feed(e.ActionsReplaced())
