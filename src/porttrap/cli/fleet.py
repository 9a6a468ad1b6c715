"""`porttrap fleet init|add-host`: set up the fleet's shared database in PostgreSQL and give each
host its role (porttrap.fleet.admin does the work). The database driver is imported only when
one of these runs."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from porttrap.errors import PorttrapError, UsageError

Common = Callable[[argparse.ArgumentParser], None]
PASSWORD_BYTES = 32  # secrets.token_urlsafe: 43 characters, 256 bits

_FLEET = """\
Share bans between porttrap hosts through one PostgreSQL database: each host publishes the
bans it decides into a shared log there and applies the others'. These commands set the
database up, as its admin, once: `init` creates the schema, `add-host` a role for each host.
Each host then names the database in its [fleet] section (README: Running a fleet)."""

_FLEET_EXAMPLES = """\
examples:
  porttrap fleet init --admin-url postgresql://postgres@db.example.net/porttrap
  porttrap fleet add-host web-1 --admin-url postgresql:///porttrap"""

_INIT = """\
Create the fleet's schema (porttrap, version 1) in the database --admin-url names, or upgrade
an older one, in one transaction: the shared log, the hosts table, the group role
porttrap_host, and the grants and row-level security through which a host can publish only
under its own name and read the rest. A database already at this version is left as it is;
one at a newer version (a newer porttrap's) is refused. Needs a role that may create schemas
and roles there (the database's owner with CREATEROLE, or a superuser)."""

_INIT_EXAMPLES = """\
examples:
  porttrap fleet init --admin-url postgresql://postgres@db.example.net/porttrap
  porttrap fleet init --admin-url postgresql:///porttrap    on the database host"""

_ADD_HOST = """\
Add host NAME to the fleet: a PostgreSQL role that can log in (porttrap_host_NAME, with '.'
and '-' as '_'; or --role) in the group porttrap_host, and NAME's row in porttrap.hosts. The
password is the first line of --password-file, or a new random one, written to
--write-password FILE (created with mode 0600, never overwritten) or printed once on stdout.
It reaches PostgreSQL as a SCRAM verifier, never in clear. Put it on the host in the file its
[fleet] password_file names (root's, mode 0600). Run `porttrap fleet init` first."""

_STATUS = """\
This host's side of the fleet, from its daemon: connected or not (and why not), its position
in the shared log and how far behind it is, the bans waiting in its outbox, what it received,
adopted, refused and lifted, and the lag of the last row. Then every host the database
knows, with its last heartbeat, its position and its bans (read with this host's own role).
Either half says why when it cannot be read (the daemon stopped, the database away)."""

_STATUS_EXAMPLES = """\
examples:
  porttrap fleet status
  porttrap fleet status --json | jq .link.behind"""

_ADD_HOST_EXAMPLES = """\
examples:
  porttrap fleet add-host web-1 --admin-url URL --write-password web-1.password
  porttrap fleet add-host web-2 --admin-url URL --password-file web-2.password
  porttrap fleet add-host web-3 --admin-url URL       prints the new password"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Common) -> None:
    """The `fleet` command and its actions. init and add-host read no configuration, so they
    take -v but not `common`'s -c; `fleet status` (which reads [fleet]) takes `common`."""
    fleet = sub.add_parser(
        "fleet", help="set up the fleet's shared PostgreSQL database and its hosts",
        description=_FLEET, epilog=_FLEET_EXAMPLES,
    )  # fmt: skip
    actions = fleet.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init", help="create or upgrade the fleet's schema in the database",
        description=_INIT, epilog=_INIT_EXAMPLES,
    )  # fmt: skip
    _verbose(init)
    _admin_url(init)
    init.set_defaults(func=init_command)

    add = actions.add_parser(
        "add-host", help="give a host its role in the fleet's database",
        description=_ADD_HOST, epilog=_ADD_HOST_EXAMPLES,
    )  # fmt: skip
    _verbose(add)
    add.add_argument("name", metavar="NAME", help="the host's name in the fleet ([fleet] name)")
    _admin_url(add)
    add.add_argument(
        "--role",
        metavar="ROLE",
        help="the PostgreSQL role to make (default: porttrap_host_NAME, '.' and '-' as '_')",
    )
    password = add.add_mutually_exclusive_group()
    password.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="take the password from FILE's first line (not readable by group or others); "
        "default: a new random one",
    )
    password.add_argument(
        "--write-password",
        type=Path,
        metavar="FILE",
        help="write the new random password to FILE, created with mode 0600 (default: print "
        "it once on stdout)",
    )
    add.set_defaults(func=add_host_command)

    status = actions.add_parser(
        "status", help="this host's link to the fleet, and the hosts the database knows",
        description=_STATUS, epilog=_STATUS_EXAMPLES,
    )  # fmt: skip
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=status_command)


def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors"
    )


def _admin_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-url",
        required=True,
        metavar="URL",
        help="the fleet database, as its admin: postgresql://USER@HOST/DB?sslmode=verify-full "
        "(the password from ~/.pgpass or PGPASSFILE, never in the URL)",
    )


def status_command(args: argparse.Namespace) -> int:
    from porttrap.cli import fleetview
    from porttrap.config import loader

    return fleetview.status(loader.load(args.config), args.json)


def init_command(args: argparse.Namespace) -> int:
    from porttrap.fleet import admin

    print(admin.init(_checked_url(args.admin_url)))
    return 0


def add_host_command(args: argparse.Namespace) -> int:
    from porttrap.fleet import admin

    url = _checked_url(args.admin_url)
    if args.password_file is not None:
        role = admin.add_host(url, args.name, read_password(args.password_file), args.role)
        print(f"added host {args.name} (role {role}) with the password in {args.password_file}")
        return 0
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    if args.write_password is None:
        role = admin.add_host(url, args.name, password, args.role)
        print(f"added host {args.name} (role {role}); its password, shown only now:",
              file=sys.stderr)  # fmt: skip
        print(password)
        return 0
    fd = _create_private(args.write_password)
    try:
        role = admin.add_host(url, args.name, password, args.role)
    except BaseException:
        os.close(fd)
        args.write_password.unlink()
        raise
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    print(f"added host {args.name} (role {role}); its password is in {args.write_password}")
    return 0


def _checked_url(url: str) -> str:
    from porttrap.fleet import admin

    admin.where(url)  # a FleetError when it is no URL
    if "password" in _conninfo(url):
        raise UsageError(
            "--admin-url holds a password, which every user of this machine can read in the "
            "process list: put it in ~/.pgpass (or a file PGPASSFILE names) instead"
        )
    return url


def _conninfo(url: str) -> dict[str, object]:
    from psycopg.conninfo import conninfo_to_dict

    return dict(conninfo_to_dict(url))


def read_password(path: Path) -> str:
    """The first line of --password-file, which only its owner may read."""
    from porttrap.fleet.credentials import read_password as read

    try:
        return read(path, "--password-file")
    except PorttrapError as err:
        raise UsageError(str(err)) from None


def _create_private(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UsageError(
            f"--write-password {path}: exists already (never overwritten): remove it, or "
            "name a new file"
        ) from None
    except OSError as e:
        raise UsageError(f"--write-password {path}: {e.strerror}") from None
