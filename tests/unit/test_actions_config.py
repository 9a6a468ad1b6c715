"""`[actions]` from TOML: every key, and every problem with its line and dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from porttrap.config.loader import load_text
from porttrap.config.schema import (
    BAN_EVENTS,
    Actions,
    CommandAction,
    Event,
    HostsDenyAction,
    WebhookAction,
)
from porttrap.errors import ConfigError


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, None)
    return [f"{p.line} {p.key}: {p.message}" for p in caught.value.problems]


def test_no_actions_section_means_no_actions() -> None:
    assert load_text("", None).actions == Actions()


def test_every_key_is_read() -> None:
    text = """
[actions]
max_running = 2
queue = 50

[[actions.command]]
on = ["ban", "permanent-ban", "unban"]
run = ["/usr/local/sbin/notify", "--ip=$TARGET$", "$PORT$", "$MODE$"]
first = true
timeout = "1m"

[[actions.command]]
on = ["hit"]
run = "logger -t porttrap $TARGET$ >> /var/log/x"
shell = true

[actions.hosts_deny]
file = "/etc/hosts.deny"
line = "sshd: $TARGET$"
keep = true

[[actions.webhook]]
url = "https://hooks.example.org/porttrap?token=x"
on = ["ban"]
timeout = "10s"
retries = 0
headers = { Authorization = "Bearer xyz", X-Source = "porttrap" }
"""
    actions = load_text(text, None).actions
    assert actions == Actions(
        commands=(
            CommandAction(
                run=("/usr/local/sbin/notify", "--ip=$TARGET$", "$PORT$", "$MODE$"),
                on=frozenset({Event.BAN, Event.PERMANENT_BAN, Event.UNBAN}),
                first=True,
                timeout=60.0,
            ),
            CommandAction(
                run=("logger -t porttrap $TARGET$ >> /var/log/x",),
                on=frozenset({Event.HIT}),
                shell=True,
            ),
        ),
        hosts_deny=HostsDenyAction(file=Path("/etc/hosts.deny"), line="sshd: $TARGET$", keep=True),
        webhooks=(
            WebhookAction(
                url="https://hooks.example.org/porttrap?token=x",
                on=frozenset({Event.BAN}),
                timeout=10.0,
                retries=0,
                headers=(("Authorization", "Bearer xyz"), ("X-Source", "porttrap")),
            ),
        ),
        max_running=2,
        queue=50,
    )


def test_defaults_of_each_table() -> None:
    text = '[[actions.command]]\nrun = ["notify"]\n[actions.hosts_deny]\n'
    text += '[[actions.webhook]]\nurl = "http://192.0.2.9:8080/x"\n'
    actions = load_text(text, None).actions
    assert actions.commands == (CommandAction(run=("notify",)),)
    assert actions.commands[0].on == BAN_EVENTS and actions.commands[0].timeout == 30.0
    assert actions.hosts_deny == HostsDenyAction()
    assert actions.webhooks == (WebhookAction(url="http://192.0.2.9:8080/x"),)
    assert (actions.max_running, actions.queue) == (4, 1000)


def test_unknown_keys_are_named_with_a_suggestion() -> None:
    text = """[actions]
max_runing = 3
[[actions.command]]
run = ["x"]
frist = true
[actions.hosts_deny]
files = "/etc/hosts.deny"
[[actions.webhook]]
url = "https://hooks.example.org/"
header = {}
"""
    assert problems(text) == [
        '2 actions.max_runing: unknown key "max_runing"; did you mean "max_running"?',
        '5 actions.command[0].frist: unknown key "frist"; did you mean "first"?',
        '7 actions.hosts_deny.files: unknown key "files"; did you mean "file"?',
        '10 actions.webhook[0].header: unknown key "header"; did you mean "headers"?',
    ]


def test_limits_are_at_least_one() -> None:
    assert problems("[actions]\nmax_running = 0\nqueue = -1\n") == [
        "2 actions.max_running: expected a whole number of at least 1, got 0",
        "3 actions.queue: expected a whole number of at least 1, got -1",
    ]


def test_run_must_be_an_argv_list_without_shell() -> None:
    text = """[[actions.command]]
run = "/usr/local/bin/notify $TARGET$"
[[actions.command]]
run = []
[[actions.command]]
run = ["bin/notify"]
[[actions.command]]
run = ["", "x"]
[[actions.command]]
run = ["/bin/echo", 3]
[[actions.command]]
on = ["ban"]
"""
    found = problems(text)
    assert found[0].startswith("2 actions.command[0].run: expected a list such as [")
    assert "to run a shell command line, set shell = true" in found[0]
    assert found[1].startswith("4 actions.command[1].run: expected a non-empty list of strings")
    assert found[2] == (
        '6 actions.command[2].run: the program "bin/notify" is a relative path, which would '
        "depend on the daemon's working directory; write an absolute path or a name found in PATH"
    )
    assert found[3].startswith("8 actions.command[3].run: the program (the first item) is empty")
    assert found[4].startswith("10 actions.command[4].run: expected a non-empty list of strings")
    assert found[5] == '11 actions.command[5].run: missing "run"; this key is required'
    assert len(found) == 6


def test_shell_run_is_one_string() -> None:
    text = '[[actions.command]]\nshell = true\nrun = ["/bin/echo", "$TARGET$"]\n'
    (found,) = problems(text)
    assert found.startswith(
        "3 actions.command[0].run: with shell = true, expected one command line in a string"
    )


def test_unknown_placeholders_are_errors_with_a_suggestion() -> None:
    text = """[[actions.command]]
run = ["/bin/echo", "$TARGTE$"]
[[actions.command]]
shell = true
run = "echo $target$ $FOO$"
[actions.hosts_deny]
line = "ALL: $TARGET$ $PROT$"
"""
    found = problems(text)
    assert found[0].startswith(
        '2 actions.command[0].run: unknown placeholder "$TARGTE$"; did you mean "$TARGET$"? '
        "(placeholders: $TARGET$, $PORT$, $MODE$;"
    )
    assert found[1].startswith(
        '5 actions.command[1].run: unknown placeholder "$target$"; did you mean "$TARGET$"?'
    )
    assert found[2].startswith(
        '7 actions.hosts_deny.line: unknown placeholder "$PROT$"; did you mean "$PORT$"?'
    )


def test_a_shell_variable_before_a_dollar_is_told_how_to_write_it() -> None:
    (found,) = problems('[[actions.command]]\nshell = true\nrun = "echo $HOME$X"\n')
    assert "a shell variable before a $ is written ${HOME}$" in found
    config = load_text('[[actions.command]]\nshell = true\nrun = "echo ${HOME}$X"\n', None)
    assert config.actions.commands[0].run == ("echo ${HOME}$X",)


def test_on_lists_known_events() -> None:
    text = """[[actions.command]]
run = ["x"]
on = ["ban", "unbam"]
[[actions.command]]
run = ["x"]
on = "ban"
[[actions.webhook]]
url = "https://hooks.example.org/"
on = []
"""
    assert problems(text) == [
        '3 actions.command[0].on: "unbam" is not an event: expected one of "hit", "ban", '
        '"permanent-ban", "unban", got "unbam"; did you mean "unban"?',
        '6 actions.command[1].on: expected a list of events such as ["ban", "permanent-ban"]; '
        'write ["ban"]',
        "9 actions.webhook[0].on: an empty list never runs this action; list events such as "
        '["ban", "permanent-ban"] (events: hit, ban, permanent-ban, unban), or remove the action',
    ]


def test_booleans_and_durations() -> None:
    text = '[[actions.command]]\nrun = ["x"]\nfirst = "yes"\nshell = 1\ntimeout = "0s"\n'
    assert problems(text) == [
        '3 actions.command[0].first: expected true or false, got "yes"',
        "4 actions.command[0].shell: expected true or false, got 1",
        '5 actions.command[0].timeout: a duration must be more than zero, got "0s"',
    ]


def test_hosts_deny_file_and_line() -> None:
    text = """[actions.hosts_deny]
file = "hosts.deny"
line = "ALL: 192.0.2.1"
keep = "no"
"""
    assert problems(text) == [
        '2 actions.hosts_deny.file: expected an absolute path such as "/var/lib/porttrap", '
        'got "hosts.deny"',
        '3 actions.hosts_deny.line: the line "ALL: 192.0.2.1" does not name the banned address: '
        'add $TARGET$, as in "ALL: $TARGET$"',
        '4 actions.hosts_deny.keep: expected true or false, got "no"',
    ]
    (found,) = problems('[actions.hosts_deny]\nline = "# $TARGET$"\n')
    assert (
        found
        == '2 actions.hosts_deny.line: the line "# $TARGET$" is a comment, which denies nothing'
    )
    (found,) = problems('[actions.hosts_deny]\nline = "ALL: $TARGET$\\nALL: x"\n')
    assert found.startswith('2 actions.hosts_deny.line: expected one line such as "ALL: $TARGET$"')


def test_hosts_deny_is_one_table() -> None:
    (found,) = problems('[[actions.hosts_deny]]\nfile = "/etc/hosts.deny"\n')
    assert found == (
        "1 actions.hosts_deny[0]: write one [actions.hosts_deny] table (single brackets): "
        "there is one hosts.deny"
    )
    (found,) = problems("[actions]\nhosts_deny = 1\n")
    assert found == "2 actions.hosts_deny: expected a table such as [actions.hosts_deny], got 1"


def test_commands_and_webhooks_are_arrays_of_tables() -> None:
    assert problems('[actions.command]\nrun = ["x"]\n') == [
        "1 actions.command: expected [[actions.command]] tables, got a table"
    ]
    assert problems("[actions]\nwebhook = [1]\n") == [
        "2 actions.webhook[0]: expected a [[actions.webhook]] table, got 1"
    ]


def test_webhook_url_retries_and_headers() -> None:
    text = """[[actions.webhook]]
url = "ftp://hooks.example.org/x"
[[actions.webhook]]
url = "https:///path"
[[actions.webhook]]
url = "https://hooks.example.org:99999/"
[[actions.webhook]]
url = "https://hooks.example.org/"
retries = 11
timeout = "soon"
[[actions.webhook]]
url = "https://hooks.example.org/"
headers = { "Bad Name" = "x" }
[[actions.webhook]]
url = "https://hooks.example.org/"
headers = { X-A = 1 }
[[actions.webhook]]
url = "https://hooks.example.org/"
headers = { Content-Type = "text/plain" }
[[actions.webhook]]
url = "https://hooks.example.org/"
headers = "Authorization: x"
[[actions.webhook]]
on = ["ban"]
"""
    found = problems(text)
    assert found == [
        "2 actions.webhook[0].url: expected an http:// or https:// URL such as "
        '"https://hooks.example.org/porttrap", got "ftp://hooks.example.org/x"',
        '4 actions.webhook[1].url: "https:///path" has no host (or has spaces); expected '
        '"https://hooks.example.org/porttrap"',
        '6 actions.webhook[2].url: "https://hooks.example.org:99999/" is not a valid URL '
        "(Port out of range 0-65535)",
        "9 actions.webhook[3].retries: expected a whole number from 0 to 10, got 11",
        "10 actions.webhook[3].timeout: expected a duration such as 30s, 10m, 1h, 1d, 1w, "
        'got "soon"',
        '13 actions.webhook[4].headers: "Bad Name" is not a valid HTTP header name',
        "16 actions.webhook[5].headers: the header X-A needs a one-line string value",
        "19 actions.webhook[6].headers: the header Content-Type is set by porttrap; remove it",
        '22 actions.webhook[7].headers: expected a table such as { Authorization = "Bearer xyz" }, '
        'got "Authorization: x"',
        '23 actions.webhook[8].url: missing "url"; this key is required',
    ]


def test_problems_elsewhere_are_reported_with_those_of_actions() -> None:
    found = problems('[ban]\ntime = "x"\n[actions]\nqueue = 0\n')
    assert [line.split(":")[0] for line in found] == ["2 ban.time", "4 actions.queue"]
