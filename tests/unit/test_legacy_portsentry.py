"""`porttrap import portsentry`: real-format PortSentry 1.2 (Debian) and 2.x samples under
tests/data/legacy/portsentry, each with the expected config and notes beside it; the parsing
rules of both formats; and every generated config loads."""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path

import pytest

from porttrap.config.legacy import portsentry, tomlout
from porttrap.config.legacy.notes import Conversion, Note, SourceFile
from porttrap.config.legacy.portsentry_files import parse_conf, parse_defaults, parse_ignore
from porttrap.config.loader import load_text
from porttrap.config.schema import Event, Respond, TrapMode
from porttrap.model import Proto

DATA = Path(__file__).parent.parent / "data" / "legacy" / "portsentry"
SAMPLES = sorted(p.name for p in DATA.iterdir() if p.is_dir())


def compare(sample: Path, conversion: Conversion) -> None:
    """The config and the notes, with the sample's directory shown as DIR, as stored beside
    the sample (PORTTRAP_REGEN=1 rewrites them: review the diff)."""
    toml = conversion.toml.replace(str(sample), "DIR")
    notes = "".join(f"{note}\n" for note in conversion.notes).replace(str(sample), "DIR")
    expected_toml, expected_notes = sample / "expected.toml", sample / "expected-notes.txt"
    if os.environ.get("PORTTRAP_REGEN"):
        expected_toml.write_text(toml)
        expected_notes.write_text(notes)
    assert toml == expected_toml.read_text()
    assert notes == expected_notes.read_text()


@functools.cache
def imported(name: str) -> Conversion:
    sample = DATA / name
    return portsentry.convert(portsentry.read(sample, sample / "default"))


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_gives_the_expected_config_and_notes(name: str) -> None:
    compare(DATA / name, imported(name))


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_config_loads(name: str) -> None:
    load_text(imported(name).toml, None)


def test_debian_defaults_log_only_in_connect_mode() -> None:
    cfg = load_text(imported("debian-default").toml, None)
    assert (cfg.modes.tcp, cfg.modes.udp) == (TrapMode.CONNECT, TrapMode.CONNECT)
    assert (cfg.ban.respond_tcp, cfg.ban.respond_udp) == (Respond.LOG, Respond.LOG)
    assert {t.port for t in cfg.traps if t.proto is Proto.TCP} >= {1, 11, 31337, 54320}
    assert cfg.actions.hosts_deny is None  # BLOCK 0: PortSentry never wrote hosts.deny
    assert cfg.allow.networks == ()  # loopback, 0.0.0.0 and the host's own address: not needed


def test_seed_fr_advanced_modes_block_and_actions() -> None:
    cfg = load_text(imported("seed-fr").toml, None)
    assert (cfg.modes.tcp, cfg.modes.udp) == (TrapMode.ADVANCED, TrapMode.ADVANCED)
    assert cfg.modes.advanced_tcp == frozenset(range(1, 1024))  # below ADVANCED_PORTS_TCP
    assert cfg.modes.exclude_udp == frozenset({520, 138, 137, 67})
    assert cfg.ban.permanent_after == 1  # PortSentry's blocks never expired
    assert (cfg.ban.trigger, cfg.ban.confirm) == (2, 2)  # SCAN_TRIGGER="2": the second hit
    assert cfg.actions.hosts_deny is not None
    assert cfg.actions.hosts_deny.line == "ALL: $TARGET$ : DENY"
    assert not cfg.actions.hosts_deny.keep
    (command,) = cfg.actions.commands  # KILL_ROUTE (iptables) is replaced by porttrap's ban
    assert command.run == ("/etc/portsentry/scripts/notify.sh", "$TARGET$", "$PORT$", "$MODE$")
    assert not command.shell and not command.first  # KILL_RUN_CMD_FIRST="0": after the ban
    assert command.on == frozenset({Event.BAN, Event.PERMANENT_BAN})
    assert [str(n) for n in cfg.allow.networks] == ["203.0.113.209/32", "198.51.100.0/24"]
    assert cfg.banner == b""  # advanced TCP: no banner, in PortSentry either
    outputs = [(o.to, o.format.value, o.facility) for o in cfg.log.outputs]
    assert ("syslog", "portsentry", "daemon") in outputs  # attackalert lines where they were
    uncommented = imported("seed-fr").toml.replace("# [[log.output]]", "[[log.output]]")
    uncommented = uncommented.replace("# to = ", "to = ").replace("# format = ", "format = ")
    history = load_text(uncommented, None).log.outputs[-1]  # for fail2ban's [portsentry] jail
    assert (history.to, history.format.value) == (
        "/var/lib/portsentry/portsentry.history",
        "portsentry-history",
    )


def test_seed_de_stealth_wrong_case_and_shell_command() -> None:
    conversion = imported("seed-de")
    cfg = load_text(conversion.toml, None)
    assert (cfg.ban.respond_tcp, cfg.ban.respond_udp) == (Respond.BAN, Respond.COMMAND)
    assert not cfg.kernel.block  # UDP stealth must not ban: no first-packet block
    (command,) = cfg.actions.commands  # the first KILL_RUN_CMD: 1.2 takes the first
    assert command.shell and command.first
    assert command.run == ("/etc/portsentry/filtermgr -a $TARGET$ | logger -t portsentry",)
    keys = {(n.line, n.key) for n in conversion.notes}
    assert (7, "Block_TCP") in keys and (15, "KILL_RUN_CMD") in keys


def test_v2_ranges_connect_banner_and_ignore_rules() -> None:
    cfg = load_text(imported("v2").toml, None)
    tcp = {t.port for t in cfg.traps if t.proto is Proto.TCP}
    assert {512, 513, 514, 515, 543, 544} <= tcp
    assert cfg.banner.startswith(b"*** UNAUTHORIZED")
    assert cfg.ban.trigger == cfg.ban.confirm == 3
    assert [c.run[0] for c in cfg.actions.commands] == ["/usr/local/bin/alert"]
    assert cfg.actions.commands[0].first  # KILL_RUN_CMD_FIRST="1" with BLOCK_TCP="1"
    shown = [str(n) for n in cfg.allow.networks]
    assert shown == ["192.0.2.0/24", "198.51.100.7/32", "2001:db8:abcd::/48",
                     "2001:db8:ffff::1/128"]  # fmt: skip


def test_v2_without_defaults_assumes_stealth_and_carries_an_unknown_kill_route() -> None:
    sample = DATA / "v2-no-defaults"
    conversion = portsentry.convert(portsentry.read(sample, sample / "default"))
    cfg = load_text(conversion.toml, None)
    assert (cfg.modes.tcp, cfg.modes.udp) == (TrapMode.STEALTH, TrapMode.STEALTH)
    assert not cfg.kernel.block
    runs = [c.run for c in cfg.actions.commands]
    assert ("/usr/local/sbin/blackhole", "$TARGET$") in runs


# -- the file formats ------------------------------------------------------------------------


def conf(text: str) -> tuple[dict[str, str], list[Note]]:
    notes: list[Note] = []
    parsed = parse_conf(SourceFile("portsentry.conf", text), notes)
    return {k: s.value for k, s in parsed.settings.items()}, notes


def test_conf_values_end_at_the_next_quote_and_comments_need_column_one() -> None:
    values, notes = conf('TCP_PORTS="1,2" # trailing words\n  # indented\nRESOLVE_HOST = "0"\n'
                         'KILL_ROUTE="x $TARGET$"extra"\nSCAN_TRIGGER=2\n')  # fmt: skip
    assert values == {"TCP_PORTS": "1,2", "RESOLVE_HOST": "0", "KILL_ROUTE": "x $TARGET$"}
    assert [(n.line, n.key) for n in notes] == [(5, "SCAN_TRIGGER")]  # no quotes: skipped


def test_conf_repeated_key_first_wins_in_1_2_last_in_2() -> None:
    values, notes = conf('BLOCK_TCP="1"\nBLOCK_TCP="0"\n')
    assert values["BLOCK_TCP"] == "1" and notes[0].line == 2
    values, notes = conf('# Portsentry 2.0 Configuration\nBLOCK_TCP="1"\nBLOCK_TCP="0"\n')
    assert values["BLOCK_TCP"] == "0" and notes[0].line == 2


def test_defaults_file_is_read_as_shell() -> None:
    notes: list[Note] = []
    text = "TCP_MODE='atcp'  # advanced\nexport UDP_MODE=\nTCP_MODE=stcp\n"
    modes = parse_defaults(SourceFile("default", text), notes)
    assert (modes.tcp, modes.udp, modes.tcp_line) == ("stcp", "", 3)
    bad = parse_defaults(SourceFile("default", 'TCP_MODE="xtcp"\n'), notes)
    assert bad.tcp == "" and notes[-1].key == "TCP_MODE"


@pytest.mark.parametrize(
    ("entry", "network", "noted"),
    [
        ("192.0.2.7", "192.0.2.7/32", False),
        ("192.0.2.7/24", "192.0.2.0/24", True),  # host bits: PortSentry masked both sides
        ("198.51.100.0/0", "198.51.100.0/32", True),  # x86 ignored the 32-bit shift
        ("2001:db8::/32", "2001:db8::/32", False),
        ("0.0.0.0", None, True),
        ("127.0.0.1/32", None, True),
        ("::1", None, True),
        ("192.0.2.1/33", None, True),
        ("host.example.org", None, True),
    ],
)
def test_ignore_entries(entry: str, network: str | None, noted: bool) -> None:
    (item,) = parse_ignore(SourceFile("portsentry.ignore", f"# c\n\n{entry} # why\n"))
    assert (str(item.network) if item.network else None) == network
    assert bool(item.note) == noted
    assert item.line == 3


def test_missing_conf_is_an_error_that_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"portsentry\.conf not found"):
        portsentry.read(tmp_path, tmp_path / "default")


@pytest.mark.parametrize(
    "text", ["plain", 'a "quoted" word', "tab\tand\\back", "del\x7fchar", "ünïcode", "it's"]
)
def test_toml_strings_read_back_as_written(text: str) -> None:
    for rendered in (tomlout.string(text), tomlout.literal(text)):
        assert tomllib.loads(f"x = {rendered}\n")["x"] == text


def test_long_arrays_wrap_and_still_parse() -> None:
    items = [f"{port}" for port in range(1000, 1060)]
    rendered = tomlout.strings(items)
    assert max(len(line) for line in rendered.splitlines()) <= tomlout.WIDTH
    assert tomllib.loads(f"x = {rendered}\n")["x"] == items
