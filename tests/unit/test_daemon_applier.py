"""The applier with the shipped fakes: batching per loop turn, kernel before store, and the
kernel put right again after it refused a batch."""

from __future__ import annotations

import asyncio
from ipaddress import ip_network

import pytest

from porttrap.daemon import applier as applier_mod
from porttrap.daemon.applier import Applier
from porttrap.model import Ban, Unban
from porttrap.testing import FakeClock
from porttrap.testing.memory_firewall import MemoryFirewall
from porttrap.testing.memory_store import MemoryStore


class Recorder(MemoryFirewall):
    """Counts transactions."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.batches: list[int] = []

    def apply(self, changes, now):  # type: ignore[no-untyped-def]
        self.batches.append(len(changes))
        super().apply(changes, now)


def make(active: list[Ban] | None = None) -> tuple[Applier, Recorder, MemoryStore, FakeClock]:
    clock = FakeClock()
    firewall, store = Recorder(clock), MemoryStore()
    firewall.setup([], clock.now())
    return Applier(firewall, store, clock, lambda now: list(active or [])), firewall, store, clock


def ban(target: str, clock: FakeClock, seconds: float = 3600) -> Ban:
    return Ban(ip_network(target), clock.now(), clock.now() + seconds, 1, "trap:tcp/23")


def test_changes_of_one_loop_turn_go_to_the_kernel_as_one_batch() -> None:
    async def scenario() -> None:
        applier, firewall, store, clock = make()
        for n in range(5):
            applier.submit([ban(f"198.51.100.{n}", clock)])
        assert firewall.batches == []  # nothing yet: still in the same loop turn
        await asyncio.sleep(0)
        assert firewall.batches == [5]
        assert len(store.active_bans(clock.now())) == 5

    asyncio.run(scenario())


def test_an_unban_reaches_kernel_and_store() -> None:
    async def scenario() -> None:
        applier, firewall, store, clock = make()
        applier.apply_now([ban("198.51.100.1", clock)])
        applier.apply_now([Unban(ip_network("198.51.100.1/32"), clock.now(), "manual")])
        assert firewall.entries() == [] and store.active_bans(clock.now()) == []

    asyncio.run(scenario())


def test_a_refused_batch_is_recorded_and_the_kernel_rebuilt_later(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(applier_mod, "RECONCILE_DELAY", 0.01)
    caplog.set_level("INFO", logger="porttrap")

    async def scenario() -> None:
        clock = FakeClock()
        wanted = [ban("198.51.100.1", clock), ban("2001:db8::1", clock)]
        applier, firewall, store, _ = make(active=wanted)
        firewall.fail_next()
        applier.apply_now(wanted)
        assert firewall.entries() == []  # the kernel refused...
        assert len(store.active_bans(clock.now())) == 2  # ...the decision still stands
        await asyncio.sleep(0.1)
        assert sorted(str(e.target) for e in firewall.entries()) == [
            "198.51.100.1/32",
            "2001:db8::1/128",
        ]

    asyncio.run(scenario())
    assert "event=firewall-error" in caplog.text and "event=reconciled bans=2" in caplog.text


def test_a_bulk_batch_is_logged_as_one_summary_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="porttrap")

    async def scenario() -> None:
        applier, _, _, clock = make()
        applier.apply_now([ban(f"2001:db8::{n:x}", clock) for n in range(1, 1500)])

    asyncio.run(scenario())
    assert "event=bulk-ban count=1499" in caplog.text
    assert "event=ban address=" not in caplog.text
