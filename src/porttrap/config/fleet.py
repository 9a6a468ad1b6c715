"""The `[fleet]` section: the PostgreSQL database through which hosts share their bans.

Without the section porttrap runs alone, as ever. `url` is a libpq URL without a password: the
configuration file is readable by more than root on many systems, so a password inside it is
refused, and `password_file` (root's alone, checked at start) holds it instead.
"""

from __future__ import annotations

import re
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import replace

from porttrap.config import fields
from porttrap.config.fields import Section
from porttrap.config.schema import Config, FleetConfig

KEYS = ("url", "password_file", "name", "publish", "accept")
EXAMPLE = '"postgresql://porttrap@db.example.net/porttrap?sslmode=verify-full"'
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # as porttrap.hosts.name checks
_SCHEMES = ("postgresql", "postgres")


def build_fleet(section: Section) -> FleetConfig:
    """The `[fleet]` section (a file without one: this host alone, no FleetConfig)."""
    section.check_keys(KEYS)
    url = section.need("url", parse_url)
    return FleetConfig(
        url=url or "",
        password_file=section.get("password_file", fields.absolute_path, None),
        name=section.get("name", host_name, None),
        publish=section.get("publish", fields.boolean, True),
        accept=section.get("accept", fields.boolean, True),
    )


def parse_url(value: object) -> str:
    """A postgresql:// URL with no password in it."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a PostgreSQL URL such as {EXAMPLE}, got {fields.show(value)}")
    url = value.strip()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"expected a URL starting postgresql://, such as {EXAMPLE}")
    query = urllib.parse.parse_qs(parts.query)
    if parts.password is not None or "password" in query:
        raise ValueError(
            "the URL holds a password, and this file is often readable by others: remove it "
            "from the URL and put it in a file only root can read, named by password_file"
        )
    return url


def host_name(value: object) -> str:
    if not isinstance(value, str) or not HOST_NAME.fullmatch(value):
        raise ValueError(
            f"expected a host name of letters, digits, '.', '_' and '-' (at most 63, starting "
            f'with a letter or digit), such as "web-1", got {fields.show(value)}'
        )
    return value


def tls_warning(url: str) -> str | None:
    """A warning when the connection is not verified TLS; None when it is (`verify-full`)."""
    mode = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("sslmode", ["prefer"])[-1]
    if mode == "verify-full":
        return None
    return (
        f"[fleet] url: sslmode={mode}: the connection to the database is not verified TLS, so "
        "whoever sits on the path can read the fleet's bans or inject their own; use "
        "sslmode=verify-full (and sslrootcert= for a private CA)"
    )


def named(config: Config, hostname: Callable[[], str] = socket.gethostname) -> Config:
    """`config` with the fleet's host name filled in when `name` is not set. ValueError when
    the host name cannot name a host of the fleet."""
    fleet = config.fleet
    if fleet is None or fleet.name is not None:
        return config
    return replace(config, fleet=replace(fleet, name=default_name(hostname())))


def default_name(hostname: str) -> str:
    """This host's name in the fleet when `name` is not set: the host name up to its first dot
    (`web-1.example.net` is `web-1`), as `hostname -s` prints it."""
    short = hostname.split(".", 1)[0]
    if not HOST_NAME.fullmatch(short):
        raise ValueError(
            f"the host name {fields.show(hostname)} cannot name this host in the fleet; "
            'set [fleet] name, such as name = "web-1"'
        )
    return short


__all__ = ["build_fleet", "default_name", "host_name", "named", "parse_url", "tls_warning"]
