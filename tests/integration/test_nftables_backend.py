"""What only the real nftables backend can show: the ruleset as nft prints it, other tables
left alone, and one refused element not holding back the rest of a batch."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

import pytest

from netns import Netns, in_host_netns
from porttrap.config.loader import load_text
from porttrap.errors import FirewallError
from porttrap.firewall.nftables import NftablesBackend
from porttrap.model import Ban, show
from porttrap.sensorspec import SensorState, spec_from_config

pytestmark = pytest.mark.kernel

NOW = 1_800_000_000.0


def ban(target: str, seconds: float | None) -> Ban:
    expires = None if seconds is None else NOW + seconds
    return Ban(ipaddress.ip_network(target), NOW, expires, 1, "trap:tcp/23")


@pytest.fixture
def netns(netns_factory: Callable[[], Netns]) -> Netns:
    return netns_factory()


@pytest.fixture
def backend(netns: Netns) -> NftablesBackend:
    with netns.inside():
        assert not in_host_netns(), "refusing to bind libnftables to the host's namespace"
        return NftablesBackend()


def test_chain_hooks_prerouting_before_conntrack(netns: Netns, backend: NftablesBackend) -> None:
    backend.setup([], NOW)
    listing = netns.run(["nft", "list", "chain", "inet", "porttrap", "prerouting"])
    assert "type filter hook prerouting priority -350; policy accept;" in listing
    assert listing.count(" drop") == 4
    assert "ip saddr @ban_v4 drop" in listing
    assert "ip6 saddr @ban_net_v6 drop" in listing


def test_permanent_bans_are_elements_without_a_timeout(
    netns: Netns, backend: NftablesBackend
) -> None:
    backend.setup([ban("192.0.2.9", None), ban("198.51.100.0/24", 3600)], NOW)
    backend.apply([ban("198.51.100.1", 60), ban("198.51.100.0/24", None)], NOW)
    listing = netns.run(["nft", "list", "table", "inet", "porttrap"])
    assert listing.count("set ban") == 4
    assert "elements = { 192.0.2.9, 198.51.100.1 timeout 1m expires " in listing
    assert "elements = { 198.51.100.0/24 }" in listing


def test_other_tables_are_left_alone(netns: Netns, backend: NftablesBackend) -> None:
    netns.run(["nft", "add table inet other; add set inet other s { type ipv4_addr; }"])
    netns.run(["nft", "add", "element", "inet", "other", "s", "{ 192.0.2.9 }"])
    backend.setup([ban("192.0.2.9", None)], NOW)
    backend.apply([ban("198.51.100.1", 60)], NOW)
    backend.teardown()
    assert netns.run(["nft", "list", "tables"]).splitlines() == ["table inet other"]
    assert "192.0.2.9" in netns.run(["nft", "list", "set", "inet", "other", "s"])


def test_a_refused_target_does_not_hold_back_the_others(
    backend: NftablesBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.setup([ban("192.0.2.0/25", 3600)], NOW)
    overlapping = ban("192.0.2.0/24", 3600)  # an interval set refuses overlapping ranges
    with pytest.raises(FirewallError, match=r"refused 1 of 2 changes, for 192\.0\.2\.0/24 "):
        backend.apply([overlapping, ban("198.51.100.1", 60)], NOW)
    assert sorted(show(entry.target) for entry in backend.entries()) == [
        "192.0.2.0/25",
        "198.51.100.1",
    ]
    assert any("event=firewall-error action=ban address=192.0.2.0/24" in m for m in caplog.messages)


def test_a_table_name_that_is_an_nft_keyword_fails_at_setup(netns: Netns) -> None:
    with netns.inside():
        assert not in_host_netns(), "refusing to bind libnftables to the host's namespace"
        backend = NftablesBackend("meta")
    with pytest.raises(FirewallError, match=r"syntax error.*set another \[firewall\] table"):
        backend.setup([ban("192.0.2.9", None)], NOW)
    assert netns.run(["nft", "list", "tables"]) == ""


def test_a_refused_target_in_one_chunk_does_not_hold_back_other_chunks(
    backend: NftablesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("porttrap.firewall.nftables.CHUNK", 2)
    backend.setup([ban("192.0.2.0/25", 3600)], NOW)
    changes = [
        ban("198.51.100.1", 60),
        ban("192.0.2.0/24", 60),
        ban("198.51.100.2", 60),
        ban("198.51.100.3", 60),
        ban("2001:db8::1", 60),
    ]
    with pytest.raises(FirewallError, match=r"refused 1 of 5 changes, for 192\.0\.2\.0/24 "):
        backend.apply(changes, NOW)
    assert sorted(show(entry.target) for entry in backend.entries()) == [
        "192.0.2.0/25",
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "2001:db8::1",
    ]


def test_entries_reads_the_ban_sets_only_and_a_missing_one_holds_none(
    netns: Netns, backend: NftablesBackend
) -> None:
    """The bans come from the ban sets alone (another set of the table, full of addresses,
    adds none), and a ban set deleted by hand (an older or damaged table read at the start)
    holds none rather than failing the read."""
    backend.setup([ban("192.0.2.9", 3600), ban("198.51.100.0/24", None)], NOW)
    netns.run(["nft", "add set inet porttrap clients_v4 { type ipv4_addr; }"])
    netns.run(["nft", "add", "element", "inet", "porttrap", "clients_v4", "{ 203.0.113.5 }"])
    assert sorted(show(entry.target) for entry in backend.entries()) == [
        "192.0.2.9",
        "198.51.100.0/24",
    ]
    netns.run(["nft", "delete", "chain", "inet", "porttrap", "prerouting"])
    netns.run(["nft", "delete", "set", "inet", "porttrap", "ban_net_v4"])
    assert [show(entry.target) for entry in backend.entries()] == ["192.0.2.9"]


def test_a_rotation_does_not_take_earlier_damage_as_written(
    netns: Netns, backend: NftablesBackend
) -> None:
    """A rule deleted by hand between two checks is still found after the block sets'
    generation rotates in between (the rotation re-reads the digest only of a whole table)."""
    state = SensorState(spec_from_config(load_text('[traps]\nmode = "stealth"\n', None)), {})
    backend.setup([ban("192.0.2.9", 3600)], NOW, state)
    backend.rotate("b")
    assert backend.inspect().damaged is None  # its own change is taken as written
    netns.run(["nft", "flush", "chain", "inet", "porttrap", "prerouting"])
    backend.rotate("a")
    assert backend.inspect().damaged is not None


def record(backend: NftablesBackend, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The nft commands `backend` sends from now on (and sends them)."""
    sent: list[str] = []
    run = backend._nft.run

    def recorded(commands: Sequence[str]) -> None:
        sent.extend(commands)
        run(commands)

    monkeypatch.setattr(backend._nft, "run", recorded)
    return sent


def test_a_ban_on_a_target_no_ban_set_holds_is_one_add_and_others_replace_the_element(
    netns: Netns, backend: NftablesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a setup the backend knows what its ban sets may hold: a ban on another target is
    added once; one on a target that may be there (restored, or banned since) goes through
    add, delete, add, so that its new timeout is the kernel's (Debian 12's kernel keeps the
    old one on a plain add). Each ends in the kernel as it should."""
    sent = record(backend, monkeypatch)
    backend.setup([ban("192.0.2.9", 60)], NOW)
    sent.clear()
    backend.apply([ban("192.0.2.9", None), ban("198.51.100.1", 600)], NOW)
    assert sent == [
        "add element inet porttrap ban_v4 { 192.0.2.9 timeout 1s }",
        "delete element inet porttrap ban_v4 { 192.0.2.9 }",
        "add element inet porttrap ban_v4 { 192.0.2.9, 198.51.100.1 timeout 600s }",
    ]
    sent.clear()
    backend.apply([ban("198.51.100.1", 3600)], NOW)  # written since the setup: may be there
    assert [c.split(" {")[0] for c in sent] == [
        "add element inet porttrap ban_v4", "delete element inet porttrap ban_v4",
        "add element inet porttrap ban_v4",
    ]  # fmt: skip
    listing = netns.run(["nft", "list", "set", "inet", "porttrap", "ban_v4"])
    assert "192.0.2.9, 198.51.100.1 timeout 1h expires" in listing, listing


def test_a_backend_that_has_not_set_up_its_table_takes_every_target_as_maybe_there(
    netns: Netns, backend: NftablesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (a daemon before a reload, `porttrap ban` offline) may have written
    the sets: until its own setup, this backend never adds without deleting first."""
    backend.setup([ban("192.0.2.9", 60)], NOW)
    with netns.inside():
        other = NftablesBackend()
    sent = record(other, monkeypatch)
    other.apply([ban("192.0.2.9", None)], NOW)
    assert sent[1] == "delete element inet porttrap ban_v4 { 192.0.2.9 }", sent
    assert "elements = { 192.0.2.9 }" in netns.run(
        ["nft", "list", "set", "inet", "porttrap", "ban_v4"]
    )
