"""IPv4-mapped IPv6 addresses (`::ffff:192.0.2.88`, as `ss` and dual-stack sockets show an IPv4
peer) are the IPv4 address they name, wherever an address enters: the kernel sees that host's
packets as IPv4, so a mapped ban or allow-list entry would match nothing (issue 13)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from porttrap.config.loader import load_text
from porttrap.config.schema import BanPolicy
from porttrap.core import requests
from porttrap.errors import ConfigError
from porttrap.model import Ban, parse_target, unmap_network
from porttrap.policy import Policy, Protection
from porttrap.store.sqlite import SQLiteStore

T0 = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("::ffff:192.0.2.88", "192.0.2.88/32"),
        ("::FFFF:c000:258", "192.0.2.88/32"),
        ("0:0:0:0:0:ffff:192.0.2.88", "192.0.2.88/32"),
        ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
        ("2001:db8::88", "2001:db8::88/128"),
        ("::192.0.2.88", "::c000:258/128"),  # IPv4-compatible (deprecated): not mapped
        ("::fffe:c000:258", "::fffe:c000:258/128"),
        ("::/0", "::/0"),
    ],
)
def test_an_ipv4_mapped_target_is_the_ipv4_address(text: str, meant: str) -> None:
    assert parse_target(text) == ip_network(meant)
    assert unmap_network(ip_network(text)) == ip_network(meant)


@pytest.mark.parametrize("text", ["::ffff:0:0/96", "::ffff:192.0.0.0/100"])
def test_a_mapped_network_wider_than_an_ipv4_slash_8_is_refused_as_written(text: str) -> None:
    """::ffff:0:0/96 in the allow list would allow every IPv4 source, without a word."""
    with pytest.raises(ValueError, match=r"write (0\.0\.0\.0/0|192\.0\.0\.0/4) if that is meant"):
        parse_target(text)
    with pytest.raises(ConfigError, match="IPv4-mapped network"):
        load_text(f'[allow]\naddresses = ["{text}"]', None)
    assert parse_target("::ffff:10.0.0.0/104") == ip_network("10.0.0.0/8")


def test_an_ipv4_mapped_address_in_the_config_is_the_ipv4_address() -> None:
    cfg = load_text(
        '[allow]\naddresses = ["::ffff:192.0.2.88", "::ffff:198.51.100.0/120"]\n'
        '[[traps.port]]\nport = "9090"\nproto = "tcp"\naddress = "::ffff:192.0.2.1"\n',
        None,
    )
    assert cfg.allow.networks == (ip_network("192.0.2.88/32"), ip_network("198.51.100.0/24"))
    (trap,) = [t for t in cfg.traps if t.port == 9090]
    assert trap.address == ip_address("192.0.2.1")


def test_an_allowed_ipv4_mapped_address_protects_the_ipv4_host() -> None:
    cfg = load_text('[allow]\naddresses = ["::ffff:192.0.2.88"]\n', None)
    protection = Protection(list(cfg.allow.networks))
    assert protection.conflict(ip_network("192.0.2.88/32")) is not None


def test_a_mapped_target_on_the_control_socket_is_the_ipv4_address() -> None:
    v4 = (ip_network("198.51.100.7/32"),)
    assert requests.ban({"targets": ["::ffff:198.51.100.7"]}).targets == v4
    assert requests.unban({"targets": ["::ffff:198.51.100.7"]}).targets == v4


def plant(db: Path, target: str) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO bans (target, banned_at, expires_at, ban_count, reason) "
            "VALUES (?, ?, NULL, 1, 'manual')",
            (target, T0),
        )


def test_an_ipv4_mapped_target_in_a_row_is_read_as_ipv4(tmp_path: Path) -> None:
    with SQLiteStore.open(tmp_path / "porttrap.db") as store:
        plant(tmp_path / "porttrap.db", "::ffff:c000:258")
        (ban,) = store.active_bans(T0)
    assert ban.target == ip_network("192.0.2.88/32")


def test_a_mapped_remote_ban_is_held_as_ipv4() -> None:
    policy = Policy(BanPolicy(), (), Protection([]))
    mapped = Ban(ip_network("::ffff:198.51.100.8"), T0, T0 + 3600, 1, "trap:tcp/23")
    held = policy.adopt(mapped, T0)
    assert isinstance(held, Ban) and held.target == ip_network("198.51.100.8/32")
