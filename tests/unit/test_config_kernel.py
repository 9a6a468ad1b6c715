"""The config keys of stealth and advanced modes: `[traps] mode`, `[traps.advanced]`, `[kernel]`
and `[ban] confirm`. Their recorded sample (every problem at once) is modes-kernel-errors.toml,
checked with the others in test_config.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from porttrap.config.loader import load_text
from porttrap.config.schema import (
    ADVANCED_HOLD,
    BanPolicy,
    Config,
    KernelSensor,
    Modes,
    TrapMode,
)
from porttrap.errors import ConfigError

CONNECT, STEALTH, ADVANCED = TrapMode.CONNECT, TrapMode.STEALTH, TrapMode.ADVANCED
ALL_PORTS = frozenset(range(1, 65536))


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, Path("t.toml"))
    return [str(problem) for problem in caught.value.problems]


def modes_of(text: str) -> Modes:
    return load_text(text, None).modes


def kernel_of(text: str) -> KernelSensor:
    return load_text(f"[kernel]\n{text}\n", None).kernel


# --- defaults ---


def test_no_new_keys_gives_the_schema_defaults() -> None:
    config = load_text("[traps]\n[kernel]\n[ban]\n", None)
    built_in = Modes(tcp=ADVANCED, udp=ADVANCED)
    kernel = KernelSensor(hold=ADVANCED_HOLD)  # on by default in advanced mode
    assert (config.modes, config.kernel, config.ban.confirm) == (built_in, kernel, 2)
    assert config.modes == Modes(
        tcp=ADVANCED,
        udp=ADVANCED,
        advanced_tcp=ALL_PORTS,
        advanced_udp=ALL_PORTS,
        exclude_tcp=frozenset({113, 139}),
        exclude_udp=frozenset({67, 137, 138, 520}),
    )
    assert load_text("", None) == Config(traps=config.traps, modes=built_in, kernel=kernel)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ADVANCED),  # nothing said: advanced, where a scanner sees no service
        ('[traps]\ntcp = ["23"]\n', CONNECT),  # listed ports, which advanced mode ignores
        ("[traps]\nudp = []\n", CONNECT),
        ('[[traps.port]]\nport = 23\nproto = "tcp"\n', CONNECT),
        ('[firewall]\nbackend = "ipset"\n', CONNECT),  # it runs connect mode only
        ('[firewall]\nbackend = "auto"\n', CONNECT),  # it may be ipset
        ('[firewall]\nbackend = "dry-run"\n', CONNECT),
    ],
)
def test_the_built_in_mode_is_advanced_where_it_can_be_and_reads_what_is_written(
    text: str, expected: TrapMode
) -> None:
    modes = load_text(text, None).modes
    assert (modes.tcp, modes.udp) == (expected, expected)


# --- [traps] mode ---


@pytest.mark.parametrize("mode", list(TrapMode))
def test_mode_as_a_string_applies_to_both_protocols(mode: TrapMode) -> None:
    modes = modes_of(f'[traps]\nmode = "{mode.value}"\n')
    assert (modes.tcp, modes.udp) == (mode, mode)


def test_mode_as_an_inline_table_sets_each_protocol() -> None:
    modes = modes_of('[traps]\nmode = { tcp = "advanced", udp = "stealth" }\n')
    assert (modes.tcp, modes.udp) == (ADVANCED, STEALTH)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('{ tcp = "stealth" }', (STEALTH, CONNECT)),
        ('{ udp = "advanced" }', (CONNECT, ADVANCED)),
        ("{}", (CONNECT, CONNECT)),
    ],
)
def test_a_protocol_missing_from_the_table_keeps_the_built_in_mode(
    written: str, expected: tuple[TrapMode, TrapMode]
) -> None:
    modes = modes_of(f"[traps]\nmode = {written}\ntcp = []\n")  # listed ports: connect
    assert (modes.tcp, modes.udp) == expected


def test_mode_as_a_table_or_dotted_keys() -> None:
    assert modes_of('[traps.mode]\nudp = "stealth"\n').udp is STEALTH
    assert modes_of('traps.mode.tcp = "stealth"\n').tcp is STEALTH


def test_mode_keeps_the_trap_lists() -> None:
    plain = load_text("[traps]\ntcp = [23]\nudp = []\n", None).traps
    assert load_text('[traps]\ntcp = [23]\nudp = []\nmode = "stealth"\n', None).traps == plain


def test_a_misspelled_mode_suggests_the_right_one() -> None:
    assert problems_of('[traps]\nmode = "Stealth"\n') == [
        't.toml:2: [traps.mode] expected one of "connect", "stealth", "advanced", got "Stealth"; '
        'did you mean "stealth"?'
    ]


@pytest.mark.parametrize("written", ["1", "true", '["stealth"]'])
def test_a_mode_of_another_type_shows_both_forms(written: str) -> None:
    (problem,) = problems_of(f"[traps]\nudp = []\n\nmode = {written}\n")
    assert problem.startswith(
        't.toml:4: [traps.mode] expected one of "connect", "stealth", "advanced", '
        'or a table such as { tcp = "stealth", udp = "connect" }, got '
    )


def test_bad_values_and_unknown_keys_in_the_mode_table() -> None:
    assert problems_of('[traps]\nmode = { tcp = 2, udp = "passive", tpc = "advanced" }\n') == [
        't.toml:2: [traps.mode.tpc] unknown key "tpc"; did you mean "tcp"?',
        't.toml:2: [traps.mode.tcp] expected one of "connect", "stealth", "advanced", got 2',
        't.toml:2: [traps.mode.udp] expected one of "connect", "stealth", "advanced", '
        'got "passive"',
    ]


def test_bad_values_in_a_mode_table_are_placed_on_their_lines() -> None:
    assert problems_of('[traps.mode]\ntcp = "stealth"\nudp = "Advanced"\nicmp = "stealth"\n') == [
        't.toml:3: [traps.mode.udp] expected one of "connect", "stealth", "advanced", '
        'got "Advanced"; did you mean "advanced"?',
        't.toml:4: [traps.mode.icmp] unknown key "icmp"; expected one of: tcp, udp',
    ]


# --- [traps.advanced] ---


def test_advanced_ranges_and_exclusions_expand_like_trap_lists() -> None:
    text = """
[traps]
mode = "advanced"
[traps.advanced]
tcp = ["1-1023", 8080, " 9000 - 9001 "]
udp = ["1-1023"]
exclude_tcp = [22, "80"]
exclude_udp = []
"""
    modes = modes_of(text)
    assert modes.advanced_tcp == frozenset({*range(1, 1024), 8080, 9000, 9001})
    assert modes.advanced_udp == frozenset(range(1, 1024))
    assert (modes.exclude_tcp, modes.exclude_udp) == (frozenset({22, 80}), frozenset())


def test_a_missing_advanced_key_keeps_its_default() -> None:
    modes = modes_of('[traps]\nmode = "advanced"\n[traps.advanced]\nudp = ["53"]\n')
    assert (modes.advanced_tcp, modes.advanced_udp) == (ALL_PORTS, frozenset({53}))
    assert (modes.exclude_tcp, modes.exclude_udp) == (Modes().exclude_tcp, Modes().exclude_udp)


def test_advanced_ranges_are_kept_while_no_protocol_is_advanced() -> None:
    modes = modes_of('[traps]\nmode = "stealth"\n[traps.advanced]\ntcp = []\nudp = ["7"]\n')
    assert (modes.advanced_tcp, modes.advanced_udp) == (frozenset(), frozenset({7}))


def test_an_empty_range_of_the_other_protocol_is_fine() -> None:
    text = '[traps]\nmode = { tcp = "advanced", udp = "connect" }\n[traps.advanced]\nudp = []\n'
    assert modes_of(text).advanced_udp == frozenset()


def test_an_empty_range_in_advanced_mode_watches_nothing() -> None:
    text = '[traps]\nmode = { udp = "advanced" }\n\n[traps.advanced]\nudp = []\n'
    assert problems_of(text) == [
        't.toml:5: [traps.advanced.udp] udp is in "advanced" mode, but an empty list leaves '
        'nothing to watch; list ports such as ["1-65535"], or set another mode for udp'
    ]


def test_a_range_all_excluded_in_advanced_mode_watches_nothing() -> None:
    text = '[traps]\nmode = "advanced"\n[traps.advanced]\ntcp = ["113"]\n'
    assert problems_of(text) == [
        't.toml:4: [traps.advanced.tcp] tcp is in "advanced" mode, but every port of tcp is also '
        "in exclude_tcp, which leaves nothing to watch; remove some from exclude_tcp, or set "
        "another mode for tcp"
    ]


def test_an_invalid_range_is_not_also_reported_as_empty() -> None:
    text = '[traps]\nmode = "advanced"\n[traps.advanced]\ntcp = ["ssh"]\nexclude_udp = "67"\n'
    assert problems_of(text) == [
        "t.toml:4: [traps.advanced.tcp[0]] expected a port 1-65535 such as 23 or a range such as "
        '"5900-5910", got "ssh"',
        't.toml:5: [traps.advanced.exclude_udp] expected a list such as ["1-65535"], got "67"',
    ]


def test_advanced_must_be_a_table_and_its_keys_known() -> None:
    assert problems_of('[traps]\nadvanced = "all"\n') == [
        't.toml:2: [traps.advanced] expected a table such as [traps.advanced], got "all"'
    ]
    assert problems_of("[traps.advanced]\nexclude_tpc = [113]\n") == [
        't.toml:2: [traps.advanced.exclude_tpc] unknown key "exclude_tpc"; '
        'did you mean "exclude_tcp"?'
    ]


# --- [kernel] ---


def test_kernel_values_are_read() -> None:
    text = """
nflog_group = 0
block = false
block_time = "5m"
block_size = 1024
client_time = "1d"
client_size = 16777216
client_trap_port = 4444
quiet = false
event_rate = 1
source_rate = 1
queue = 100
"""
    assert kernel_of(text) == KernelSensor(
        nflog_group=0,
        block=False,
        block_time=300.0,
        block_size=1024,
        client_time=86400.0,
        client_size=16_777_216,
        client_trap_port=4444,
        quiet=False,
        event_rate=1,
        source_rate=1,
        queue=100,
        hold=ADVANCED_HOLD,
    )


def test_a_missing_kernel_key_keeps_its_default() -> None:
    assert kernel_of("nflog_group = 65535\n") == KernelSensor(nflog_group=65535, hold=ADVANCED_HOLD)


@pytest.mark.parametrize(
    ("mode", "hold"), [("advanced", ADVANCED_HOLD), ("stealth", 0.0), ("connect", 0.0)]
)
def test_the_hold_is_on_by_default_in_advanced_mode_only(mode: str, hold: float) -> None:
    assert load_text(f'[traps]\nmode = "{mode}"\n', None).kernel.hold == hold
    written = f'[traps]\nmode = "{mode}"\n[kernel]\nhold = "0"\n'
    assert load_text(written, None).kernel.hold == 0.0  # turned off where it is on by default


@pytest.mark.parametrize("written", ["0", '"0s"', '"0m0s"'])
def test_client_time_zero_turns_the_exemption_off(written: str) -> None:
    assert kernel_of(f"client_time = {written}").client_time == 0.0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("nflog_group = -1", "expected a whole number from 0 to 65535, got -1"),
        ("nflog_group = 65536", "expected a whole number from 0 to 65535, got 65536"),
        ('nflog_group = "7022"', 'expected a whole number from 0 to 65535, got "7022"'),
        ("block = 0", "expected true or false, got 0"),
        ('block = "no"', 'expected true or false, got "no"'),
        ('quiet = "False"', 'expected true or false without quotes, got "False"; write false'),
        ("block_time = 0", "a duration must be more than zero, got 0"),
        ('block_time = "0s"', 'a duration must be more than zero, got "0s"'),
        (
            'block_time = "soon"',
            'expected a duration such as 30s, 10m, 1h, 1d, 1w, got "soon"',
        ),
        ("client_time = -60", "a duration cannot be negative, got -60; write 0 for none"),
        (
            'client_time = "-1h"',
            'expected a duration such as 30s, 10m, 1h, 1d, 1w, got "-1h"',
        ),
        ("client_time = true", "expected a duration such as 30s, 10m, 1h, 1d, 1w, got true"),
        ("block_size = 1023", "expected a whole number from 1024 to 16777216, got 1023"),
        ("client_size = 16777217", "expected a whole number from 1024 to 16777216, got 16777217"),
        ("client_size = 65536.0", "expected a whole number from 1024 to 16777216, got 65536.0"),
        ("event_rate = 0", "expected a whole number of at least 1, got 0"),
        ("source_rate = true", "expected a whole number of at least 1, got true"),
        ("queue = 99", "expected a whole number of at least 100, got 99"),
        ("client_trap_port = 65536", "expected a whole number from 0 to 65535, got 65536"),
        ('client_trap_port = "65023"', 'expected a whole number from 0 to 65535, got "65023"'),
    ],
)
def test_bad_kernel_values(line: str, message: str) -> None:
    key = line.split(" ", 1)[0]
    assert problems_of(f"[kernel]\n\n{line}\n") == [f"t.toml:3: [kernel.{key}] {message}"]


def test_client_trap_port_defaults_to_65023_and_0_turns_the_redirect_off() -> None:
    assert KernelSensor().client_trap_port == 65023
    assert kernel_of("client_trap_port = 0").client_trap_port == 0


def test_the_catch_all_port_cannot_be_a_stealth_tcp_trap() -> None:
    text = '[traps]\nmode = "stealth"\ntcp = ["23", "65000-65100"]\n'
    assert problems_of(text) == [
        "t.toml: [kernel.client_trap_port] TCP port 65023 is a trap, but it is also [kernel] "
        "client_trap_port, where porttrap takes the handshakes of recent clients to TCP traps: "
        "remove the trap, or set client_trap_port to a port nothing else uses (0 turns the "
        "redirect off)"
    ]
    placed = problems_of(text + "[kernel]\nclient_trap_port = 65050\n")
    assert [p.split(" [")[0] for p in placed] == ["t.toml:5:"]
    assert load_text(text + "[kernel]\nclient_trap_port = 0\n", None).kernel.client_trap_port == 0


@pytest.mark.parametrize(
    "traps",
    [
        '[traps]\nmode = "advanced"\n',  # advanced mode leaves it out by itself
        '[traps]\nmode = { udp = "stealth" }\ntcp = ["65023"]\n',  # TCP traps are sockets
        '[traps]\nmode = "stealth"\nudp = ["65023"]\n',  # a UDP trap
    ],
)
def test_the_catch_all_port_may_be_elsewhere(traps: str) -> None:
    assert load_text(traps, None).kernel.client_trap_port == 65023


def test_kernel_must_be_a_table_and_its_keys_known() -> None:
    assert problems_of('kernel = "on"\n') == [
        't.toml:1: [kernel] expected a table such as [kernel], got "on"'
    ]
    assert problems_of("[kernel]\nblocktime = 60\ngroup = 1\nsize = 1\n") == [
        't.toml:2: [kernel.blocktime] unknown key "blocktime"; did you mean "block_time"?',
        't.toml:3: [kernel.group] unknown key "group"; did you mean "nflog_group"?',
        't.toml:4: [kernel.size] unknown key "size"; expected one of: nflog_group, block, '
        "block_time, block_size, client_time, client_size, client_trap_port, quiet, event_rate, "
        "source_rate, queue, hold, hold_memory, hold_queue, hold_rate",
    ]


def test_kernel_is_a_known_top_level_key() -> None:
    assert problems_of("[kernal]\n") == [
        't.toml:1: [kernal] unknown key "kernal"; did you mean "kernel"?'
    ]


# --- [ban] confirm ---


@pytest.mark.parametrize("confirm", [1, 2, 10])
def test_confirm_is_read(confirm: int) -> None:
    ban = load_text(f"[ban]\nconfirm = {confirm}\n", None).ban
    assert ban == BanPolicy(confirm=confirm)


@pytest.mark.parametrize(("written", "shown"), [("0", "0"), ("-2", "-2"), ('"2"', '"2"')])
def test_bad_confirm(written: str, shown: str) -> None:
    assert problems_of(f"[ban]\ntime = 60\nconfirm = {written}\n") == [
        f"t.toml:3: [ban.confirm] expected a whole number of at least 1, got {shown}"
    ]
