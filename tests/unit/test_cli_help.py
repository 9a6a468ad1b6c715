"""`porttrap --help`, `porttrap COMMAND --help` and `--version`: enough to use porttrap without
the README. Walks the real parser, so a command added later is held to the same bar: a
description, examples that name it, a help text on every argument, defaults stated."""

from __future__ import annotations

import argparse
import platform
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from porttrap import __version__
from porttrap.cli import commands, helptext, version
from porttrap.cli import main as cli
from porttrap.errors import FirewallError
from porttrap.firewall import kernel

Path_ = tuple[str, ...]


def _walk(parser: argparse.ArgumentParser, path: Path_ = ()) -> Iterator[tuple[Path_, object]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _walk(child, (*path, name))


COMMANDS = [path for path, _ in _walk(cli.build_parser())]
IDS = [" ".join(path) for path in COMMANDS]


def parser_of(path: Path_) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for name in path:
        sub = parser._subparsers
        assert sub is not None
        (action,) = (a for a in sub._group_actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def help_of(parser: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    return parser.format_help()


def test_the_walk_finds_every_command() -> None:
    names = set(IDS)
    expected = {"run", "check-config", "status", "bans", "history", "ban", "unban", "flush"}
    assert expected | {"import", "import portsentry", "import port-trap", "completion"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=IDS)
def test_each_command_says_what_it_does_and_shows_itself_used(path: Path_) -> None:
    parser = parser_of(path)
    command = "porttrap " + " ".join(path)
    assert parser.description, f"{command}: no description"
    assert parser.description.strip() != (parser.epilog or "").strip()
    assert parser.epilog, f"{command}: no epilog with examples"
    assert re.search(rf"^ .*\b{re.escape(command)}( |$)", parser.epilog, re.MULTILINE), (
        f"{command}: the epilog has no example (an indented line) with '{command}'"
    )


@pytest.mark.parametrize("path", COMMANDS, ids=IDS)
def test_each_example_line_is_printed_as_written(
    path: Path_, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The formatter reflows prose but must keep indented lines (examples) intact."""
    parser = parser_of(path)
    printed = help_of(parser, monkeypatch).splitlines()
    for line in (parser.epilog or "").splitlines():
        if line.startswith(" "):
            assert line.rstrip() in printed


@pytest.mark.parametrize("path", COMMANDS, ids=IDS)
def test_each_argument_has_help_with_its_default(path: Path_) -> None:
    parser = parser_of(path)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = "/".join(action.option_strings) or action.metavar or action.dest
        assert action.help, f"porttrap {' '.join(path)} {name}: no help text"
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            continue
        assert _states_default(action.help, default), (
            f"porttrap {' '.join(path)} {name}: the help does not say the default {default}"
        )


def _states_default(help_: str, default: object) -> bool:
    """`help_` says "default" and the value (1.0 may read 1), or leaves it to %(default)s."""
    if "%(default)" in help_:
        return True
    shown = {str(default)}
    if isinstance(default, float) and default.is_integer():
        shown.add(str(int(default)))
    return "default" in help_ and any(text in help_ for text in shown)


@pytest.mark.parametrize("path", COMMANDS, ids=IDS)
def test_each_command_help_exits_0(path: Path_, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*path, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: porttrap {' '.join(path)} ")


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=["porttrap", *IDS])
def test_help_fits_an_80_column_terminal(path: Path_, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = help_of(parser_of(path), monkeypatch).splitlines()
    assert [line for line in lines if len(line) > 80] == []


def test_the_top_help_lists_every_command_with_a_summary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = cli.build_parser()
    text = help_of(parser, monkeypatch)
    listed = re.findall(r"^    (\S+)", text, re.MULTILINE)
    top = [path[0] for path in COMMANDS if len(path) == 1]
    assert sorted(listed) == sorted(top)
    sub = parser._subparsers
    assert sub is not None
    for action in sub._group_actions:
        for choice in getattr(action, "_choices_actions", []):
            assert choice.help, f"porttrap {choice.dest}: no one-line summary"


def test_the_top_help_gives_workflow_files_and_the_real_exit_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = help_of(cli.build_parser(), monkeypatch)
    assert "/etc/porttrap/porttrap.toml" in text
    assert "/var/lib/porttrap" in text
    named = set(re.findall(r"^  porttrap ([a-z-]+)", text, re.MULTILINE))
    top = {path[0] for path in COMMANDS if len(path) == 1}
    assert named <= top, f"the workflow names commands that do not exist: {named - top}"
    assert {"check-config", "run", "status", "bans", "ban", "unban"} <= named
    codes = dict(re.findall(r"^  (\d+) +(\S.*)$", text, re.MULTILINE))
    assert codes["0"] == "success"
    assert codes[str(cli.EXIT_ERROR)].startswith("failed")
    assert codes[str(cli.EXIT_USAGE)].startswith("usage: an invalid command line")
    assert codes[str(commands.EXIT_NOT_RUNNING)].startswith("not running")
    assert codes[str(commands.EXIT_NOT_RECORDED)].startswith("ban, unban: done in the kernel")
    assert codes[str(cli.EXIT_REFUSED)].startswith("refused")
    assert codes[str(cli.EXIT_INTERRUPTED)].startswith("interrupted")


def test_the_workflow_shows_only_commands_there_are() -> None:
    epilog = helptext.top_epilog(["run", "status"])
    assert re.findall(r"^  porttrap ([a-z-]+)", epilog, re.MULTILINE) == ["run", "status"]


def test_the_formatter_reflows_prose_and_keeps_indented_lines() -> None:
    text = "one two three\nfour five\n\nexamples:\n  porttrap run -v     debug\n  x"
    assert helptext.fill(text, 12, "> ") == [
        "> one two",
        "> three four",
        "> five",
        "",
        "> examples:",
        ">   porttrap run -v     debug",
        ">   x",
    ]


def test_version_prints_the_version_python_and_the_firewall_parts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == f"porttrap {__version__}"
    assert second.startswith(f"Python {platform.python_version()}; libnftables ")


def test_version_says_what_is_missing_and_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(kernel, "SYSTEM_SITE", tmp_path)  # python3-nftables not installed

    def no_binding() -> object:
        raise FirewallError("the Python module 'nftables' is missing")

    def which(program: str) -> str | None:
        return None if program in ("ipset", "ip6tables-restore") else f"/usr/sbin/{program}"

    text = version.text(no_binding, which)
    assert text.splitlines()[1].endswith(
        "; libnftables not found (apt-get install nftables python3-nftables); "
        "ipset, ip6tables-restore not found"
    )
    found = version.text(object, lambda program: f"/usr/sbin/{program}")
    assert found.splitlines()[1].endswith("; libnftables found; ipset and iptables found")
