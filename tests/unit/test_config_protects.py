"""A config that cannot protect is an error (config/protection.py, config/host.py): no trap
port, a trigger no scanner reaches, a respond mode that does nothing, more sockets than the
descriptor limit allows, trap sockets in ip_local_port_range. Each problem names the file, the
line, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from porttrap.cli.main import main
from porttrap.config import host
from porttrap.config.host import HEADROOM, Host
from porttrap.config.loader import load_text
from porttrap.config.schema import DEFAULT_TCP_TRAPS, DEFAULT_UDP_TRAPS
from porttrap.errors import ConfigError, ConfigProblem
from porttrap.units import parse_ports

LINUX = Host(local_ports=range(32768, 61000), nofile=524288)  # Debian's defaults
FILE = Path("/etc/porttrap/porttrap.toml")
CONNECT = '[traps]\nmode = "connect"\n'  # respond other than "ban" needs it, or block = false


def problems(text: str, on: Host | None = LINUX) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, FILE, on)
    return caught.value.problems


def only(text: str, on: Host | None = LINUX) -> ConfigProblem:
    (problem,) = problems(text, on)
    assert problem.path == FILE
    return problem


# -- what protects nothing -------------------------------------------------------------------


def test_no_trap_port_at_all_is_an_error() -> None:
    problem = only("[traps]\ntcp = []\nudp = []\n")
    assert (problem.line, problem.key) == (2, "traps.tcp")
    assert "no trap port" in problem.message
    assert 'tcp = ["1524", "31337"]' in problem.message  # the fix


def test_one_protocol_without_traps_is_fine() -> None:
    assert load_text('[traps]\ntcp = []\nudp = ["31337"]\n', FILE, LINUX).traps


def test_trigger_above_the_trap_ports_is_an_error() -> None:
    text = '[traps]\ntcp = ["1524"]\nudp = ["31337"]\n\n[ban]\ntrigger = 3\n'
    problem = only(text)
    assert (problem.line, problem.key) == (6, "ban.trigger")
    assert "only 2 (1 TCP, 1 UDP)" in problem.message
    assert "set trigger to 2 or less, or add trap ports" in problem.message
    assert load_text(text.replace("3", "2"), FILE, LINUX).ban.trigger == 2


def test_trigger_counts_the_ports_advanced_mode_watches() -> None:
    text = '[traps]\nmode = "advanced"\n[traps.advanced]\ntcp = ["1-3"]\nudp = ["1-2"]\n'
    text += "exclude_tcp = []\nexclude_udp = []\n[kernel]\nblock = false\n[ban]\ntrigger = "
    assert load_text(f"{text}5\n", FILE, LINUX).ban.trigger == 5
    assert "only 5 (3 TCP, 2 UDP)" in only(f"{text}6\n").message


def test_trigger_counts_a_port_trapped_on_two_addresses_once() -> None:
    text = (
        '[traps]\ntcp = []\nudp = []\n[[traps.port]]\nport = 1524\nproto = "tcp"\n'
        'address = "192.0.2.1"\n[[traps.port]]\nport = 1524\nproto = "tcp"\n'
        'address = "192.0.2.2"\n[ban]\ntrigger = 2\n'
    )
    assert "only 1 (1 TCP, 0 UDP)" in only(text).message


def test_respond_command_without_an_action_on_ban_is_an_error() -> None:
    problem = only(CONNECT + '[ban]\nrespond = { udp = "command" }\n')
    assert (problem.line, problem.key) == (4, "ban.respond")
    assert 'udp responds with "command"' in problem.message
    assert "add an [[actions.command]]" in problem.message
    assert 'or set respond = "ban"' in problem.message


@pytest.mark.parametrize(
    "action",
    [
        '[[actions.command]]\nrun = ["/usr/local/bin/block", "$TARGET$"]\n',
        "[actions.hosts_deny]\n",
        '[[actions.webhook]]\nurl = "http://192.0.2.9/hook"\non = ["permanent-ban"]\n',
    ],
)
def test_respond_command_with_an_action_on_ban_is_fine(action: str) -> None:
    assert load_text(f'{CONNECT}[ban]\nrespond = "command"\n{action}', FILE, LINUX)


def test_respond_command_with_actions_only_on_hits_is_an_error() -> None:
    text = (
        CONNECT
        + '[ban]\nrespond = "command"\n[[actions.command]]\nrun = ["/bin/true"]\non = ["hit"]\n'
    )
    assert 'tcp and udp respond with "command"' in only(text).message


def test_these_checks_wait_for_the_values_they_read() -> None:
    """A bad list is its own problem, not also "no trap port"."""
    (problem,) = problems('[traps]\ntcp = ["x"]\nudp = []\n')
    assert problem.key == "traps.tcp[0]"


# -- what this host cannot run ---------------------------------------------------------------


def test_more_sockets_than_the_descriptor_limit_is_an_error() -> None:
    small = Host(nofile=1024)
    found = problems('[traps]\ntcp = ["1-65535"]\nudp = ["1-65535"]\n', small)
    problem = found[0]
    assert (problem.line, problem.key) == (2, "traps.tcp")
    assert "connect mode needs 262,140 sockets" in problem.message
    assert "allows 1,024 descriptors" in problem.message
    assert 'mode = "stealth" or "advanced"' in problem.message


def test_the_descriptor_limit_keeps_headroom() -> None:
    text = '[traps]\ntcp = ["1000-1099"]\nudp = []\n'  # 200 sockets
    assert load_text(text, FILE, Host(nofile=200 + HEADROOM))
    assert only(text, Host(nofile=199 + HEADROOM)).key == "traps.tcp"


def test_stealth_mode_needs_no_socket_per_port() -> None:
    text = '[traps]\nmode = "stealth"\ntcp = ["1-65535"]\nudp = ["1-65535"]\n'
    text += "[kernel]\nclient_trap_port = 0\n"
    assert load_text(text, FILE, Host(local_ports=range(32768, 61000), nofile=1024))


def test_connect_traps_inside_ip_local_port_range_are_an_error() -> None:
    text = '[traps]\ntcp = ["1524", "40000-40009"]\nudp = []\n[[traps.port]]\nport = 50000\n'
    text += 'proto = "tcp"\n'
    first, second = problems(text)
    assert (first.line, first.key) == (2, "traps.tcp")  # one problem for the list
    assert "TCP 40000-40009 of [traps] tcp are inside the kernel's ip_local_port_range" in (
        first.message
    )
    assert "(32768-60999)" in first.message
    assert "net.ipv4.ip_local_reserved_ports=40000-40009" in first.message
    assert 'mode = "stealth"' in first.message
    assert (second.line, second.key) == (4, "traps.port[0]")


def test_reserved_ports_are_not_taken_from_the_host() -> None:
    reserved = Host(local_ports=range(32768, 61000), reserved=frozenset({40421}))
    assert load_text('[traps]\ntcp = ["40421"]\n', FILE, reserved)


def test_stealth_traps_inside_ip_local_port_range_are_fine() -> None:
    """The kernel sensor leaves established and related packets alone: replies to the host's
    own connections from such a port pass (tests/integration/test_protection_daemon.py)."""
    text = '[traps]\nmode = { udp = "stealth" }\ntcp = ["1524"]\nudp = ["40421"]\n'
    assert load_text(text, FILE, LINUX)
    assert only(text.replace('mode = { udp = "stealth" }\n', "")).key == "traps.udp"


def test_without_host_facts_nothing_host_specific_is_checked() -> None:
    assert load_text('[traps]\ntcp = ["1-65535"]\n', FILE, None)


def test_the_built_in_lists_fit_linux_and_leave_debian_services_alone() -> None:
    ports = {p for text in (*DEFAULT_TCP_TRAPS, *DEFAULT_UDP_TRAPS) for p in parse_ports(text)}
    assert not ports & set(LINUX.local_ports or ())
    # rpcbind, finger, nntp, imap, uucp, socks, sieve, ircd, echo, discard, tftp, snmp, rwho
    assert not ports & {7, 9, 69, 79, 111, 119, 143, 161, 162, 513, 540, 1080, 2000, 6667}
    assert load_text("", None, LINUX)


def test_the_host_is_read_from_proc_and_getrlimit() -> None:
    found = host.read()
    assert found.local_ports is not None and len(found.local_ports) > 0
    assert found.nofile is None or found.nofile > 0


# -- importers say so ------------------------------------------------------------------------


def test_an_import_that_protects_nothing_is_written_and_refused_aloud(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PortSentry's SCAN_TRIGGER=3 with two ports: the config is written (to be fixed), the
    problem is said as check-config says it, and the exit code says it (2)."""
    (tmp_path / "portsentry.conf").write_text(
        'TCP_PORTS="1524,31337"\nUDP_PORTS=""\nSCAN_TRIGGER="3"\nBLOCK_TCP="1"\nBLOCK_UDP="1"\n'
    )
    (tmp_path / "default").write_text('TCP_MODE="tcp"\nUDP_MODE="udp"\n')
    target = tmp_path / "porttrap.toml"
    argv = ["import", "portsentry", str(tmp_path), "--defaults", str(tmp_path / "default")]
    assert main([*argv, "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"wrote {target}" in err
    refused = [line for line in err.splitlines() if line.startswith("porttrap refuses")]
    assert len(refused) == 1
    assert f"{target}:" in refused[0] and "[ban.trigger] trigger = 3" in refused[0]
    assert "set trigger to 2 or less" in refused[0]
    with pytest.raises(ConfigError):
        load_text(target.read_text(), target, None)
