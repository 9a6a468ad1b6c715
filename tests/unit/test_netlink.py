"""The netlink envelope shared by the sensors and the firewall's reads (porttrap/netlink.py)."""

from __future__ import annotations

import errno

from porttrap import netlink


def test_an_errno_reads_as_its_name_and_its_text() -> None:
    assert netlink.errno_text(errno.ENOENT) == "ENOENT (No such file or directory)"
    assert netlink.errno_text(errno.EBUSY) == "EBUSY (Device or resource busy)"


def test_an_errno_without_a_name_stays_a_number() -> None:
    assert netlink.errno_text(4095) == "errno 4095 (Unknown error 4095)"
