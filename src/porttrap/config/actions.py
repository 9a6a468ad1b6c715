"""The `[actions]` section: what porttrap does besides the kernel ban, per event. Commands
(`[[actions.command]]`, PortSentry's KILL_RUN_CMD), a hosts.deny line (`[actions.hosts_deny]`,
KILL_HOSTS_DENY) and webhooks (`[[actions.webhook]]`), each checked here so that a typo in a
placeholder or an event name is an error at start, not a hook that silently never fires."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from porttrap.config import fields
from porttrap.config.fields import Section
from porttrap.config.schema import (
    Actions,
    CommandAction,
    Event,
    HostsDenyAction,
    NotifyAction,
    WebhookAction,
)

KEYS = ("max_running", "queue", "command", "hosts_deny", "webhook", "notify")
NOTIFY_KEYS = ("urls", "on", "group", "every", "title")
COMMAND_KEYS = ("on", "run", "shell", "first", "timeout")
HOSTS_DENY_KEYS = ("file", "line", "keep")
WEBHOOK_KEYS = ("url", "on", "timeout", "retries", "headers")
PLACEHOLDERS = ("$TARGET$", "$PORT$", "$MODE$")
MAX_RETRIES = 10  # backoff doubles from 1 s: the 10th retry waits 512 s
# Anything that looks like a placeholder: `$WORD$`. A shell variable right before a `$` looks
# like one too; `${WORD}$` says what is meant.
_PLACEHOLDER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\$")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RUN_EXAMPLE = '["/usr/local/sbin/notify", "$TARGET$", "$PORT$", "$MODE$"]'
_SHELL_EXAMPLE = '"/usr/local/bin/notify $TARGET$ >> /var/log/notify.log"'
_ON_EXAMPLE = '["ban", "permanent-ban"]'
T = TypeVar("T")


def build_actions(section: Section) -> Actions:
    """`[actions]` and its sub-tables; problems for everything wrong in them."""
    section.check_keys(KEYS)
    default = Actions()
    return Actions(
        commands=tuple(_tables(section, "command", _command)),
        hosts_deny=_hosts_deny(section),
        webhooks=tuple(_tables(section, "webhook", _webhook)),
        notify=tuple(_tables(section, "notify", _notify)),
        max_running=section.get("max_running", fields.at_least(1), default.max_running),
        queue=section.get("queue", fields.at_least(1), default.queue),
    )


def _tables(section: Section, name: str, build: Callable[[Section], T | None]) -> list[T]:
    """Each valid table of the array of tables `[[actions.NAME]]`."""
    key, value = fields.join(section.key, name), section.table.get(name, [])
    if not isinstance(value, list):
        section.problems.add(key, f"expected [[{key}]] tables, got {fields.show(value)}")
        return []
    found = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            section.problems.add(where, f"expected a [[{key}]] table, got {fields.show(item)}")
            continue
        built = build(Section(item, where, section.problems))
        if built is not None:
            found.append(built)
    return found


def _command(section: Section) -> CommandAction | None:
    section.check_keys(COMMAND_KEYS)
    before, default = len(section.problems), CommandAction(run=("",))
    shell = section.get("shell", fields.boolean, default.shell)
    run = section.need("run", _shell_run if shell else _argv)
    on = section.get("on", events, default.on)
    first = section.get("first", fields.boolean, default.first)
    timeout = section.get("timeout", fields.duration, default.timeout)
    if run is None or len(section.problems) > before:
        return None
    return CommandAction(run=run, on=on, shell=shell, first=first, timeout=timeout)


def _argv(value: object) -> tuple[str, ...]:
    """A program and its arguments, run without a shell."""
    if isinstance(value, str):
        raise ValueError(
            f"expected a list such as {_RUN_EXAMPLE} (the program and its arguments, run "
            f"without a shell), got a string; to run a shell command line, set shell = true"
        )
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a non-empty list of strings such as {_RUN_EXAMPLE}")
    program = value[0]
    if not program:
        raise ValueError(f"the program (the first item) is empty; expected e.g. {_RUN_EXAMPLE}")
    if "/" in program and not Path(program).is_absolute():
        raise ValueError(
            f"the program {fields.show(program)} is a relative path, which would depend on "
            "the daemon's working directory; write an absolute path or a name found in PATH"
        )
    for item in value:
        check_placeholders(item)
    return tuple(value)


def _shell_run(value: object) -> tuple[str, ...]:
    """With `shell = true`: one command line for /bin/sh -c."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f"with shell = true, expected one command line in a string such as "
            f"{_SHELL_EXAMPLE}, got {fields.show(value)}"
        )
    check_placeholders(value)
    return (value,)


def check_placeholders(text: str) -> None:
    """Every `$WORD$` must be one of PLACEHOLDERS: `$TARGTE$` would reach the command as is."""
    for match in _PLACEHOLDER.finditer(text):
        found = match.group()
        if found in PLACEHOLDERS:
            continue
        close = difflib.get_close_matches(found.upper(), PLACEHOLDERS, n=1, cutoff=0.6)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        known = ", ".join(PLACEHOLDERS)
        raise ValueError(
            f'unknown placeholder "{found}"{hint} (placeholders: {known}; '
            f"a shell variable before a $ is written ${{{match.group(1)}}}$)"
        )


def events(value: object) -> frozenset[Event]:
    """`on`: a non-empty list of event names."""
    names = [event.value for event in Event]
    if not isinstance(value, list):
        fix = f"; write [{fields.show(value)}]" if value in names else ""
        raise ValueError(f"expected a list of events such as {_ON_EXAMPLE}{fix}")
    if not value:
        raise ValueError(
            f"an empty list never runs this action; list events such as {_ON_EXAMPLE} "
            f"(events: {', '.join(names)}), or remove the action"
        )
    parse = fields.one_of(Event)
    found = set()
    for item in value:
        try:
            found.add(parse(item))
        except ValueError as exc:
            raise ValueError(f"{fields.show(item)} is not an event: {exc}") from None
    return frozenset(found)


def _hosts_deny(section: Section) -> HostsDenyAction | None:
    value = section.table.get("hosts_deny")
    if value is None:
        return None
    if isinstance(value, list):  # [[actions.hosts_deny]]: the line is that of the first one
        key = fields.join(section.key, "hosts_deny")
        section.problems.add(
            f"{key}[0]", f"write one [{key}] table (single brackets): there is one hosts.deny"
        )
        return None
    table = section.sub("hosts_deny")
    table.check_keys(HOSTS_DENY_KEYS)
    default, before = HostsDenyAction(), len(section.problems)
    action = HostsDenyAction(
        file=table.get("file", fields.absolute_path, default.file),
        line=table.get("line", _deny_line, default.line),
        keep=table.get("keep", fields.boolean, default.keep),
    )
    return action if len(section.problems) == before else None


def _deny_line(value: object) -> str:
    """One hosts.deny line naming the banned address."""
    if not isinstance(value, str) or "\n" in value or "\r" in value:
        raise ValueError(f'expected one line such as "ALL: $TARGET$", got {fields.show(value)}')
    check_placeholders(value)
    if "$TARGET$" not in value:
        raise ValueError(
            f"the line {fields.show(value)} does not name the banned address: add $TARGET$, "
            'as in "ALL: $TARGET$"'
        )
    if value.lstrip().startswith("#"):
        raise ValueError(f"the line {fields.show(value)} is a comment, which denies nothing")
    return value


def _webhook(section: Section) -> WebhookAction | None:
    section.check_keys(WEBHOOK_KEYS)
    before, default = len(section.problems), WebhookAction(url="")
    url = section.need("url", _url)
    on = section.get("on", events, default.on)
    timeout = section.get("timeout", fields.duration, default.timeout)
    retries = section.get("retries", fields.between(0, MAX_RETRIES), default.retries)
    headers = section.get("headers", _headers, default.headers)
    if url is None or len(section.problems) > before:
        return None
    return WebhookAction(url=url, on=on, timeout=timeout, retries=retries, headers=headers)


def _notify(section: Section) -> NotifyAction | None:
    section.check_keys(NOTIFY_KEYS)
    before, default = len(section.problems), NotifyAction(urls=())
    urls = section.need("urls", _apprise_urls)
    on = section.get("on", events, default.on)
    group = section.get("group", fields.duration, default.group)
    every = section.get("every", fields.duration, default.every)
    title = section.get("title", _title, default.title)
    if urls is None or len(section.problems) > before:
        return None
    return NotifyAction(urls=urls, on=on, group=group, every=every, title=title)


def _apprise_urls(value: object) -> tuple[str, ...]:
    """Apprise URLs (a string or a list of them), each one Apprise knows how to send to."""
    example = '["mailtos://user:password@mail.example.org", "tgram://TOKEN/CHAT"]'
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(u, str) for u in items):
        raise ValueError(f"expected Apprise URLs such as {example}, got {fields.show(value)}")
    try:
        from porttrap.actions.notify import url_problem  # imports apprise: only when used
    except ImportError as exc:
        raise ValueError(
            f"notifications need the Python package apprise ({exc}): pip install 'apprise>=1.3' "
            "into porttrap's venv (Debian 12's apprise package, 1.2.0, is too old)"
        ) from None
    problems = [problem for url in items if (problem := url_problem(url))]
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(items)


def _title(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ValueError(f'expected one line of text such as "porttrap on $HOST$", got '
                         f"{fields.show(value)}")  # fmt: skip
    return value


def _url(value: object) -> str:
    example = '"https://hooks.example.org/porttrap"'
    if not isinstance(value, str):
        raise ValueError(f"expected a URL such as {example}, got {fields.show(value)}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"{fields.show(value)} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"expected an http:// or https:// URL such as {example}, got {fields.show(value)}"
        )
    if not parts.hostname or any(c.isspace() for c in value):
        raise ValueError(f"{fields.show(value)} has no host (or has spaces); expected {example}")
    return value


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """HTTP headers as a table of strings; names and values checked here, since a bad one
    would otherwise only fail on the first ban."""
    if not isinstance(value, dict):
        raise ValueError(
            f'expected a table such as {{ Authorization = "Bearer xyz" }}, got {fields.show(value)}'
        )
    headers = []
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{fields.show(name)} is not a valid HTTP header name")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise ValueError(f"the header {name} needs a one-line string value")
        if name.lower() in ("content-type", "content-length", "host"):
            raise ValueError(f"the header {name} is set by porttrap; remove it")
        headers.append((name, text))
    return tuple(headers)
