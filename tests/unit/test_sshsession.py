"""The SSH ports (config, sshd's, or 22) and what porttrap makes of the session a command runs
from: the decision `porttrap run` logs and `install-service` prints first."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any, NamedTuple

import psutil
import pytest

from porttrap.config.schema import AllowList
from porttrap.sshsession import (
    UNIT_VIEW,
    PortSource,
    SshConnection,
    SshPorts,
    admin_session,
    fields,
    parse_ssh_connection,
    sentence,
    ssh_ports,
    sshd_ports,
    unit_view,
)

SSHD_22 = SshPorts((22,), PortSource.SSHD)
NOBODY = AllowList()


def session(text: str = "203.0.113.5 50022 192.0.2.1 22") -> SshConnection:
    parsed = parse_ssh_connection(text)
    assert parsed is not None
    return parsed


# -- the SSH ports -------------------------------------------------------------------------------


def test_configured_ports_win_and_sshd_is_not_even_asked() -> None:
    def lookup() -> tuple[tuple[int, ...], str]:
        raise AssertionError("sshd looked up although ports are configured")

    assert ssh_ports((2222, 22), lookup) == SshPorts((2222, 22), PortSource.CONFIG)


def test_without_config_sshd_s_ports_then_22_with_the_reason() -> None:
    assert ssh_ports((), lambda: ((22, 2222), "")) == SshPorts((22, 2222), PortSource.SSHD)
    assert ssh_ports((), lambda: ((), "no process named sshd")) == SshPorts(
        (22,), PortSource.DEFAULT, "no process named sshd"
    )
    assert ssh_ports((), unit_view) == SshPorts((22,), PortSource.DEFAULT, UNIT_VIEW)


class Address(NamedTuple):
    ip: str
    port: int


class Connection(NamedTuple):
    laddr: Address
    status: str


class Process:
    """What sshd_ports reads of a psutil.Process: info["name"] and net_connections."""

    def __init__(self, name: str, connections: list[Connection] | Exception) -> None:
        self.info = {"name": name}
        self._connections = connections

    def net_connections(self, kind: str) -> list[Connection]:
        assert kind == "tcp"
        if isinstance(self._connections, Exception):
            raise self._connections
        return self._connections


def listening(port: int, status: str = psutil.CONN_LISTEN) -> Connection:
    return Connection(Address("0.0.0.0", port), status)


@pytest.mark.parametrize(
    ("processes", "found"),
    [
        ([Process("sshd", [listening(22), listening(22), listening(2222)])], ((22, 2222), "")),
        (
            [Process("sshd", [listening(22, psutil.CONN_ESTABLISHED)]), Process("nginx", [])],
            ((), "sshd listens on no TCP port"),
        ),
        (
            [Process("sshd", psutil.AccessDenied(1)), Process("sshd", psutil.NoSuchProcess(2))],
            ((), "sshd's sockets cannot be read (reading them needs CAP_SYS_PTRACE)"),
        ),
        (
            [Process("sshd-session", [listening(22)]), Process("nginx", [listening(80)])],
            ((), "no process named sshd (not running, invisible, or socket-activated)"),
        ),
        (  # one sshd readable, another not: what was read counts
            [Process("sshd", psutil.AccessDenied(1)), Process("sshd", [listening(2222)])],
            ((2222,), ""),
        ),
    ],
)
def test_sshd_ports_from_psutil(
    monkeypatch: pytest.MonkeyPatch, processes: list[Process], found: tuple[Any, str]
) -> None:
    monkeypatch.setattr(psutil, "process_iter", lambda attrs: iter(processes))
    assert sshd_ports() == found


# -- $SSH_CONNECTION -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("203.0.113.5 50022 192.0.2.1 22", ("203.0.113.5", 50022, "192.0.2.1", 22)),
        ("2001:db8::5 50022 2001:db8::1 2222", ("2001:db8::5", 50022, "2001:db8::1", 2222)),
        ("fe80::5%eth0 1 fe80::1%eth0 22", ("fe80::5", 1, "fe80::1", 22)),
        ("::ffff:203.0.113.5 9 ::ffff:192.0.2.1 22", ("203.0.113.5", 9, "192.0.2.1", 22)),
    ],
)
def test_ssh_connection_is_read(text: str, parsed: tuple[str, int, str, int]) -> None:
    peer, peer_port, server, server_port = parsed
    assert parse_ssh_connection(text) == SshConnection(
        ip_address(peer), peer_port, ip_address(server), server_port
    )


@pytest.mark.parametrize(
    "text",
    [None, "", "203.0.113.5 50022 192.0.2.1", "a b c d", "203.0.113.5 x 192.0.2.1 22",
     "203.0.113.5 1 192.0.2.1 0", "203.0.113.5 1 192.0.2.1 65536", "1 2 3 4 5"],
)  # fmt: skip
def test_an_unreadable_ssh_connection_is_none(text: str | None) -> None:
    assert parse_ssh_connection(text) is None


# -- the decision --------------------------------------------------------------------------------


def test_a_session_to_an_ssh_port_is_protected() -> None:
    result = admin_session(session(), SSHD_22, NOBODY)
    assert (result.peer, result.port, result.protected) == (ip_address("203.0.113.5"), 22, True)
    assert result.why == "live SSH session to port 22 (never banned by a trap hit)"
    assert fields(result, SSHD_22) == {
        "peer": ip_address("203.0.113.5"),
        "port": 22,
        "protected": "yes",
        "why": "live SSH session to port 22 (never banned by a trap hit)",
        "ssh_ports": "22",
        "source": PortSource.SSHD,
    }


def test_a_session_to_a_port_porttrap_does_not_know_is_not_protected_and_says_the_fix() -> None:
    ports = SshPorts((22,), PortSource.DEFAULT, UNIT_VIEW)
    result = admin_session(session("203.0.113.5 50022 192.0.2.1 2222"), ports, NOBODY)
    assert not result.protected
    assert result.why == (
        "port 2222 is not a known SSH port (SSH ports 22 from default: the service cannot read "
        "sshd's sockets (its sandbox has no CAP_SYS_PTRACE)), so a trap hit from 203.0.113.5 "
        "can ban it and end this session: add 2222 to [protect] ssh_ports, or 203.0.113.5 to "
        "[allow] addresses"
    )
    assert fields(result, ports)["protected"] == "no"
    assert sentence(result).startswith(
        "warning: admin session from 203.0.113.5 (port 2222) NOT protected: port 2222 is not"
    )


def test_the_allow_list_and_loopback_protect_whatever_the_port() -> None:
    other_port = session("203.0.113.5 50022 192.0.2.1 2222")
    listed = AllowList(networks=(ip_network("203.0.113.0/24"),))
    assert admin_session(other_port, SSHD_22, listed).why == (
        "on the allow list, [allow] (never banned)"
    )
    pattern = AllowList(patterns=(r"203\.0\.113\.\d+",))
    assert admin_session(other_port, SSHD_22, pattern).protected
    local = admin_session(session("::1 50022 ::1 2222"), SSHD_22, NOBODY)
    assert (local.protected, local.why) == (True, "loopback (never banned)")


def test_configured_ports_decide_even_when_22_is_the_session_s_port() -> None:
    configured = SshPorts((2222,), PortSource.CONFIG)
    assert not admin_session(session(), configured, NOBODY).protected
    assert sentence(admin_session(session(), SSHD_22, NOBODY)) == (
        "admin session from 203.0.113.5 (port 22): protected, live SSH session to port 22 "
        "(never banned by a trap hit)"
    )
