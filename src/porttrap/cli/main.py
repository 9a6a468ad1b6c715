"""`porttrap COMMAND ...`: parse, run, print, exit. Errors are one line unless -v."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

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
from porttrap.errors import ConfigError, PorttrapError, RemoteConfigError

EXIT_ERROR = 1
EXIT_CONFIG = 2

Command = Callable[[argparse.Namespace], int]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="FILE",
        help="configuration file (default: /etc/porttrap/porttrap.toml "
        "when present, else built-in defaults)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors"
    )


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
    parser = argparse.ArgumentParser(prog="porttrap", description=helptext.DESCRIPTION)
    parser.add_argument("--version", action=version.VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    unban = add("unban", commands.unban, "lift bans now, through the running daemon")
    _targets(unban, "unban")
    unban.add_argument(
        "--fleet",
        action="store_true",
        help="lift them on every host of the fleet, their own bans included",
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
    args = build_parser().parse_args(argv)
    log.setup(args.verbose)
    func: Command = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `porttrap history | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigError, RemoteConfigError) as err:
        for problem in err.problems:
            print(f"porttrap: config error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except (PorttrapError, OSError) as err:
        if args.verbose:
            traceback.print_exc()
        print(f"porttrap: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    finally:
        logging.shutdown()
