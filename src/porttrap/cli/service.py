"""`porttrap install-service` and `porttrap uninstall-service`: the systemd unit, its config and
state in, and everything porttrap made out again (porttrap.service.install does the work)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from porttrap.errors import ConfigError, UsageError
from porttrap.service import install as service
from porttrap.service.unit import CAPABILITIES
from porttrap.sshsession import parse_ssh_connection

Common = Callable[[argparse.ArgumentParser], None]

_INSTALL = f"""\
Install porttrap as the systemd service porttrap.service: writes
/etc/systemd/system/porttrap.service; writes a commented default config
/etc/porttrap/porttrap.toml unless one exists (an existing one is kept, and checked first:
an invalid one is refused with its errors; -c FILE installs FILE there instead); makes the
state directory /var/lib/porttrap; then, when systemd runs, `systemctl daemon-reload` and
`systemctl enable --now porttrap`. The unit runs the porttrap this command belongs to, as root
with only {" and ".join(CAPABILITIES)} (plus CAP_NET_RAW for the ipset backend), a read-only
file system except the paths the config writes to, and systemd's other protections. Run it
again (with --force) after changing state_dir, a log file, the hosts.deny file or the
firewall backend."""

_INSTALL_EXAMPLES = """\
examples:
  porttrap install-service                  install, enable and start it
  porttrap install-service -c new.toml      install new.toml as the config
  porttrap install-service --force          again, after a config path changed
  porttrap install-service --root /mnt/img --no-start   into an image, offline"""

_UNINSTALL = """\
Remove the systemd service and everything porttrap made: stops and disables porttrap.service,
removes the unit, porttrap's firewall (nftables table, or ipset sets and iptables chains: as
`porttrap flush`), its lines in hosts.deny, its state directory (database, control socket)
and /etc/porttrap. Files porttrap did not write are left where they are and named. Refuses
while a porttrap daemon started outside systemd still runs. The config read (for state_dir,
the table and hosts.deny) is /etc/porttrap/porttrap.toml, or -c FILE."""

_UNINSTALL_EXAMPLES = """\
examples:
  porttrap uninstall-service                  remove everything
  porttrap uninstall-service --keep-database  keep bans and hits for later"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Common) -> None:
    """The `install-service` and `uninstall-service` commands."""
    install = sub.add_parser(
        "install-service", help="install and start porttrap as a systemd service",
        description=_INSTALL, epilog=_INSTALL_EXAMPLES,
    )  # fmt: skip
    common(install)
    _root(install)
    install.add_argument(
        "--no-start", action="store_true", help="install and enable, but do not start it now"
    )
    install.add_argument(
        "--force",
        action="store_true",
        help="replace a unit (and, with -c, a config) that differs from the one to write",
    )
    install.add_argument(
        "--executable",
        type=Path,
        metavar="PATH",
        help="the porttrap the unit runs (absolute; default: this one, e.g. "
        "/opt/porttrap/venv/bin/porttrap)",
    )
    install.set_defaults(func=install_service)

    uninstall = sub.add_parser(
        "uninstall-service", help="remove the service, its firewall, state and config",
        description=_UNINSTALL, epilog=_UNINSTALL_EXAMPLES,
    )  # fmt: skip
    common(uninstall)
    _root(uninstall)
    uninstall.add_argument(
        "--keep-database",
        action="store_true",
        help="keep the database (state_dir/porttrap.db: bans and hits) for a later install",
    )
    uninstall.add_argument(
        "--keep-config", action="store_true", help="keep /etc/porttrap and its config"
    )
    uninstall.set_defaults(func=uninstall_service)


def _root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="work on the file system under DIR, offline, as systemctl --root does (default: "
        "/, this machine, with the running systemd); the firewall is always that of this "
        "network namespace",
    )


def install_service(args: argparse.Namespace) -> int:
    executable = args.executable if args.executable is not None else service.default_executable()
    request = service.InstallRequest(
        executable=executable,
        root=service.Root(_directory(args.root)),
        config=args.config,
        force=args.force,
        start=not args.no_start,
        session=parse_ssh_connection(os.environ.get("SSH_CONNECTION")),
    )
    try:
        service.install(request, service.Systemctl(), print)
    except ConfigError:
        print("porttrap: install-service: the config does not load; nothing was installed",
              file=sys.stderr)  # fmt: skip
        raise
    return 0


def uninstall_service(args: argparse.Namespace) -> int:
    request = service.UninstallRequest(
        root=service.Root(_directory(args.root)),
        config=args.config,
        keep_database=args.keep_database,
        keep_config=args.keep_config,
    )
    service.uninstall(request, service.Systemctl(), service.remove_firewall, print)
    return 0


def _directory(path: Path) -> Path:
    if not path.is_dir():
        raise UsageError(f"--root {path}: not a directory")
    return path.resolve()
