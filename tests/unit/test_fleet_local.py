"""The fleet's local parts: the `[fleet]` section, the password file, the outbox on disk."""

from __future__ import annotations

import os
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from porttrap.config.fleet import named, tls_warning
from porttrap.config.loader import load_text
from porttrap.core import reload
from porttrap.errors import ConfigError, PorttrapError
from porttrap.fleet.credentials import read_password
from porttrap.fleet.outbox import Outbox, outgoing
from porttrap.model import Ban, Evidence, FleetKind, Unban

URL = "postgresql://porttrap@db.example.net/porttrap?sslmode=verify-full"
T0 = 1_800_000_000.0


def fleet(text: str) -> str:
    return '[traps]\ntcp = ["23"]\n[fleet]\n' + text


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_text(fleet(text), None)
    return [str(p) for p in err.value.problems]


def test_the_section_is_read_with_its_defaults_and_absent_means_alone() -> None:
    cfg = load_text(fleet(f'url = "{URL}"\n'), None)
    assert cfg.fleet is not None
    assert (cfg.fleet.url, cfg.fleet.name, cfg.fleet.publish, cfg.fleet.accept) == (
        URL, None, True, True)  # fmt: skip
    assert load_text('[traps]\ntcp = ["23"]\n', None).fleet is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", '[fleet.url] missing "url"'),
        ('url = "mysql://db/x"\n', "starting postgresql://"),
        ('url = "postgresql://u:secret@db/x"\n', "holds a password"),
        ('url = "postgresql://db/x?password=secret"\n', "holds a password"),
        (f'url = "{URL}"\nname = "web 1"\n', "[fleet.name] expected a host name"),
        (f'url = "{URL}"\nname = "-web"\n', "[fleet.name] expected a host name"),
        (f'url = "{URL}"\npublish = "yes"\n', "[fleet.publish]"),
        (f'url = "{URL}"\npassword_file = "relative"\n', "[fleet.password_file]"),
        (f'url = "{URL}"\nurls = "x"\n', "[fleet.urls]"),
    ],
)
def test_a_bad_section_is_refused_naming_the_key(text: str, expected: str) -> None:
    assert any(expected in p for p in problems(text)), problems(text)


def test_the_name_defaults_to_the_host_name_up_to_its_first_dot() -> None:
    cfg = load_text(fleet(f'url = "{URL}"\n'), None)
    filled = named(cfg, lambda: "web-1.example.net")
    assert filled.fleet is not None and filled.fleet.name == "web-1"
    given = load_text(fleet(f'url = "{URL}"\nname = "edge"\n'), None)
    assert named(given, lambda: "other") == given
    with pytest.raises(ValueError, match="set \\[fleet\\] name"):
        named(cfg, lambda: "_bad_")


def test_a_connection_that_is_not_verified_tls_is_warned_of() -> None:
    assert tls_warning(URL) is None
    for url in ("postgresql://db/x", "postgresql://db/x?sslmode=require"):
        warning = tls_warning(url)
        assert warning is not None and "sslmode=verify-full" in warning


def test_a_changed_fleet_section_needs_a_restart() -> None:
    old = load_text(fleet(f'url = "{URL}"\nname = "a"\n'), None)
    assert old.fleet is not None
    new = replace(old, fleet=replace(old.fleet, name="b"))
    assert any("[fleet]" in why for why in reload.needs_restart(old, new))
    assert reload.needs_restart(old, old) == []


# -- the password file ------------------------------------------------------------------------


def test_the_password_is_the_first_line_of_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("s3cret\nignored\n")
    path.chmod(0o600)
    assert read_password(path) == "s3cret"


@pytest.mark.parametrize(("mode", "content", "expected"), [
    (0o640, "x\n", "chmod 600"),
    (0o604, "x\n", "can be read or changed by others"),
    (0o600, "\n", "its first line is empty"),
])  # fmt: skip
def test_a_password_file_others_can_read_or_an_empty_one_is_refused(
    tmp_path: Path, mode: int, content: str, expected: str
) -> None:
    path = tmp_path / "pw"
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(PorttrapError, match=expected):
        read_password(path)


def test_a_password_file_that_is_a_link_or_missing_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("x\n")
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(PorttrapError, match="password_file"):
        read_password(link)
    with pytest.raises(PorttrapError, match="No such file"):
        read_password(tmp_path / "missing")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(PorttrapError, match="not a regular file"):
        read_password(fifo)


# -- the outbox -------------------------------------------------------------------------------


def bans() -> list[Ban]:
    return [
        Ban(ip_network("198.51.100.7/32"), T0, T0 + 60, 1, "trap:tcp/23"),
        Ban(ip_network("2001:db8::/64"), T0, None, 3, "manual", Evidence.VERIFIED),
    ]


def test_rows_keep_their_order_survive_a_reopen_and_go_once_published(tmp_path: Path) -> None:
    unban = Unban(ip_network("198.51.100.7/32"), T0 + 1, "manual")
    rows = outgoing([*bans(), unban], frozenset())
    box = Outbox(tmp_path)
    box.add(rows[:2])
    box.add(rows[2:])
    box.set_position(41)
    box.close()
    box = Outbox(tmp_path)  # a restart (or a crash: WAL holds every committed add)
    assert (tmp_path / "fleet-outbox.db").stat().st_mode & 0o777 == 0o600
    pending = box.pending(10)
    assert [r for _, r in pending] == rows
    assert box.position() == 41
    box.published(pending[1][0])
    assert [r for _, r in box.pending(10)] == rows[2:]
    assert box.count() == 1
    box.close()


def test_a_decision_always_has_the_same_id_and_fleet_wide_unbans_their_kind() -> None:
    first, again = outgoing(bans(), frozenset()), outgoing(bans(), frozenset())
    assert [r.ban_id for r in first] == [r.ban_id for r in again]
    assert len({r.ban_id for r in first}) == 2
    target = ip_network("198.51.100.7/32")
    (wide,) = outgoing([Unban(target, T0, "manual, on every host")], frozenset({target}))
    (own,) = outgoing([Unban(target, T0, "manual")], frozenset())
    assert (wide.kind, own.kind) == (FleetKind.UNBAN_FLEET, FleetKind.UNBAN)
    assert first[1].expires_at is None and first[1].ban_count == 3


def test_two_decisions_at_the_same_instant_have_two_ids() -> None:
    """A store keeps both (the newer replaces the older): the log must not drop the second as
    a duplicate of the first."""
    first, second = bans()[0], replace(bans()[0], ban_count=2, expires_at=T0 + 120)
    ids = [r.ban_id for r in outgoing([first, second], frozenset())]
    target = first.target
    unbans = [Unban(target, T0 + 1, "manual"), Unban(target, T0 + 1, "allow-listed")]
    ids += [r.ban_id for r in outgoing(unbans, frozenset())]
    assert len(set(ids)) == 4


def test_an_unban_row_carries_its_time_and_reason_for_the_fleets_history() -> None:
    unban = Unban(ip_network("198.51.100.7/32"), T0 + 1, "allow-listed")
    (row,) = outgoing([unban], frozenset())
    assert (row.kind, row.banned_at, row.reason, row.expires_at) == (
        FleetKind.UNBAN, T0 + 1, "allow-listed", None)  # fmt: skip
