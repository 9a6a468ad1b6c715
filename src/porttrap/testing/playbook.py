"""Playbooks for the daemon's core, after mitmproxy's (test/mitmproxy/proxy/tutils.py): a
scenario is the events fed in and the exact commands expected back, in order.

    assert (
        Playbook(core)
        >> HitSeen(hit)
        << FlushSoon()
        >> TurnEnded()
        << Apply([ban], T0)
        << RecordChanges([ban])
        << LogChanges([ban])
        << ActionsAfter([ban])
    )

`later(seconds)` moves the playbook's clock; events are handled at its time. `Log` commands are
left out of the comparison unless `logs=True`, and so is any type in `ignore`. Sequences compare
by their items (a list equals a tuple). A failing playbook raises AssertionError showing what
was expected and what came, step by step. A playbook can be extended and checked again: only
the new steps run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from porttrap.core.commands import Command, Log
from porttrap.core.events import Event

T0 = 1_800_000_000.0


class Handles(Protocol):
    def handle(self, event: Event, now: float) -> list[Command]: ...


@dataclasses.dataclass(frozen=True)
class _Later:
    seconds: float


def later(seconds: float) -> _Later:
    """A playbook step that moves its clock forward."""
    return _Later(seconds)


class Playbook:
    def __init__(
        self,
        core: Handles,
        now: float = T0,
        *,
        logs: bool = False,
        ignore: Iterable[type] = (),
    ) -> None:
        self.core = core
        self.now = now
        self.ignored = tuple(ignore) + (() if logs else (Log,))
        self.produced: list[Command] = []  # every command the core returned, ignored ones too
        self._steps: list[tuple[str, Any]] = []
        self._done = 0
        self._unread: list[Command] = []
        self._transcript: list[str] = []

    def __rshift__(self, event: Event | _Later) -> Playbook:
        self._steps.append(("later" if isinstance(event, _Later) else "in", event))
        return self

    def __lshift__(self, command: Command | Sequence[Command]) -> Playbook:
        """Expect `command` next, or each of a sequence of commands in turn."""
        for each in command if isinstance(command, Sequence) else [command]:
            self._steps.append(("out", each))
        return self

    def __bool__(self) -> bool:
        for kind, value in self._steps[self._done :]:
            self._done += 1
            if kind == "out":
                self._expect(value)
            else:
                self._nothing_left()
                if kind == "later":
                    self.now += value.seconds
                    self._transcript.append(f"   (later: +{value.seconds} s)")
                else:
                    self._feed(value)
        self._nothing_left()
        return True

    def _feed(self, event: Event) -> None:
        self._transcript.append(f">> {_short(event)}")
        commands = self.core.handle(event, self.now)
        self.produced += commands
        self._unread = [c for c in commands if not isinstance(c, self.ignored)]

    def _expect(self, expected: Command) -> None:
        if not self._unread:
            self._fail(f"expected {expected!r}, but no more commands came")
        got = self._unread.pop(0)
        if normal(got) != normal(expected):
            self._fail(f"expected {_short(expected)}\n   but got {_short(got)}")
        self._transcript.append(f"<< {_short(got)}")

    def _nothing_left(self) -> None:
        if self._unread:
            extra = "\n".join(f"   {_short(c)}" for c in self._unread)
            self._fail(f"commands came that the playbook does not expect:\n{extra}")

    def _fail(self, what: str) -> None:
        steps = "\n".join(self._transcript[-12:])
        raise AssertionError(f"playbook failed: {what}\nlast steps:\n{steps}")


def _short(value: object, limit: int = 600) -> str:
    """A repr that a configuration (65,535 ports in advanced mode) cannot blow up."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


def normal(value: object) -> object:
    """`value` in a form that compares by content: dataclasses as (type, fields), sequences as
    tuples, mappings as sorted pairs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value),
            tuple(normal(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, Mapping):
        return tuple(sorted(((k, normal(v)) for k, v in value.items()), key=repr))
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return tuple(normal(item) for item in value)
    return value
