"""Backend behaviour that needs no kernel: the nftables backend's per-target retry (with a
fake libnftables), dry-run's log lines, the memory fake's failure injection."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import pytest

from porttrap.errors import FirewallError
from porttrap.firewall.dryrun import DryRunBackend
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.model import Ban, Change, Unban
from porttrap.testing import FakeClock, MemoryFirewall

NOW = 1_800_000_000.0


def ban(target: str, seconds: float | None = 60) -> Ban:
    expires = None if seconds is None else NOW + seconds
    return Ban(ipaddress.ip_network(target), NOW, expires, 2, "trap:tcp/23")


class FakeNft(Nft):
    """Refuses any batch that mentions one of `bad`; records every batch."""

    def __init__(self, bad: set[str]) -> None:  # no libnftables here
        self.bad = bad
        self.batches: list[Sequence[str]] = []

    def run(self, commands: Sequence[str]) -> None:
        self.batches.append(commands)
        if any(address in "\n".join(commands) for address in self.bad):
            raise FirewallError("nftables refused adding 1 element to set ban_v4: boom")


class Tables(NftObjects):
    """Stands in for the netlink reader: the tables that exist."""

    def __init__(self, *names: str) -> None:  # no socket here
        self.names = set(names)

    def table_exists(self, table: str) -> bool:
        return table in self.names

    def shape(self, table: str) -> str:
        return "as written"


def backend(nft: FakeNft, table: str = "porttrap", *tables: str) -> NftablesBackend:
    """The backend over `nft`, with `tables` in the kernel (by default its own)."""
    return NftablesBackend(table, nft=nft, objects=Tables(*(tables or (table,))))


def test_apply_retries_each_target_when_the_batch_fails(caplog: pytest.LogCaptureFixture) -> None:
    nft = FakeNft(bad={"198.51.100.66"})
    changes: list[Change] = [
        ban("198.51.100.1"),
        ban("198.51.100.66"),
        Unban(ipaddress.ip_network("198.51.100.2"), NOW, ""),
    ]
    with caplog.at_level(logging.ERROR, "porttrap"), pytest.raises(FirewallError) as raised:
        backend(nft).apply(changes, NOW)
    assert len(nft.batches) == 1 + 3
    assert "refused 1 of 3 changes, for 198.51.100.66 " in str(raised.value)
    assert caplog.messages == [
        "event=firewall-error action=ban address=198.51.100.66 "
        'error="nftables refused adding 1 element to set ban_v4: boom"'
    ]


def test_apply_says_so_when_the_table_is_missing() -> None:
    nft = FakeNft(bad={"198.51.100.1"})
    with pytest.raises(FirewallError, match="table inet porttrap is missing"):
        backend(nft, "porttrap", "other").apply([ban("198.51.100.1")], NOW)
    assert len(nft.batches) == 1


def test_apply_of_nothing_sends_nothing() -> None:
    nft = FakeNft(bad=set())
    backend(nft).apply([], NOW)
    assert nft.batches == []


def test_dry_run_logs_each_change(caplog: pytest.LogCaptureFixture) -> None:
    backend = DryRunBackend(FakeClock(NOW))
    with caplog.at_level(logging.INFO, "porttrap"):
        backend.setup([ban("192.0.2.1", None), ban("192.0.2.2")], NOW)
        backend.apply(
            [ban("2001:db8::/48", 3600), Unban(ipaddress.ip_network("192.0.2.1"), NOW, "manual")],
            NOW,
        )
        backend.teardown()
    assert caplog.messages == [
        "event=dry-run-setup bans=2 permanent=1",
        "event=dry-run-ban address=2001:db8::/48 until=2027-01-15T09:00:00Z ban_count=2 "
        "reason=trap:tcp/23",
        "event=dry-run-unban address=192.0.2.1 reason=manual",
        "event=dry-run-teardown",
    ]


def test_memory_fail_next_raises_once_and_changes_nothing() -> None:
    memory = MemoryFirewall(FakeClock(NOW))
    memory.setup([ban("192.0.2.1")], NOW)
    memory.fail_next()
    with pytest.raises(FirewallError, match="simulated"):
        memory.apply([ban("192.0.2.2")], NOW)
    assert [str(entry.target) for entry in memory.entries()] == ["192.0.2.1/32"]
    memory.apply([ban("192.0.2.2")], NOW)
    assert len(memory.entries()) == 2


def test_memory_timeouts_run_out_on_the_clock() -> None:
    clock = FakeClock(NOW)
    memory = MemoryFirewall(clock)
    memory.setup([ban("192.0.2.1", 10), ban("192.0.2.2", None)], NOW)
    clock.advance(9.5)
    assert [(str(e.target), e.remaining) for e in memory.entries()] == [
        ("192.0.2.1/32", 0.5),
        ("192.0.2.2/32", None),
    ]
    clock.advance(0.5)
    assert [str(e.target) for e in memory.entries()] == ["192.0.2.2/32"]


def test_a_syntax_error_suggests_another_table_name() -> None:
    class Refusing(FakeNft):
        def run(self, commands: Sequence[str]) -> None:
            raise FirewallError("nftables refused adding table ip: syntax error, unexpected ip")

    with pytest.raises(
        FirewallError, match=r"may not take 'ip' as a table name.*e\.g\. \"porttrap\""
    ):
        backend(Refusing(bad=set()), "ip").setup([], NOW)
