"""`porttrap COMMAND ...`: parse, run, print, exit. Errors are one line unless -v."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from porttrap import log
from porttrap.cli import (
    commands,
    completion,
    demo,
    fleet,
    helptext,
    importing,
    report,
    service,
    top,
    version,
)
from porttrap.errors import (
    ConfigError,
    DaemonNotRunning,
    PorttrapError,
    Refused,
    RemoteConfigError,
    UsageError,
)

# The exit codes, one table for every command (docs/cli.md, `porttrap --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # failed: the kernel, the database, a file, the network
EXIT_USAGE = 2  # an invalid command line, request or configuration (argparse's own 2)
EXIT_CONFIG = EXIT_USAGE
EXIT_NOT_RUNNING = commands.EXIT_NOT_RUNNING  # 3: the command needs the daemon; none answers
EXIT_NOT_RECORDED = commands.EXIT_NOT_RECORDED  # 4: done in the kernel, not yet on disk
EXIT_REFUSED = 5  # understood, and refused: a protected target, a running daemon, no --yes
EXIT_INTERRUPTED = 130

Command = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """An unknown command names the nearest known one, as git and cscli do."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            raise argparse.ArgumentError(action, unknown_command(value, list(action.choices)))
        super()._check_value(action, value)


def unknown_command(name: str, known: list[str]) -> str:
    """'unknown command 'stauts': did you mean 'status'?', or the list when nothing is near."""
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if near:
        return f"unknown command {name!r}: did you mean {near[0]!r}?"
    return f"unknown command {name!r} (choose from {', '.join(known)})"


def _global(parser: argparse.ArgumentParser, default: Any) -> None:
    """-c and -v, before the command (`porttrap -c FILE status`) or after it. After it they
    default to SUPPRESS, so that the command's parser never overwrites what came before."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        default=default,
        help="configuration file (default: /etc/porttrap/porttrap.toml "
        "when present, else built-in defaults)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="debug logging, and tracebacks on errors",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    _global(parser, argparse.SUPPRESS)


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _targets(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "addresses",
        nargs="*",
        metavar="ADDRESS",
        help=f"IPv4/IPv6 address or CIDR network to {verb}",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="also read addresses from FILE, one per line ('-' = stdin; # starts a comment)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(prog="porttrap", description=helptext.DESCRIPTION)
    parser.add_argument("--version", action=version.VersionAction)
    _global(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Command, text: str) -> argparse.ArgumentParser:
        about = helptext.COMMANDS[name]
        cmd = sub.add_parser(name, help=text, description=about.description, epilog=about.epilog)
        _common(cmd)
        cmd.set_defaults(func=func)
        return cmd

    run = add(
        "run",
        commands.run,
        "run the daemon in the foreground (logs to stderr, or where [log] says)",
    )
    run.add_argument(
        "--flush-on-exit",
        action="store_true",
        help="remove porttrap's nftables table when stopping "
        "(by default bans stay in the kernel and expire by themselves)",
    )
    add(
        "check-config",
        commands.check_config,
        "validate the configuration; list every problem; exit 0 when valid",
    )
    _json(
        add(
            "status",
            commands.status,
            "is the daemon running, traps set and skipped, bans (exit 3 when not running)",
        )
    )
    listing = add("bans", commands.bans, "list active bans")
    _json(listing)
    listing.add_argument(
        "--fleet", action="store_true", help="every host's active bans, from the fleet's database"
    )
    history = add("history", commands.history, "hits and bans, newest first")
    history.add_argument(
        "address", nargs="?", metavar="ADDRESS", help="only this address or network"
    )
    history.add_argument(
        "-n", "--limit", type=int, default=50, help="how many entries (default: 50)"
    )
    _json(history)
    history.add_argument(
        "--fleet", action="store_true", help="the fleet's log: which hosts banned ADDRESS, and why"
    )
    ban = add("ban", commands.ban, "ban addresses now, through the running daemon")
    _targets(ban, "ban")
    length = ban.add_mutually_exclusive_group()
    length.add_argument(
        "--for",
        dest="duration",
        metavar="DURATION",
        help="ban for this long (30s, 10m, 1h, 1d, 1w; at most 3650d); default: the escalation "
        "in [ban]",
    )
    length.add_argument("--permanent", action="store_true", help="ban for good")
    ban.add_argument(
        "--reason",
        metavar="TEXT",
        help="why, in a few words; kept with the ban as 'manual: TEXT' and shown by bans, "
        "history, report and --json",
    )
    unban = add("unban", commands.unban, "lift bans now, through the running daemon")
    _targets(unban, "unban")
    unban.add_argument(
        "--fleet",
        action="store_true",
        help="lift them on every host of the fleet, their own bans included",
    )
    unban.add_argument(
        "--all", action="store_true", help="lift every active ban (asks first, unless --yes)"
    )
    unban.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="with --all: do not ask (needed without a terminal)",
    )
    add(
        "reload",
        commands.reload,
        "apply the edited configuration in the running daemon, keeping every ban",
    )
    add(
        "flush",
        commands.flush,
        "remove porttrap's nftables table (and nothing else); the daemon must be stopped",
    )
    importing.add_parser(sub, _common)
    top.add_parser(sub, _common)
    service.add_parser(sub, _common)
    fleet.add_parser(sub, _common)
    report.add_parser(sub, _common)
    demo.add_parser(sub)
    completion.add_parser(sub)
    helptext.finish(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `porttrap`: what it can do, rather than an error
        parser.print_help()
        return EXIT_OK
    log.setup(args.verbose)
    return _run(args.func, args)


def _run(func: Command, args: argparse.Namespace) -> int:
    """The command's exit code, or the error's (`exit_code`) after its one line."""
    try:
        return func(args)
    except BrokenPipeError:  # `porttrap history | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ConfigError, RemoteConfigError) as err:
        for problem in err.problems:
            print(f"porttrap: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except DaemonNotRunning as err:
        print(f"porttrap: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except (PorttrapError, OSError) as err:
        if args.verbose:
            traceback.print_exc()
        print(f"porttrap: error: {err}", file=sys.stderr)
        return exit_code(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        logging.shutdown()


def exit_code(err: PorttrapError | OSError) -> int:
    """The exit code of an error the CLI prints as one line (the table in docs/cli.md)."""
    if isinstance(err, UsageError):
        return EXIT_USAGE
    if isinstance(err, Refused):
        return EXIT_REFUSED
    return EXIT_ERROR
