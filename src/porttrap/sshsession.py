"""The admin's SSH sessions: which TCP ports are the SSH ports, and what porttrap makes of the
session a command runs from.

The peer of a live SSH session to the host is never banned by a trap hit (the sessions sensor
follows them: `porttrap.sensors.sessions`), so that an admin who touches a trap from their
own machine is not locked out. Which sessions count depends on the SSH ports: `[protect]
ssh_ports` when set, else the ports a process named sshd listens on, else 22. Under porttrap's
systemd unit sshd's sockets are out of reach (reading another process's descriptors needs
CAP_SYS_PTRACE, and sshd makes itself undumpable), so there it is the config or 22.

`porttrap run` logs, and `porttrap install-service` prints, as their first line whether the
session they run from (`SSH_CONNECTION`) is protected: `admin_session` decides, purely. This
module is outside `porttrap.sensors` as the CLI uses it too, and the CLI never reaches the
sensors.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address

import psutil

from porttrap.config.schema import AllowList
from porttrap.model import IPAddress, unmap
from porttrap.policy.protect import Protection

DEFAULT_PORTS = (22,)
SSHD = "sshd"  # the listener's process name (per-session processes: sshd or sshd-session)
UNIT_VIEW = "the service cannot read sshd's sockets (its sandbox has no CAP_SYS_PTRACE)"

Lookup = Callable[[], tuple[tuple[int, ...], str]]  # sshd's ports, or () and why none


class PortSource(enum.StrEnum):
    CONFIG = "config"  # [protect] ssh_ports
    SSHD = "sshd"  # the ports a process named sshd listens on
    DEFAULT = "default"  # neither: 22


@dataclass(frozen=True, slots=True)
class SshPorts:
    """The SSH ports, where they come from, and, for the default, why sshd's were not used."""

    ports: tuple[int, ...]
    source: PortSource
    note: str | None = None

    @property
    def shown(self) -> str:
        """'22 2222', for the log."""
        return " ".join(str(port) for port in self.ports)


@dataclass(frozen=True, slots=True)
class SshConnection:
    """$SSH_CONNECTION: 'client_ip client_port server_ip server_port'."""

    peer: IPAddress
    peer_port: int
    server: IPAddress
    server_port: int


@dataclass(frozen=True, slots=True)
class AdminSession:
    """What porttrap makes of the session a command runs from."""

    peer: IPAddress
    port: int  # the server port: the SSH port the session came in on
    protected: bool
    why: str


# -- the SSH ports -------------------------------------------------------------------------------


def ssh_ports(configured: Sequence[int], lookup: Lookup | None = None) -> SshPorts:
    """The SSH ports: `configured` when not empty; else sshd's (`lookup`, by default
    `sshd_ports`); else 22, with why sshd's were not used."""
    if configured:
        return SshPorts(tuple(configured), PortSource.CONFIG)
    found, why = (lookup or sshd_ports)()
    if found:
        return SshPorts(found, PortSource.SSHD)
    return SshPorts(DEFAULT_PORTS, PortSource.DEFAULT, why)


def unit_view() -> tuple[tuple[int, ...], str]:
    """The lookup as porttrap's systemd unit sees it: sshd's sockets are out of reach."""
    return (), UNIT_VIEW


def sshd_ports() -> tuple[tuple[int, ...], str]:
    """The TCP ports processes named sshd listen on, sorted; or () and why none were found."""
    found: set[int] = set()
    named = denied = 0
    for process in psutil.process_iter(["name"]):
        if process.info.get("name") != SSHD:
            continue
        named += 1
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.AccessDenied:
            denied += 1
            continue
        except psutil.Error:  # gone meanwhile
            continue
        found.update(c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN)
    if found:
        return tuple(sorted(found)), ""
    return (), _none_found(named, denied)


def _none_found(named: int, denied: int) -> str:
    if not named:
        return "no process named sshd (not running, invisible, or socket-activated)"
    if denied:
        return "sshd's sockets cannot be read (reading them needs CAP_SYS_PTRACE)"
    return "sshd listens on no TCP port"


# -- the session a command runs from (pure) ------------------------------------------------------


def parse_ssh_connection(text: str | None) -> SshConnection | None:
    """$SSH_CONNECTION's four fields; None when unset or unreadable. IPv6 scopes are dropped
    and IPv4-mapped addresses unmapped, as the sensors report them."""
    parts = (text or "").split()
    if len(parts) != 4:
        return None
    try:
        peer, server = (unmap(ip_address(parts[n].split("%", 1)[0])) for n in (0, 2))
        peer_port, server_port = int(parts[1]), int(parts[3])
    except ValueError:
        return None
    if not (0 < peer_port < 65536 and 0 < server_port < 65536):
        return None
    return SshConnection(peer, peer_port, server, server_port)


def admin_session(session: SshConnection, ports: SshPorts, allow: AllowList) -> AdminSession:
    """Whether the peer of `session` is protected from bans while porttrap runs, and why."""
    peer, port = session.peer, session.server_port
    if peer.is_loopback:
        return AdminSession(peer, port, True, "loopback (never banned)")
    if Protection(allow.networks, patterns=allow.patterns).allowed(peer):
        return AdminSession(peer, port, True, "on the allow list, [allow] (never banned)")
    if port in ports.ports:
        why = f"live SSH session to port {port} (never banned by a trap hit)"
        return AdminSession(peer, port, True, why)
    return AdminSession(peer, port, False, _unprotected(peer, port, ports))


def _unprotected(peer: IPAddress, port: int, ports: SshPorts) -> str:
    known = f"SSH ports {ports.shown} from {ports.source}"
    if ports.note:
        known += f": {ports.note}"
    return (
        f"port {port} is not a known SSH port ({known}), so a trap hit from {peer} can ban "
        f"it and end this session: add {port} to [protect] ssh_ports, or {peer} to [allow] "
        "addresses"
    )


def fields(result: AdminSession, ports: SshPorts) -> dict[str, object]:
    """The admin-session log event's fields."""
    return {
        "peer": result.peer,
        "port": result.port,
        "protected": "yes" if result.protected else "no",
        "why": result.why,
        "ssh_ports": ports.shown,
        "source": ports.source,
    }


def sentence(result: AdminSession) -> str:
    """The line `install-service` prints."""
    if result.protected:
        return f"admin session from {result.peer} (port {result.port}): protected, {result.why}"
    return f"warning: admin session from {result.peer} (port {result.port}) NOT protected: " + (
        result.why
    )
