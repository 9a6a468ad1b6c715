"""The watch's ipset and iptables scripts (firewall/ipset_watch.py, pure): the sets of recent
clients and peers, the gateways and the connect-mode UDP trap ports, and the security-table
chains that fill them and mark the datagrams. The rules are compared with what iptables itself
printed for them (tests/data/ipset/security-*.txt, recorded by record_ipset.py), so the 5 s check
reads back exactly what setup wrote."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from porttrap.config.loader import load_text
from porttrap.firewall import ipset_watch as watching
from porttrap.firewall.ipset_rules import FAMILIES, MAX_TIMEOUT, Names, parse_listing
from porttrap.firewall.ipset_watch import IpsetWatch, client_timeout
from porttrap.model import IPAddress
from porttrap.sensorspec import MARK_CLIENT, MARK_PEER, spec_from_config

DATA = Path(__file__).parent.parent / "data" / "ipset"
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text())
V4, V6 = FAMILIES
NAMES = Names("porttrap")
CONNECT = '[traps]\ntcp = ["23"]\nudp = ["69", "161"]\n'  # as recorded
WATCH_CHAINS = ("porttrap_in", "porttrap_out", "porttrap_mark")


def watch(config: str = CONNECT, table: str = "porttrap") -> IpsetWatch:
    return IpsetWatch(Names(table), spec_from_config(load_text(config, None)))


def addresses(*texts: str) -> list[IPAddress]:
    return [ipaddress.ip_address(text) for text in texts]


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def ours(listing_text: str) -> list[str]:
    """The rules of porttrap's watch chains in a recorded `iptables -S`, in order."""
    return [line for line in listing_text.splitlines() if line.startswith(("-A porttrap_",))]


# --- the sets ---


def test_sets_first_time_are_filled_in_the_temporary_set_and_renamed_in() -> None:
    gateways = addresses("192.0.2.254", "2001:db8::fffe", "fe80::1%eth0", "fe80::1")
    assert watch().sets_script(["porttrap_v4", "other"], gateways).splitlines() == [
        "create porttrap_tmp hash:ip family inet timeout 3600 maxelem 65536",
        "rename porttrap_tmp porttrap_clients_v4",
        "create porttrap_tmp hash:ip family inet timeout 3600 maxelem 65536",
        "rename porttrap_tmp porttrap_peers_v4",
        "create porttrap_tmp hash:ip family inet",
        "add porttrap_tmp 192.0.2.254",
        "rename porttrap_tmp porttrap_gateways_v4",
        "create porttrap_tmp hash:ip family inet6 timeout 3600 maxelem 65536",
        "rename porttrap_tmp porttrap_clients_v6",
        "create porttrap_tmp hash:ip family inet6 timeout 3600 maxelem 65536",
        "rename porttrap_tmp porttrap_peers_v6",
        "create porttrap_tmp hash:ip family inet6",
        "add porttrap_tmp 2001:db8::fffe",
        "add porttrap_tmp fe80::1",  # the scope is not part of a set's element
        "rename porttrap_tmp porttrap_gateways_v6",
        "create porttrap_tmp bitmap:port range 1-65535",
        "add porttrap_tmp 69",
        "add porttrap_tmp 161",
        "rename porttrap_tmp porttrap_connect_udp",
    ]


def test_sets_that_exist_are_swapped_and_a_stale_temporary_set_goes_first() -> None:
    existing = [*NAMES.watch_sets(), "porttrap_tmp"]
    config = CONNECT + '[kernel]\nclient_time = "10m"\nclient_size = 2048\n'
    lines = watch(config).sets_script(existing, []).splitlines()
    assert lines[:4] == [
        "destroy porttrap_tmp",
        "create porttrap_tmp hash:ip family inet timeout 600 maxelem 2048",
        "swap porttrap_tmp porttrap_clients_v4",
        "destroy porttrap_tmp",
    ]
    assert lines.count("destroy porttrap_tmp") == 1 + len(NAMES.watch_sets())
    assert "rename" not in " ".join(lines)


def test_a_rebuild_keeps_the_clients_and_peers_its_last_setup_made_alike() -> None:
    """Setup again (the 5 s check found a rule in the way, a kernel error, a reload): the
    clients and peers learned stay when their sets would be made the same; the gateways and
    ports are made again whatever. A new client_time makes them anew."""
    existing = NAMES.watch_sets()
    before = watch()
    again = watch().sets_script(existing, [], before=before)
    assert "clients" not in again and "peers" not in again
    assert "swap porttrap_tmp porttrap_gateways_v4" in again
    assert "swap porttrap_tmp porttrap_connect_udp" in again
    longer = watch(CONNECT + '[kernel]\nclient_time = "2h"\n').sets_script(existing, [], before)
    assert "swap porttrap_tmp porttrap_clients_v4" in longer
    assert "swap porttrap_tmp porttrap_peers_v6" in longer
    gone = [name for name in existing if name != "porttrap_peers_v6"]  # destroyed since
    assert watch().sets_script(gone, [], before).count("rename") == 1


@pytest.mark.parametrize(
    ("client_time", "timeout"),
    [(0.0, 1), (0.5, 1), (3600.0, 3600), (3600.2, 3601), (40 * 86400.0, MAX_TIMEOUT)],
)
def test_the_tracked_sets_timeout_fits_ipset(client_time: float, timeout: int) -> None:
    assert client_timeout(client_time) == timeout


def test_gateways_change_by_the_difference_in_the_right_family() -> None:
    script = watch().gateways_script(
        added=addresses("192.0.2.1", "fe80::1%eth0"), removed=addresses("2001:db8::1")
    )
    assert script == (
        "add porttrap_gateways_v4 192.0.2.1\n"
        "add porttrap_gateways_v6 fe80::1\n"
        "del porttrap_gateways_v6 2001:db8::1\n"
    )
    assert watch().gateways_script([], []) == ""


def test_sets_teardown_destroys_only_the_watchs_sets_that_exist() -> None:
    existing = ["porttrap_v4", "porttrap_clients_v4", "porttrap_tmp", "other"]
    assert watching.sets_teardown(NAMES, existing) == (
        "destroy porttrap_clients_v4\ndestroy porttrap_tmp\n"
    )
    assert watching.sets_teardown(NAMES, ["porttrap_v4"]) == ""


# --- the rules ---


@pytest.mark.parametrize("family", FAMILIES, ids=["ipv4", "ipv6"])
def test_the_rules_are_what_iptables_prints_for_them(family: Any) -> None:
    rules = watch().rules(family)
    assert list(rules) == list(WATCH_CHAINS)
    printed = ours(recorded(f"security-in-place-v{family.version}.txt"))
    assert sorted(line for chain in rules.values() for line in chain) == sorted(printed)


def test_the_rules_in_full() -> None:
    rules = watch().rules(V6)
    assert rules["porttrap_in"] == [
        "-A porttrap_in -i lo -j RETURN",
        "-A porttrap_in -m conntrack --ctstate ESTABLISHED --ctstatus ASSURED --ctdir ORIGINAL "
        "-j SET --add-set porttrap_clients_v6 src --exist",
        "-A porttrap_in -p udp -m set --match-set porttrap_connect_udp dst -j porttrap_mark",
    ]
    assert rules["porttrap_out"] == [
        "-A porttrap_out -o lo -j RETURN",
        "-A porttrap_out -m conntrack --ctdir ORIGINAL "
        "-j SET --add-set porttrap_peers_v6 dst --exist",
    ]
    assert rules["porttrap_mark"] == [
        "-A porttrap_mark -j MARK --set-xmark 0x0/0x30000",
        "-A porttrap_mark -m set --match-set porttrap_clients_v6 src "
        "-j MARK --set-xmark 0x10000/0x10000",
        "-A porttrap_mark -s fe80::/10 -j MARK --set-xmark 0x20000/0x20000",
        "-A porttrap_mark -m set --match-set porttrap_gateways_v6 src "
        "-j MARK --set-xmark 0x20000/0x20000",
        "-A porttrap_mark -m set --match-set porttrap_peers_v6 src "
        "-j MARK --set-xmark 0x20000/0x20000",
    ]
    assert (MARK_CLIENT, MARK_PEER) == (0x10000, 0x20000)


def test_client_time_zero_tracks_nobody_but_link_local_and_gateways_stay_peers() -> None:
    rules = watch(CONNECT + '[kernel]\nclient_time = "0s"\n').rules(V4)
    text = "\n".join(line for chain in rules.values() for line in chain)
    assert "clients" not in text and "peers" not in text and "SET" not in text
    assert rules["porttrap_mark"][1:] == [
        "-A porttrap_mark -s 169.254.0.0/16 -j MARK --set-xmark 0x20000/0x20000",
        "-A porttrap_mark -m set --match-set porttrap_gateways_v4 src "
        "-j MARK --set-xmark 0x20000/0x20000",
    ]


def test_without_connect_mode_udp_traps_nothing_is_marked() -> None:
    rules = watch('[traps]\ntcp = ["23"]\nudp = []\n').rules(V4)
    assert not any("porttrap_connect_udp" in line for line in rules["porttrap_in"])
    assert len(rules["porttrap_in"]) == 2  # loopback, clients


def test_iptables_setup_makes_the_chains_and_puts_the_jumps_first() -> None:
    fresh = parse_listing(recorded("security-fresh-v4.txt"))
    lines = watch().iptables_setup(fresh, V4).splitlines()
    assert lines[:4] == [
        "*security",
        ":porttrap_in - [0:0]",
        ":porttrap_out - [0:0]",
        ":porttrap_mark - [0:0]",
    ]
    assert lines[-3:] == ["-I INPUT 1 -j porttrap_in", "-I OUTPUT 1 -j porttrap_out", "COMMIT"]
    assert not any(line.startswith("-D") for line in lines)
    assert sorted(lines[4:-3]) == sorted(ours(recorded("security-in-place-v4.txt")))


def test_iptables_setup_moves_a_jump_that_is_not_first() -> None:
    behind = parse_listing(recorded("security-accept-first-v4.txt"))
    lines = watch().iptables_setup(behind, V4).splitlines()
    assert lines[-5:] == [
        "-D INPUT -j porttrap_in",
        "-I INPUT 1 -j porttrap_in",
        "-D OUTPUT -j porttrap_out",
        "-I OUTPUT 1 -j porttrap_out",
        "COMMIT",
    ]


@pytest.mark.parametrize("sample", sorted(EXPECTED["security"]))
def test_in_place_tells_the_recorded_states_apart(sample: str) -> None:
    want = EXPECTED["security"][sample]
    family = V4 if want["family"] == 4 else V6
    listing = parse_listing(recorded(sample))
    assert watch().in_place(listing, family) is want["in_place"]
    assert [c for c in WATCH_CHAINS if c in listing.chains] == want["chains"]
    jumps = listing.chain_rules("INPUT").count("-A INPUT -j porttrap_in")
    assert jumps == want["jumps_in"]


def test_in_place_wants_the_rules_of_the_config_in_force() -> None:
    """A config with other rules (tracking off) is not in place in a table made for one
    with tracking: the check notices, and setup makes it again."""
    listing = parse_listing(recorded("security-in-place-v4.txt"))
    assert not watch(CONNECT + '[kernel]\nclient_time = "0s"\n').in_place(listing, V4)
    assert not watch(CONNECT, table="other").in_place(listing, V4)


def test_iptables_teardown_leaves_the_other_chains() -> None:
    listing = parse_listing(recorded("security-in-place-v4.txt"))
    assert watching.iptables_teardown(listing, NAMES).splitlines() == [
        "*security",
        "-D INPUT -j porttrap_in",
        "-D OUTPUT -j porttrap_out",
        "-F porttrap_in",
        "-F porttrap_out",
        "-F porttrap_mark",
        "-X porttrap_in",
        "-X porttrap_out",
        "-X porttrap_mark",
        "COMMIT",
    ]
    assert watching.iptables_teardown(parse_listing(recorded("security-fresh-v4.txt")), NAMES) == ""


def test_the_recorded_names_of_the_watchs_sets() -> None:
    names = (DATA / "list-names-watch.txt").read_text().split()
    assert names == EXPECTED["list-names-watch.txt"]
    assert names[2:] == NAMES.watch_sets()


def test_names_of_the_watch_follow_the_table() -> None:
    names = Names("pt")
    assert names.watch_sets() == [
        "pt_clients_v4",
        "pt_peers_v4",
        "pt_gateways_v4",
        "pt_clients_v6",
        "pt_peers_v6",
        "pt_gateways_v6",
        "pt_connect_udp",
    ]
    assert (names.watch_tmp, names.watch_chains()) == ("pt_tmp", ["pt_in", "pt_out", "pt_mark"])
    assert len(Names("a" * 19).gateways(V6)) == 31  # ipset's longest name
