"""The registry of firewall backends: the names the config takes (in the order messages list
them), each backend's capabilities, what `auto` may choose, what a teardown removes, and that
reading it (as the config loader does) imports no backend and not libnftables."""

from __future__ import annotations

import subprocess  # noqa: TID251 - a fresh interpreter, to see what it imports
import sys

import pytest

from porttrap.errors import FirewallError
from porttrap.firewall import registry


def test_the_names_the_config_takes_auto_among_them() -> None:
    assert registry.names() == ("nftables", "ipset", "auto", "dry-run")


def test_each_backend_states_what_it_can_do() -> None:
    table = {
        info.name: (info.kernel_sensor, info.marks, info.in_kernel, info.runs_iptables)
        for info in registry.BACKENDS
    }
    assert table == {
        "nftables": (True, True, True, False),  # only nftables hosts the sensor
        "ipset": (False, True, True, True),  # ipset holds the watch (the marks) too
        "dry-run": (False, False, False, False),
    }


def test_auto_tries_nftables_then_ipset_and_only_nftables_with_the_sensor() -> None:
    assert [info.name for info in registry.auto_order()] == ["nftables", "ipset"]
    assert [info.name for info in registry.auto_order(sensor=True)] == ["nftables"]
    assert registry.sensor_hosts() == ("nftables",)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("auto", ["nftables", "ipset"]), ("ipset", ["ipset"]), ("dry-run", ["dry-run"])],
)
def test_candidates_are_what_a_configured_name_may_run(name: str, expected: list[str]) -> None:
    assert [info.name for info in registry.candidates(name)] == expected


def test_an_unknown_name_lists_the_choices() -> None:
    with pytest.raises(FirewallError) as raised:
        registry.get("iptables")
    assert str(raised.value) == (
        "unknown firewall backend 'iptables': choose one of nftables, ipset, auto, dry-run"
    )
    with pytest.raises(FirewallError, match="unknown firewall backend 'auto'"):
        registry.get("auto")  # a choice among backends, not one


def test_removes_says_what_flush_takes_away() -> None:
    removes = {info.name: info.removes("pt") for info in registry.BACKENDS}
    assert removes == {
        "nftables": "nftables table inet pt",
        "ipset": "ipset sets pt_v4, pt_v6, pt_clients_v4, pt_peers_v4, pt_gateways_v4, "
        "pt_clients_v6, pt_peers_v6, pt_gateways_v6, pt_connect_udp and iptables/ip6tables "
        "chains raw pt, security pt_in, pt_out, pt_mark",
        "dry-run": "nothing (dry-run)",
    }


def test_dry_run_can_always_run() -> None:
    assert registry.get("dry-run").is_supported() == (True, "changes nothing in the kernel")


def test_reading_the_registry_imports_no_backend() -> None:
    """The config loader and the unit generator read it: loading a config must not load
    libnftables, nor any backend's module."""
    code = (
        "import sys, porttrap.config.loader, porttrap.service.unit\n"
        "porttrap.config.loader.load_text('[firewall]\\nbackend = \"auto\"\\n', None)\n"
        "print(sorted(m for m in sys.modules if m == 'nftables' or "
        "m.startswith('porttrap.firewall.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout == "['porttrap.firewall.registry']\n"
