"""The shell around the core, with the shipped fakes for the kernel and the store: the changes
of a loop turn reach the kernel as one batch, a refused batch is still recorded and the kernel
rebuilt later, bulk batches are logged as a summary, a backend without kernel timeouts is told
when bans end, and the firewall check rebuilds a vanished ruleset."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from porttrap.config.schema import Config
from porttrap.core import core as core_mod
from porttrap.core.events import AdminBan, AdminUnban, Started, Tick
from porttrap.daemon.effects import log_changes
from porttrap.daemon.shell import Shell
from porttrap.daemon.wiring import make_shell
from porttrap.errors import StoreError
from porttrap.model import Ban, Change, Hit, Proto
from porttrap.testing import FakeClock, MemoryFirewall, MemoryStore

T0 = 1_800_000_000.0


class Recorder(MemoryFirewall):
    """Counts transactions."""

    def __init__(self, clock: FakeClock, *, timeouts: bool = True) -> None:
        super().__init__(clock, timeouts=timeouts)
        self.batches: list[int] = []

    def apply(self, changes: Sequence[Change], now: float) -> None:
        self.batches.append(len(changes))
        super().apply(changes, now)


def shell_of(tmp_path: Path, timeouts: bool = True) -> tuple[Shell, Recorder, FakeClock]:
    clock = FakeClock(T0)
    firewall = Recorder(clock, timeouts=timeouts)
    shell = make_shell(Config(state_dir=tmp_path), clock, MemoryStore(), firewall)
    shell.feed(Started(frozenset(), []))
    return shell, firewall, clock


def hit(source: str) -> Hit:
    return Hit(T0, ip_address(source), 40000, ip_address("192.0.2.1"), 23, Proto.TCP)


def held(firewall: MemoryFirewall) -> list[str]:
    return sorted(str(entry.target) for entry in firewall.entries())


def test_the_bans_of_one_loop_turn_go_to_the_kernel_as_one_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        shell, firewall, _ = shell_of(tmp_path)
        for n in range(5):
            shell.on_hit(hit(f"198.51.100.{n}"))
        assert firewall.batches == []  # nothing yet: still in the same loop turn
        await asyncio.sleep(0)
        assert firewall.batches == [5]
        shell.writer.close()
        assert len(shell.store.active_bans(T0)) == 5

    asyncio.run(scenario())


def test_an_unban_reaches_kernel_and_store(tmp_path: Path) -> None:
    shell, firewall, _ = shell_of(tmp_path)
    shell.feed(AdminBan((ip_network("198.51.100.1/32"),)))
    assert held(firewall) == ["198.51.100.1/32"]
    shell.feed(AdminUnban((ip_network("198.51.100.1/32"),)))
    shell.writer.close()
    assert held(firewall) == [] and shell.store.active_bans(T0) == []


def test_a_refused_batch_is_recorded_and_the_kernel_rebuilt_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(core_mod, "RECONCILE_DELAY", 0.01)
    caplog.set_level("INFO", logger="porttrap")

    async def scenario() -> None:
        shell, firewall, _ = shell_of(tmp_path)
        firewall.fail_next()
        shell.feed(AdminBan((ip_network("198.51.100.1/32"), ip_network("2001:db8::1/128"))))
        assert held(firewall) == []  # the kernel refused...
        for _ in range(500):  # ...and it is rebuilt a moment later, with both
            await asyncio.sleep(0.01)
            if held(firewall):
                break
        assert held(firewall) == ["198.51.100.1/32", "2001:db8::1/128"]
        shell.writer.close()
        assert len(shell.store.active_bans(T0)) == 2  # the decision stood meanwhile

    asyncio.run(scenario())
    assert "event=firewall-error" in caplog.text and "event=reconciled bans=2" in caplog.text


def test_a_bulk_batch_is_logged_as_one_summary_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="porttrap")
    bans = [Ban(ip_network(f"2001:db8::{n:x}"), T0, T0 + 60, 1, "manual") for n in range(1, 1500)]
    log_changes(bans)
    assert "event=bulk-ban count=1499" in caplog.text
    assert "event=ban address=" not in caplog.text


def test_a_backend_without_kernel_timeouts_is_told_when_bans_end(tmp_path: Path) -> None:
    shell, firewall, clock = shell_of(tmp_path, timeouts=False)
    shell.feed(AdminBan((ip_network("198.51.100.1/32"),), duration=60))
    shell.feed(AdminBan((ip_network("198.51.100.2/32"),), permanent=True))
    clock.advance(59)
    shell.feed(Tick())
    assert held(firewall) == ["198.51.100.1/32", "198.51.100.2/32"]
    clock.advance(1)
    shell.feed(Tick())  # its end: the core says so, and the backend lets it go
    assert held(firewall) == ["198.51.100.2/32"]


def test_the_firewall_check_and_upkeep_run_every_ten_ticks(tmp_path: Path) -> None:
    async def scenario() -> None:
        shell, firewall, _ = shell_of(tmp_path)
        for _ in range(9):
            shell.feed(Tick())
        assert firewall.maintained == 0
        shell.feed(Tick())
        assert firewall.maintained == 1
        firewall.vanish()  # `nft flush ruleset`
        shell.feed(AdminBan((ip_network("198.51.100.1/32"),)))  # refused: no table
        assert held(firewall) == []
        for _ in range(10):
            shell.feed(Tick())
        assert held(firewall) == ["198.51.100.1/32"]  # the check rebuilt it, with the ban

    asyncio.run(scenario())


def test_a_refused_expiry_is_retried_as_a_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without kernel timeouts, a refused Expire would hold the ban for good."""
    monkeypatch.setattr(core_mod, "RECONCILE_DELAY", 0.01)

    async def scenario() -> None:
        shell, firewall, clock = shell_of(tmp_path, timeouts=False)
        shell.feed(AdminBan((ip_network("198.51.100.1/32"),), duration=60))
        clock.advance(60)
        firewall.fail_next()
        shell.feed(Tick())  # the ban ended; the kernel refused to let it go
        assert held(firewall) == ["198.51.100.1/32"]
        for _ in range(500):
            await asyncio.sleep(0.01)
            if not held(firewall):
                break
        assert held(firewall) == []  # the rebuild holds only the active bans: none

    asyncio.run(scenario())


def test_the_check_rebuilds_a_damaged_ruleset_and_a_lost_ban(tmp_path: Path) -> None:
    async def scenario() -> None:
        shell, firewall, _ = shell_of(tmp_path)
        shell.feed(AdminBan((ip_network("198.51.100.1/32"),)))
        firewall.damage()  # the prerouting chain deleted: the table is still there
        for _ in range(10):
            shell.feed(Tick())
        assert firewall.inspect().damaged is None  # rebuilt
        firewall.forget(ip_network("198.51.100.1/32"))  # `nft delete element`
        for _ in range(10):
            shell.feed(Tick())
        assert held(firewall) == ["198.51.100.1/32"]

    asyncio.run(scenario())


def test_a_ban_answer_says_whether_the_store_holds_it(tmp_path: Path) -> None:
    class FullStore(MemoryStore):
        def add_bans(self, bans: Sequence[Ban]) -> None:
            raise StoreError("database or disk is full")

    async def scenario() -> None:
        clock = FakeClock(T0)
        shell = make_shell(Config(state_dir=tmp_path), clock, FullStore(), MemoryFirewall(clock))
        shell.feed(Started(frozenset(), []))
        shell.writer.start()
        answer = await shell.answer(shell.feed(AdminBan((ip_network("198.51.100.1/32"),))))
        assert answer["recorded"] is False
        assert answer["store_error"] == "database or disk is full"
        shell.writer.close()

    asyncio.run(scenario())


def test_the_start_reads_the_kernels_bans_unless_the_last_stop_was_clean(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    firewall = MemoryFirewall(clock)
    firewall.setup([Ban(ip_network("198.51.100.9/32"), T0, T0 + 600, 1, "lost")], T0)
    shell = make_shell(Config(state_dir=tmp_path), clock, MemoryStore(), firewall)
    assert shell._kernel_bans() == ((ip_network("198.51.100.9/32"), 600.0),)
    (tmp_path / "clean-stop").touch()
    assert shell._kernel_bans() == ()
    assert not (tmp_path / "clean-stop").exists(), "a start uses the mark up"


def test_a_ban_ends_on_time_when_the_wall_clock_steps_back(tmp_path: Path) -> None:
    """A one-hour ban; after 30 minutes the wall clock steps back an hour. The kernel lifts
    the ban 30 minutes later: so does the daemon (not 90 minutes later)."""
    shell, _, clock = shell_of(tmp_path)
    shell.feed(AdminBan((ip_network("198.51.100.1/32"),), duration=3600))
    shell.feed(Tick(mono=clock.monotonic()))
    clock.advance(1800)
    shell.feed(Tick(mono=clock.monotonic()))
    clock.step(-3600)
    shell.feed(Tick(mono=clock.monotonic()))
    assert [str(b.target) for b in shell.snapshot().active] == ["198.51.100.1/32"]
    clock.advance(1801)
    shell.feed(Tick(mono=clock.monotonic()))
    assert list(shell.snapshot().active) == []


def test_a_stop_after_the_wall_clock_jumped_is_not_marked_clean(tmp_path: Path) -> None:
    """The database holds the times of a wall clock that jumped: the next start must read the
    kernel's bans and their true time left, as after a crash."""
    shell, _, clock = shell_of(tmp_path)
    shell._restored = True
    shell._mark_clean()
    assert (tmp_path / "clean-stop").exists()
    (tmp_path / "clean-stop").unlink()
    shell.feed(Tick(mono=clock.monotonic()))
    clock.step(100 * 86400)
    shell.feed(Tick(mono=clock.monotonic()))
    assert shell.core.clock_skew
    shell._mark_clean()
    assert not (tmp_path / "clean-stop").exists()


def test_a_clean_stop_mark_that_cannot_be_removed_reads_the_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock(T0)
    firewall = MemoryFirewall(clock)
    firewall.setup([Ban(ip_network("198.51.100.9/32"), T0, T0 + 600, 1, "lost")], T0)
    shell = make_shell(Config(state_dir=tmp_path), clock, MemoryStore(), firewall)
    (tmp_path / "clean-stop").touch()

    def read_only(_path: Path, missing_ok: bool = False) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", read_only)
    assert shell._kernel_bans() == ((ip_network("198.51.100.9/32"), 600.0),)
