"""`porttrap import portsentry|port-trap`: the old tool's files in, a porttrap config out (stdout
or -o FILE), notes on stderr; for port_trap also its ban history, into porttrap's database."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

from porttrap.config import host
from porttrap.config import loader as config_mod
from porttrap.config.legacy import datatrap, port_trap, portsentry, reading
from porttrap.config.legacy.notes import Conversion
from porttrap.config.schema import Config
from porttrap.daemon import control, statedir
from porttrap.errors import ConfigError, ConfigProblem, PorttrapError, Refused
from porttrap.model import Ban, show
from porttrap.store import open_store
from porttrap.store.base import Store

Common = Callable[[argparse.ArgumentParser], None]
EXIT_REFUSED = 2  # written, but porttrap refuses it as it is (main's EXIT_CONFIG)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Common) -> None:
    """The `import` command and its two sources."""
    text = "write a porttrap config from PortSentry's or port_trap's files"
    parser = sub.add_parser(
        "import",
        help=text,
        description=f"{text}. The config goes to stdout (or -o FILE); everything that could "
        "not be carried over exactly is listed on stderr, one line each (file:line: KEY: why). "
        "Exit 0 when the config was written (notes are normal), 1 when nothing could be, 2 "
        "when it was written but porttrap refuses it as it is (check-config's problems follow "
        "the notes: fix them before starting porttrap).",
        epilog="examples:\n"
        "  porttrap import portsentry -o /etc/porttrap/porttrap.toml\n"
        "  porttrap import port-trap /opt/port_trap -o /etc/porttrap/porttrap.toml\n"
        "  porttrap import portsentry --help",
    )
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    ps = sources.add_parser(
        "portsentry",
        help="PortSentry 1.2 or 2.x: portsentry.conf, the ignore files, /etc/default/portsentry",
        description="Import PortSentry's portsentry.conf (1.2 or 2.x format), its ignore files "
        "and the modes in /etc/default/portsentry (TCP_MODE, UDP_MODE). Reads only the files "
        "in DIR and those given with --defaults and --ignore: an IGNORE_FILE outside DIR is "
        "named on stderr, not read. Only reads them: stop PortSentry yourself once the new "
        "config checks out. Needs root only to write into /etc/porttrap.",
        epilog="examples:\n"
        "  porttrap import portsentry               /etc/portsentry, config on stdout\n"
        "  porttrap import portsentry -o /etc/porttrap/porttrap.toml\n"
        "  porttrap import portsentry ./portsentry --defaults ./default-portsentry",
    )
    ps.add_argument(
        "directory",
        nargs="?",
        type=Path,
        default=portsentry.DEFAULT_DIR,
        metavar="DIR",
        help="PortSentry's directory (default: /etc/portsentry)",
    )
    ps.add_argument(
        "--defaults",
        type=Path,
        metavar="FILE",
        help="the file with TCP_MODE and UDP_MODE (default: /etc/default/portsentry when DIR "
        "is /etc/portsentry; none for another DIR)",
    )
    ps.add_argument(
        "--ignore",
        type=Path,
        metavar="FILE",
        help="the ignore file to read in place of IGNORE_FILE (one outside DIR is not read)",
    )
    pt = sources.add_parser(
        "port-trap",
        help="port_trap: list_of_ports.txt, for_permanent_ban.txt, whitelist.txt, datatrap.db",
        description="Import port_trap's traps, permanent-ban count and whitelist, and its ban "
        "history (datatrap.db) into porttrap's database, so that escalation continues. "
        "Importing the history twice adds nothing; a running porttrap must be restarted to "
        "use it. Needs root to write porttrap's database (or use --no-history).",
        epilog="examples:\n"
        "  porttrap import port-trap /opt/port_trap -o /etc/porttrap/porttrap.toml\n"
        "  porttrap import port-trap /opt/port_trap --no-history   (config only, stdout)",
    )
    pt.add_argument(
        "directory",
        type=Path,
        metavar="DIR",
        help="port_trap's directory (where list_of_ports.txt is)",
    )
    pt.add_argument(
        "--no-history", action="store_true", help="do not import datatrap.db's ban history"
    )
    pt.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="porttrap's state directory whose database gets the history (default: "
        "state_dir of the -c config, /var/lib/porttrap)",
    )
    for each, func in ((ps, import_portsentry), (pt, import_port_trap)):
        common(each)
        each.add_argument(
            "-o",
            "--output",
            type=Path,
            metavar="FILE",
            help="write the config to FILE (default: stdout)",
        )
        each.add_argument("--force", action="store_true", help="replace FILE when it exists")
        each.set_defaults(func=func)


def import_portsentry(args: argparse.Namespace) -> int:
    conversion = portsentry.convert(portsentry.read(args.directory, args.defaults, args.ignore))
    return _emit(conversion, args.output, args.force)


def import_port_trap(args: argparse.Namespace) -> int:
    conversion = port_trap.convert(port_trap.read(args.directory))
    database = args.directory / datatrap.DB_FILE
    history, target = None, None
    if not args.no_history and database.exists():
        # Everything that can refuse comes before anything is written: a database that is
        # not port_trap's (or not a file in DIR), an invalid -c config.
        reading.check_database(database, args.directory)
        history = datatrap.read(database)
        target = _target(args)
    code = _emit(conversion, args.output, args.force)
    if history is None or target is None:
        if not args.no_history:
            _say(f"{database}: not found: no ban history to import")
        return code
    _import_history(history, target)
    return code


def _emit(conversion: Conversion, output: Path | None, force: bool) -> int:
    """Print the notes, write the config (stdout or atomically to FILE), then what porttrap
    refuses in it, as check-config would say it on this host: the old tool's settings can
    make a config that protects nothing (SCAN_TRIGGER above the number of ports, no port at
    all), and the person must hear it before starting porttrap. EXIT_REFUSED then."""
    try:
        tomllib.loads(conversion.toml)
    except tomllib.TOMLDecodeError as err:  # a bug of the importer: never write invalid TOML
        raise PorttrapError(
            f"the imported config is not valid TOML ({err}); please report"
        ) from err
    refused = _refused(conversion.toml, output)
    for note in conversion.notes:
        _say(str(note))
    if output is None:
        sys.stdout.write(conversion.toml)
    else:
        _write(output, conversion.toml, force)
        _say(f"wrote {output}; check it with: porttrap check-config -c {output}")
    for problem in refused:
        _say(f"porttrap refuses this config until it is fixed: {problem}")
    return EXIT_REFUSED if refused else 0


def _refused(toml: str, output: Path | None) -> list[ConfigProblem]:
    """What check-config would say of the imported config on this host."""
    try:
        config_mod.load_text(toml, output, host.read())
    except ConfigError as err:
        return err.problems
    return []


def _write(path: Path, text: str, force: bool) -> None:
    """Write `path` atomically (a temporary file renamed over it), refusing to replace an
    existing file unless `force`."""
    if path.exists() and not force:
        raise Refused(f"{path} exists: give --force to replace it, or another -o FILE")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(temporary).chmod(0o644)
        if force:
            Path(temporary).replace(path)
        else:
            os.link(temporary, path)  # fails if the file appeared meanwhile: never replaced
    finally:
        Path(temporary).unlink(missing_ok=True)


def _target(args: argparse.Namespace) -> Config:
    """The config whose store gets the history: --state-dir alone (the defaults otherwise:
    porttrap need not be configured yet), else the -c config."""
    target = Config(state_dir=Path(args.state_dir)) if args.state_dir is not None else None
    target = target or config_mod.load(args.config)
    # root writes the database there: refused as the daemon refuses it (statedir), with the fix
    statedir.ensure(target.state_dir)
    return target


def _import_history(history: datatrap.History, target: Config) -> None:
    """Add the bans porttrap's database does not have yet (importing twice adds nothing), in
    one transaction; say what was left out and whether a running daemon must restart."""
    for problem in history.problems:
        _say(str(problem))
    with closing(open_store(target)) as store:
        new = _new_bans(store, history.bans)
        store.add_bans(new)
    skipped = history.rows - len(history.bans)
    _say(
        f"{target.database}: imported {len(new)} bans of {history.rows} rows of port_trap's "
        f"history ({len(history.bans) - len(new)} already there, {skipped} rows left out)"
    )
    if new and control.ping(target.control_socket):
        _say(
            "porttrap is running: restart it (systemctl restart porttrap) so that it restores "
            "the imported bans and counts them toward escalation"
        )


def _new_bans(store: Store, bans: Sequence[Ban]) -> list[Ban]:
    if not bans:
        return []
    have = {
        (show(b.ban.target), b.ban.banned_at, b.ban.reason)
        for b in store.bans_since(min(ban.banned_at for ban in bans))
    }
    return [b for b in bans if (show(b.target), b.banned_at, b.reason) not in have]


def _say(text: str) -> None:
    print(text, file=sys.stderr)
