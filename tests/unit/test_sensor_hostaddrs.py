"""The host's addresses as psutil reports them; the watcher itself is tested in a namespace."""

from __future__ import annotations

import ipaddress
import socket
from typing import NamedTuple

import psutil
import pytest

from porttrap.sensors.hostaddrs import current_addresses

AF_PACKET = 17


class _Entry(NamedTuple):
    """The fields of psutil's snicaddr that matter here."""

    family: int
    address: str


def _entry(family: int, address: str) -> _Entry:
    return _Entry(family, address)


def test_current_addresses_keeps_ip_addresses_and_strips_scopes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    interfaces = {
        "lo": [_entry(socket.AF_INET, "127.0.0.1"), _entry(socket.AF_INET6, "::1")],
        "eth0": [
            _entry(AF_PACKET, "52:54:00:12:34:56"),
            _entry(socket.AF_INET, "192.0.2.10"),
            _entry(socket.AF_INET, "192.0.2.11"),
            _entry(socket.AF_INET6, "2001:db8::10"),
            _entry(socket.AF_INET6, "fe80::5054:ff:fe12:3456%eth0"),
        ],
    }
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: interfaces)
    assert current_addresses() == frozenset(
        ipaddress.ip_address(text)
        for text in (
            "127.0.0.1",
            "::1",
            "192.0.2.10",
            "192.0.2.11",
            "2001:db8::10",
            "fe80::5054:ff:fe12:3456",
        )
    )


def test_current_addresses_on_this_host_include_loopback() -> None:
    assert ipaddress.ip_address("127.0.0.1") in current_addresses()
