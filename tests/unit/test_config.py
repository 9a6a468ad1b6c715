"""The TOML config loader: recorded samples with their expected problems, and the semantics."""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

import porttrap.config.loader
from porttrap.config.loader import load, load_text
from porttrap.config.locate import line_of, locate
from porttrap.config.schema import (
    ADVANCED_HOLD,
    AllowList,
    BanPolicy,
    Config,
    Escalation,
    FirewallConfig,
    KernelSensor,
    Modes,
    StoreConfig,
    Trap,
    TrapMode,
)
from porttrap.config.traps import default_ports
from porttrap.errors import ConfigError, ConfigProblem
from porttrap.model import Proto

DATA = Path(__file__).parent.parent / "data" / "config"
BAD_SAMPLES = sorted(path.stem for path in DATA.glob("*.expected"))
TCP, UDP = Proto.TCP, Proto.UDP
DAY = 86400.0


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, Path("t.toml"))
    return [str(problem) for problem in caught.value.problems]


def traps_of(text: str) -> tuple[Trap, ...]:
    return load_text(text, None).traps


def defaults(proto: Proto) -> list[Trap]:
    return [Trap(proto, port) for port in sorted(default_ports(proto))]


# --- recorded samples: NAME.toml gives exactly the problem lines in NAME.expected ---


@pytest.mark.parametrize("name", BAD_SAMPLES)
def test_bad_sample_reports_expected_problems(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DATA)  # problems then name the file as it is given: just its name
    expected = (DATA / f"{name}.expected").read_text(encoding="utf-8").splitlines()
    with pytest.raises(ConfigError) as caught:
        load(Path(f"{name}.toml"))
    assert [str(problem) for problem in caught.value.problems] == expected


def test_every_sample_has_an_expected_result_or_is_a_good_one() -> None:
    good = {"full"}
    samples = {path.stem for path in DATA.glob("*.toml")}
    assert samples == set(BAD_SAMPLES) | good


def test_full_contract_file_gives_exact_config() -> None:
    path = DATA / "full.toml"
    tcp_ports = [23, 2323, 3389, *range(5900, 5911)]
    assert load(path) == Config(
        state_dir=Path("/var/lib/porttrap"),
        traps=(
            *(Trap(TCP, port) for port in tcp_ports),
            Trap(TCP, 9090, ip_address("203.0.113.5"), 7200.0),
            Trap(UDP, 69),
            Trap(UDP, 161),
        ),
        modes=Modes(
            tcp=TrapMode.CONNECT,
            udp=TrapMode.CONNECT,
            advanced_tcp=frozenset(range(1, 65536)),
            advanced_udp=frozenset(range(1, 65536)),
            exclude_tcp=frozenset({113, 139}),
            exclude_udp=frozenset({67, 137, 138, 520}),
        ),
        kernel=KernelSensor(
            nflog_group=7022,
            block=True,
            block_time=60.0,
            block_size=65536,
            client_time=3600.0,
            client_size=65536,
            client_trap_port=64999,
            quiet=True,
            event_rate=1000,
            source_rate=10,
            queue=10_000,
        ),
        ban=BanPolicy(
            time=3600.0,
            escalation=Escalation.QUADRATIC,
            max_time=30 * DAY,
            permanent_after=3,
            trigger=1,
            window=600.0,
            forget_after=90 * DAY,
            confirm=2,
        ),
        allow=AllowList((ip_network("192.0.2.0/24"), ip_network("2001:db8::7/128"))),
        firewall=FirewallConfig(backend="nftables", table="porttrap"),
        store=StoreConfig(hit_retention=90 * DAY, hit_rate=250.0, hit_rows=1_000_000),
        source=path,
    )


def test_problem_paths_are_the_paths_given() -> None:
    with pytest.raises(ConfigError) as caught:
        load(DATA / "typo-key.toml")
    assert caught.value.problems == [
        ConfigProblem(
            DATA / "typo-key.toml", 2, "ban.tme", 'unknown key "tme"; did you mean "time"?'
        )
    ]


def test_error_text_lists_every_problem_one_per_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text('[ban]\ntime = "1x"\ntrigger = 0\n', None)
    assert str(caught.value).splitlines() == [
        '<config>:2: [ban.time] expected a duration such as 30s, 10m, 1h, 1d, 1w, got "1x"',
        "<config>:3: [ban.trigger] expected a whole number of at least 1, got 0",
    ]


# --- defaults and where the file comes from ---


def test_no_file_anywhere_gives_built_in_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(porttrap.config.loader, "DEFAULT_CONFIG_PATH", tmp_path / "missing.toml")
    config = load(None)
    advanced = Modes(tcp=TrapMode.ADVANCED, udp=TrapMode.ADVANCED)  # the built-in mode
    kernel = KernelSensor(hold=ADVANCED_HOLD)  # the hold is on in advanced mode
    assert config == Config(traps=(*defaults(TCP), *defaults(UDP)), modes=advanced, kernel=kernel)
    assert config.source is None


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("", TrapMode.ADVANCED),
        ('[ban]\nrespond = "ban"\n', TrapMode.ADVANCED),
        # files written for the earlier built-in mode (connect) keep meaning what they meant
        ('[ban]\nrespond = "log"\n', TrapMode.CONNECT),
        ('[ban]\nrespond = { udp = "command" }\n[[actions.command]]\nrun = ["/bin/true"]\n',
         TrapMode.CONNECT),
        ('[traps]\nbanner = "SSH-2.0-OpenSSH_9.2"\n', TrapMode.CONNECT),
        ('[traps]\ntcp = ["1524"]\n', TrapMode.CONNECT),
        ('[firewall]\nbackend = "ipset"\n', TrapMode.CONNECT),
    ],
)  # fmt: skip
def test_the_built_in_mode_is_advanced_unless_the_file_says_connect(
    text: str, mode: TrapMode
) -> None:
    config = load_text(text, None)
    assert (config.modes.tcp, config.modes.udp) == (mode, mode)


def test_default_path_is_read_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "porttrap.toml"
    path.write_text('[ban]\ntime = "2h"\n', encoding="utf-8")
    monkeypatch.setattr(porttrap.config.loader, "DEFAULT_CONFIG_PATH", path)
    config = load(None)
    assert (config.ban.time, config.source) == (7200.0, path)


def test_default_trap_lists_are_the_defaults() -> None:
    assert len(traps_of("")) == len(default_ports(TCP)) + len(default_ports(UDP))
    assert {1524, 31337} <= default_ports(TCP)


def test_empty_file_is_the_defaults() -> None:
    assert load_text("", None) == load_text("# nothing set\n[traps]\n[ban]\n", None)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: no such file; create it or give another file"


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path}: cannot read it: ")


# --- traps ---


def test_traps_without_tcp_key_keeps_default_tcp_list() -> None:
    assert traps_of('[traps]\nudp = ["69"]\n') == (*defaults(TCP), Trap(UDP, 69))


def test_empty_list_disables_a_protocol() -> None:
    assert traps_of("[traps]\ntcp = [23]\nudp = []\n") == (Trap(TCP, 23),)


def test_ranges_expand_sorted_and_duplicates_merge() -> None:
    text = '[traps]\ntcp = ["5902", "5900-5902", 23, "23", " 24 - 24 "]\nudp = []\n'
    assert [trap.port for trap in traps_of(text)] == [23, 24, 5900, 5901, 5902]


def test_port_entry_replaces_the_plain_trap() -> None:
    text = '[traps]\ntcp = [22, 23]\nudp = []\n[[traps.port]]\nport = 23\nproto = "tcp"\nban = 60\n'
    assert traps_of(text) == (Trap(TCP, 22), Trap(TCP, 23, None, 60.0))


def test_port_entries_on_different_addresses_may_share_a_port() -> None:
    text = """
[traps]
tcp = [25]
udp = []
[[traps.port]]
port = "24-25"
proto = "tcp"
address = "2001:db8::5"
[[traps.port]]
port = 25
proto = "tcp"
address = "203.0.113.5"
"""
    assert traps_of(text) == (
        Trap(TCP, 24, ip_address("2001:db8::5")),
        Trap(TCP, 25, ip_address("203.0.113.5")),
        Trap(TCP, 25, ip_address("2001:db8::5")),
    )


def test_port_entries_as_inline_tables() -> None:
    text = '[traps]\ntcp = []\nudp = []\nport = [{ port = 7, proto = "udp" }]\n'
    assert traps_of(text) == (Trap(UDP, 7),)


def test_port_entry_with_wrong_proto() -> None:
    text = '[traps]\ntcp = []\n\n[[traps.port]]\nport = 9090\nproto = "TCP"\n'
    assert problems_of(text) == [
        't.toml:6: [traps.port[0].proto] expected one of "tcp", "udp", got "TCP"; '
        'did you mean "tcp"?'
    ]


# --- single values ---


@pytest.mark.parametrize(
    ("written", "seconds"),
    [('"30s"', 30.0), ('"10m"', 600.0), ('"1h30m"', 5400.0), ('"1w"', 7 * DAY), ("45", 45.0)],
)
def test_durations_as_text_or_whole_seconds(written: str, seconds: float) -> None:
    assert load_text(f"[ban]\nwindow = {written}\n", None).ban.window == seconds


def test_max_time_may_equal_time() -> None:
    ban = load_text('[ban]\ntime = "2h"\nmax_time = 7200\n', None).ban
    assert (ban.time, ban.max_time) == (7200.0, 7200.0)


def test_max_time_is_not_compared_when_it_is_invalid() -> None:
    assert problems_of('[ban]\ntime = "60d"\nmax_time = "lots"\n') == [
        't.toml:3: [ban.max_time] expected a duration such as 30s, 10m, 1h, 1d, 1w, got "lots"'
    ]


@pytest.mark.parametrize("name", ["a", "porttrap_2", "P" + "x" * 31])
def test_valid_table_names(name: str) -> None:
    assert load_text(f'[firewall]\ntable = "{name}"\n', None).firewall.table == name


@pytest.mark.parametrize("name", ["", "_x", "2x", "port-trap", "P" + "x" * 32])
def test_invalid_table_names(name: str) -> None:
    (problem,) = problems_of(f'[firewall]\ntable = "{name}"\n')
    assert problem.startswith("t.toml:2: [firewall.table] expected an nftables table name")


def test_dry_run_backend_and_other_escalations() -> None:
    text = '[firewall]\nbackend = "dry-run"\n[ban]\nescalation = "none"\npermanent_after = 0\n'
    config = load_text(text, None)
    assert (config.firewall.backend, config.ban.escalation) == ("dry-run", Escalation.NONE)
    assert config.ban.permanent_after == 0


def test_allow_keeps_networks_and_makes_addresses_single_hosts() -> None:
    text = '[allow]\naddresses = ["10.0.0.0/8", "198.51.100.7", "2001:db8::/32", "::1"]\n'
    assert load_text(text, None).allow.networks == (
        ip_network("10.0.0.0/8"),
        ip_network("198.51.100.7/32"),
        ip_network("2001:db8::/32"),
        ip_network("::1/128"),
    )


# --- the line locator ---


LOCATE_SAMPLE = """\
state_dir = "/x"  # [not.a.header]
ban.time = "1h"

[traps]
tcp = [
    "23",  # a comment, with "quotes" and ] brackets
    '2323',
    [1, 2],
]
note = \"\"\"
key = "not a key"
[not.a.header]
\"\"\"
[[traps.port]]
port = 1
[[traps.port]]
  "proto" = "udp"
inline = { a = 1, b = { c = "}" } }
[traps.port.sub]
x = 1979-05-27 07:32:00Z
"""


def test_locate_finds_keys_headers_items_and_array_tables() -> None:
    assert locate(LOCATE_SAMPLE) == {
        "state_dir": 1,
        "ban.time": 2,
        "traps": 4,
        "traps.tcp": 5,
        "traps.tcp[0]": 6,
        "traps.tcp[1]": 7,
        "traps.tcp[2]": 8,
        "traps.tcp[2][0]": 8,
        "traps.tcp[2][1]": 8,
        "traps.note": 10,
        "traps.port[0]": 14,
        "traps.port[0].port": 15,
        "traps.port[1]": 16,
        "traps.port[1].proto": 17,
        "traps.port[1].inline": 18,
        "traps.port[1].inline.a": 18,
        "traps.port[1].inline.b": 18,
        "traps.port[1].inline.b.c": 18,
        "traps.port[1].sub": 19,
        "traps.port[1].sub.x": 20,
    }


def test_line_of_falls_back_to_the_enclosing_key() -> None:
    lines = locate(LOCATE_SAMPLE)
    assert line_of(lines, "traps.port[1].address") == 16
    assert line_of(lines, "traps.udp[3]") == 4
    assert line_of(lines, "allow.addresses[0]") is None


def test_locate_keeps_what_it_found_before_something_it_cannot_read() -> None:
    assert locate("a = 1\n= broken\nb = 2\n") == {"a": 1}


def test_an_allow_pattern_that_repeats_a_repeat_is_refused() -> None:
    # Matched against each hit's address, (.*)*# takes hours on a long IPv6 one.
    (problem,) = problems_of('[allow]\npatterns = ["(.*)*#", "198\\\\.51\\\\.100\\\\.[0-9]+"]\n')
    assert problem.startswith('t.toml:2: [allow.patterns[0]] "(.*)*#" repeats a part that')
    assert "list the networks in [allow] addresses" in problem
