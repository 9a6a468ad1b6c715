"""The hold in the daemon's shell (porttrap.daemon.hold), with a fake kernel at the far end of
the queue's socket and the in-memory firewall: held SYNs reach the core, verdicts reach the
kernel, released sources go out together, the heartbeat beats only while the queue is read,
and status, the metrics and `porttrap status` show what the hold did. The real kernel is in
tests/integration/test_hold_*.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import Metric

from nfqueue_frames import Kernel, queued
from porttrap.cli import output
from porttrap.config.loader import load_text
from porttrap.config.schema import Config
from porttrap.core import commands as c
from porttrap.core import reload, views
from porttrap.core.events import CountersRead, HitSeen, Started, Stopping
from porttrap.daemon.metrics import registry_for
from porttrap.daemon.shell import Shell
from porttrap.daemon.wiring import make_shell
from porttrap.errors import FirewallError
from porttrap.model import Hit, Proto
from porttrap.sensors import nfqueue
from porttrap.testing import FakeClock, MemoryFirewall, MemoryStore
from scrape import by, families, values
from waiting import eventually

SCANNER = ip_address("192.0.2.2")  # the source of nfqueue_frames.IPV4_SYN, to port 8080
HOST = ip_address("192.0.2.1")
HOLD = '[traps]\nmode = "advanced"\n[kernel]\nhold = "400ms"\n'
OFF = '[traps]\nmode = "advanced"\n[kernel]\nhold = "0"\n'
SERVED = {Proto.TCP: frozenset({8080}), Proto.UDP: frozenset()}
ACCEPT, DROP, REPEAT = 1, 0, 4


def config(tmp_path: Path, text: str = HOLD) -> Config:
    return load_text(f'state_dir = "{tmp_path}"\n{text}', None)


class Host:
    """A shell over fakes, started, with its hold's queue on a socketpair."""

    def __init__(self, tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        clock = FakeClock()
        self.firewall = MemoryFirewall(clock)
        self.shell = make_shell(
            config(tmp_path), clock, MemoryStore(), self.firewall, self.firewall
        )
        self.shell.feed(Started(frozenset({HOST}), [], served=SERVED))
        mine, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        mine.setblocking(False)
        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(nfqueue, "open_queue_socket", lambda *_: (mine, []))

        async def bind() -> None:
            self.shell.open_hold(self.shell.config)

        loop.run_until_complete(bind())
        self.kernel = Kernel(self.theirs, loop)
        # The ends of holds are fed by the test, not by a timer: nothing depends on timing.
        self.scheduled: list[c.Schedule] = []
        self.shell._effects[c.Schedule] = self.scheduled.append

    def end_holds(self) -> None:
        """Feed the events the core scheduled (the ends of the holds), on the loop."""

        async def feed() -> None:
            events, self.scheduled[:] = [x.event for x in self.scheduled], []
            for event in events:
                self.shell.feed(event)

        self.loop.run_until_complete(feed())
        self.turns()

    def turns(self, count: int = 3) -> None:
        for _ in range(count):
            self.loop.run_until_complete(asyncio.sleep(0))

    def verdicts(self, count: int) -> list[tuple[int, int]]:
        """The next `count` verdicts, waiting for them with the loop running."""
        found: list[tuple[int, int]] = []

        def arrived() -> bool:
            found.extend(self.kernel.verdicts())
            return len(found) >= count

        self.loop.run_until_complete(eventually(arrived, what=f"{count} verdicts"))
        return found

    def close(self) -> None:
        assert self.shell.hold is not None
        self.shell.hold.close()
        self.theirs.close()
        self._patch.undo()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    loop = asyncio.new_event_loop()
    made = Host(tmp_path, loop)
    yield made
    made.close()
    loop.close()


def status(shell: Shell) -> dict[str, object]:
    found = views.status(shell.snapshot(), 1)["hold"]
    assert isinstance(found, dict)
    return found


def scrape(shell: Shell) -> dict[str, Metric]:
    return families(generate_latest(registry_for(shell.snapshot)).decode())


def trap_hit() -> HitSeen:
    return HitSeen(Hit(FakeClock().now(), SCANNER, 40001, HOST, 23, Proto.TCP, "syn"))


def test_a_held_syn_is_let_through_when_its_hold_ends_and_its_source_released(
    host: Host,
) -> None:
    host.kernel.send(queued(1))
    assert host.kernel.verdicts() == []  # held: 400 ms
    assert status(host.shell)["held_now"] == 1
    host.end_holds()
    # released in the kernel first, then through the rules again: a block drops it there
    assert host.verdicts(1) == [(REPEAT, 1)]
    assert host.firewall.released == {SCANNER}
    host.kernel.send(queued(2))  # queued before the kernel's set had it: answered at once
    assert host.verdicts(1) == [(REPEAT, 2)]
    assert host.firewall.released == {SCANNER}
    found = status(host.shell)
    assert (found["let_through"], found["hidden"], found["remembered"]) == (1, 0, 1)


def test_a_trap_touch_meanwhile_drops_the_held_syn(host: Host) -> None:
    host.kernel.send(queued(1))
    host.loop.run_until_complete(_feed(host.shell, trap_hit()))
    host.turns()
    assert host.kernel.verdicts() == [(DROP, 1)]
    assert host.firewall.released == set()
    assert status(host.shell)["hidden"] == 1


async def _feed(shell: Shell, event: HitSeen) -> None:
    shell.on_hit(event.hit)


def test_stopping_holding_answers_every_held_syn_before_unbinding(host: Host) -> None:
    host.kernel.send(queued(1))
    host.kernel.send(queued(2))
    host.loop.run_until_complete(_stop(host.shell))
    assert sorted(host.kernel.verdicts()) == [(ACCEPT, 1), (ACCEPT, 2)]
    assert host.shell.hold is not None and host.shell.hold.reader is None


async def _stop(shell: Shell) -> None:
    shell._run(shell.core.handle(Stopping(), shell.clock.now()))
    assert shell.hold is not None
    shell.hold.close()


def test_the_heartbeat_beats_only_while_the_queue_is_read(host: Host) -> None:
    hold = host.shell.hold
    assert hold is not None and hold.reader is not None
    hold.heartbeat()
    assert host.firewall.heartbeats == 1
    hold.reader._pause()  # an error paused the reader: the kernel must stop holding
    hold.heartbeat()
    assert host.firewall.heartbeats == 1
    hold.close()
    hold.heartbeat()
    assert host.firewall.heartbeats == 1


def test_status_metrics_and_text_show_what_the_hold_did(host: Host) -> None:
    host.kernel.send(queued(1))
    host.loop.run_until_complete(_feed(host.shell, trap_hit()))
    counters = {"held": 3, "hold_over": 4, "hold_idle": 5, "hold_suspect": 6}
    host.shell.feed(CountersRead(counters, 1.0))
    found = status(host.shell)
    assert found == {
        "hold_ms": 400.0, "queue": 7022, "bound": True, "queued": 3, "held_now": 0,
        "let_through": 0, "hidden": 1, "suspect": 6, "remembered": 0, "over_rate": 4, "idle": 5,
        "failed_open": 2, "refused": 0, "overruns": 0,
    }  # fmt: skip
    got = scrape(host.shell)
    assert by("result", got["porttrap_hold_syns"]) == {
        "queued": 3, "let_through": 0, "hidden": 1, "suspect": 6, "over_rate": 4, "idle": 5,
        "failed_open": 2,
    }  # fmt: skip
    assert values(got["porttrap_hold_waiting"]) == {frozenset(): 0}
    text = output.hold_text(found)
    assert "3 held, 0 let through, 1 hidden" in text[0]
    assert "6 dropped as a scanner's" in text[0]
    assert "4 over hold_rate, 5 while the daemon was not ready, 2 with the queue full" in text[1]


def test_the_hold_is_off_without_the_key_and_then_absent_from_status(tmp_path: Path) -> None:
    firewall = MemoryFirewall(FakeClock())
    text = '[traps]\nmode = "advanced"\n[kernel]\nhold = "0"\n'
    shell = make_shell(config(tmp_path, text), firewall._clock, MemoryStore(), firewall, firewall)
    shell.feed(
        Started(frozenset({HOST}), [], served={Proto.TCP: frozenset(), Proto.UDP: frozenset()})
    )
    assert views.status(shell.snapshot(), 1)["hold"] is None
    assert scrape(shell)["porttrap_hold_syns"].samples == []


def test_a_changed_hold_queue_needs_a_restart_only_while_holding(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(tmp_path, HOLD + "hold_queue = 9\n")
    assert reload.needs_restart(old, new) == [
        "[kernel] hold_queue: 7022 -> 9 (the SYNs held now wait in the old queue)"
    ]
    off = '[traps]\nmode = "advanced"\n[kernel]\nhold = "0"\n'
    assert (
        reload.needs_restart(config(tmp_path, off), config(tmp_path, off + "hold_queue = 9\n"))
        == []
    )


def test_a_refused_release_lets_the_syn_through_and_is_logged_once_until_one_succeeds(
    host: Host, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hold = host.shell.hold
    assert hold is not None

    def full(_addresses: object) -> None:
        raise FirewallError("set released_v4 is full")

    async def release(n: int) -> None:
        assert hold is not None
        hold.release(c.Release(ip_address(f"198.51.100.{n}"), n))
        await asyncio.sleep(0)  # the batch goes out once the loop turn is over

    monkeypatch.setattr(host.firewall, "release", full)
    for n in (1, 2):
        host.loop.run_until_complete(release(n))
    assert caplog.text.count("hold-release-failed") == 1
    # not through the rules again (they would hold it once more): let through as it is
    assert host.verdicts(2) == [(ACCEPT, 1), (ACCEPT, 2)]
    monkeypatch.undo()
    host.loop.run_until_complete(release(3))
    assert host.firewall.released == {ip_address("198.51.100.3")}
    assert host.verdicts(1) == [(REPEAT, 3)]
