"""The `[metrics]` section: off by default, an IP literal and a port, every mistake named with
its key and an example; check-config shows the URL and warns when it is not loopback."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path

import pytest

from porttrap.cli.main import main
from porttrap.config.loader import load_text
from porttrap.config.schema import Listen, MetricsConfig
from porttrap.errors import ConfigError


def metrics_of(text: str) -> MetricsConfig:
    return load_text(text, Path("t.toml")).metrics


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, Path("t.toml"))
    return [str(problem) for problem in caught.value.problems]


def test_no_endpoint_without_the_section_or_the_key() -> None:
    assert metrics_of("") == MetricsConfig(listen=None)
    assert metrics_of("[metrics]\n").url is None


@pytest.mark.parametrize(
    ("text", "host", "port", "url"),
    [
        ("127.0.0.1:9477", "127.0.0.1", 9477, "http://127.0.0.1:9477/metrics"),
        ("[::1]:9100", "::1", 9100, "http://[::1]:9100/metrics"),
        (" 0.0.0.0:1024 ", "0.0.0.0", 1024, "http://0.0.0.0:1024/metrics"),
        ("[2001:db8::7]:65535", "2001:db8::7", 65535, "http://[2001:db8::7]:65535/metrics"),
    ],
)
def test_an_address_literal_and_a_port(text: str, host: str, port: int, url: str) -> None:
    metrics = metrics_of(f'[metrics]\nlisten = "{text}"\n')
    assert metrics.listen == Listen(ip_address(host), port)
    assert metrics.url == url


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"localhost:9477"', '"localhost" is not an IP address; give an address, not a host '
         'name (a name would be looked up at start, so where porttrap listens would depend on '
         'DNS or /etc/hosts): write "127.0.0.1:9477"'),
        ('"metrics.example.org:9477"', 'write "ADDRESS:9477"'),
        ('"::1:9477"', 'put an IPv6 address in brackets: "[::1]:PORT"'),
        ('"127.0.0.1"', 'add the port: "127.0.0.1:9477"'),
        ('"9477"', 'add the address: "127.0.0.1:9477"'),
        ("9477", 'got 9477; write "127.0.0.1:9477"'),
        ('":9477"', 'no address in ":9477": give one, such as "127.0.0.1:9477" or '
         '"[::1]:9477" (or "0.0.0.0:9477" for every IPv4 address, which exposes the metrics)'),
        ('"127.0.0.1:0"', 'port "0" is not a port number 1-65535, such as 9477'),
        ('"127.0.0.1:70000"', 'port "70000" is not a port number 1-65535'),
        ('"127.0.0.1:http"', 'port "http" is not a port number'),
        ('"[127.0.0.1]:9477"', "brackets are for IPv6 addresses only; write 127.0.0.1:PORT"),
        ('"224.0.0.1:9477"', "224.0.0.1 is a multicast address"),
    ],
)  # fmt: skip
def test_a_bad_listen_is_named_with_its_line_key_and_an_example(value: str, expected: str) -> None:
    (problem,) = problems_of(f"[metrics]\nlisten = {value}\n")
    assert problem.startswith("t.toml:2: [metrics.listen] ")
    assert expected in problem


def test_unknown_keys_and_a_trap_port_are_problems_too() -> None:
    text = '[traps]\ntcp = ["9477"]\n[metrics]\nlisten = "127.0.0.1:9477"\nport = 9477\n'
    assert problems_of(text) == [
        "t.toml:4: [metrics.listen] port 9477 is also a TCP trap port: a trap must serve "
        "nothing; give metrics another port, such as 9477",
        't.toml:5: [metrics.port] unknown key "port"; expected one of: listen',
    ]
    assert metrics_of('[traps]\nudp = ["9477"]\n[metrics]\nlisten = "127.0.0.1:9477"\n').listen


def check_config(capsys: pytest.CaptureFixture[str], tmp_path: Path, listen: str) -> list[str]:
    config = tmp_path / "m.toml"
    config.write_text(f'[metrics]\nlisten = "{listen}"\n')
    assert main(["check-config", "-c", str(config)]) == 0
    return capsys.readouterr().out.splitlines()[1:]


def test_check_config_shows_the_url_of_a_loopback_endpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert check_config(capsys, tmp_path, "[::1]:9477") == ["  metrics: http://[::1]:9477/metrics"]


def test_check_config_warns_when_the_endpoint_is_not_loopback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert check_config(capsys, tmp_path, "0.0.0.0:9477") == [
        "  metrics: http://0.0.0.0:9477/metrics",
        "  warning: 0.0.0.0 is not a loopback address: whoever reaches port 9477 learns which "
        "ports porttrap traps, what it saw and whom it banned; listen on 127.0.0.1 (a local "
        "Prometheus or an SSH tunnel) or a management network, or firewall the port",
    ]
