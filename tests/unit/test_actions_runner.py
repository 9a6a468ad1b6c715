"""The runner's limits: at most max_running at once, at most `queue` waiting, the rest dropped
and counted (logged once per burst); ban actions before hit actions; shutdown."""

from __future__ import annotations

import asyncio
import os
from ipaddress import ip_network

import pytest

from porttrap.actions import events
from porttrap.actions.jobs import CommandJob
from porttrap.actions.process import Ending
from porttrap.actions.runner import Runner
from porttrap.config.schema import CommandAction, Modes
from porttrap.model import Ban


class FakeJob:
    """A job that ends when the test says so."""

    def __init__(self, name: str, *, hit: bool = False) -> None:
        self.name = name
        self.hit = hit
        self.future: asyncio.Future[Ending] | None = None
        self.killed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Ending]:
        self.future = loop.create_future()
        return self.future

    def kill(self) -> None:
        self.killed = True
        assert self.future is not None
        self.future.set_result(Ending.FAILED)

    def end(self, ending: Ending = Ending.OK) -> None:
        assert self.future is not None
        self.future.set_result(ending)

    @property
    def started(self) -> bool:
        return self.future is not None


def test_at_most_max_running_run_and_the_others_wait_in_order() -> None:
    async def scenario() -> None:
        runner = Runner(max_running=2, queue=10)
        jobs = [FakeJob(f"j{n}") for n in range(5)]
        for job in jobs:
            runner.submit(job)
        assert [job.started for job in jobs] == [True, True, False, False, False]
        assert (runner.running, runner.waiting) == (2, 3)
        jobs[1].end(Ending.FAILED)
        await asyncio.sleep(0)
        assert [job.started for job in jobs] == [True, True, True, False, False]
        jobs[0].end(Ending.TIMED_OUT)
        jobs[2].end()
        await asyncio.sleep(0)
        assert all(job.started for job in jobs)
        jobs[3].end()
        jobs[4].end()
        await asyncio.sleep(0)
        assert runner.status() == {
            "run": 5,
            "failed": 1,
            "timed_out": 1,
            "dropped": 0,
            "running": 0,
            "waiting": 0,
        }

    asyncio.run(scenario())


def test_beyond_the_queue_actions_are_dropped_counted_and_logged_once_per_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="porttrap")

    async def scenario() -> None:
        runner = Runner(max_running=1, queue=2)
        jobs = [FakeJob(f"j{n}") for n in range(10)]
        for job in jobs:
            runner.submit(job)
        assert (runner.running, runner.waiting, runner.dropped) == (1, 2, 7)
        assert caplog.text.count("event=action-dropped") == 1
        for job in jobs[:3]:
            job.end()
            await asyncio.sleep(0)
        assert "event=actions-dropped count=7" in caplog.text  # the burst is over
        for _ in range(4):  # one runs, two wait, the fourth starts a new burst
            runner.submit(FakeJob("next"))
        assert caplog.text.count("event=action-dropped") == 2

    asyncio.run(scenario())


def test_ban_actions_go_first_and_take_the_place_of_hit_actions() -> None:
    async def scenario() -> None:
        runner = Runner(max_running=1, queue=2)
        running = FakeJob("running", hit=True)
        hits = [FakeJob(f"hit{n}", hit=True) for n in range(2)]
        ban = FakeJob("ban")
        for job in (running, *hits, ban):
            runner.submit(job)
        assert runner.dropped == 1 and runner.waiting == 2  # the newest hit's action went
        running.end()
        await asyncio.sleep(0)
        assert ban.started and not hits[0].started and not hits[1].started
        ban.end()
        await asyncio.sleep(0)
        assert hits[0].started and not hits[1].started

    asyncio.run(scenario())


def test_close_drops_what_waits_and_kills_what_outlives_the_grace() -> None:
    async def scenario() -> None:
        runner = Runner(max_running=2, queue=10)
        quick, slow, waiting = FakeJob("quick"), FakeJob("slow"), FakeJob("waiting")
        for job in (quick, slow, waiting):
            runner.submit(job)
        asyncio.get_running_loop().call_later(0.01, quick.end)
        dropped, killed = await runner.close(grace=0.2)
        assert (dropped, killed) == (1, 1)
        assert slow.killed and not quick.killed and not waiting.started
        runner.submit(FakeJob("late"))  # after close: dropped
        assert runner.dropped == 2

    asyncio.run(scenario())


def test_real_quick_commands_within_the_limits() -> None:
    action = CommandAction(run=("/bin/sh", "-c", "exit $PORT$"))
    bans = [Ban(ip_network(f"192.0.2.{n}/32"), 0.0, None, 1, f"trap:tcp/{n % 2}") for n in
            range(1, 21)]  # fmt: skip

    async def scenario() -> dict[str, int]:
        runner = Runner(max_running=3, queue=10)
        peak = 0
        for ban in bans:
            runner.submit(CommandJob(action, events.from_ban(ban, Modes()), os.environ))
            peak = max(peak, runner.running)
        while runner.running or runner.waiting:
            peak = max(peak, runner.running)
            await asyncio.sleep(0.01)
        assert peak == 3
        return runner.status()

    status = asyncio.run(scenario())
    assert status == {
        "run": 13,
        "failed": 7,  # 1, 3 ... 13 exit 1 (3 ran at once, 10 waited, 7 were dropped)
        "timed_out": 0,
        "dropped": 7,
        "running": 0,
        "waiting": 0,
    }


def test_full_tells_a_flood_to_drop_before_building_anything() -> None:
    async def scenario() -> None:
        runner = Runner(max_running=1, queue=1)
        assert not runner.full(hit=True)
        runner.submit(FakeJob("running", hit=True))
        assert not runner.full(hit=True)
        runner.submit(FakeJob("waiting", hit=True))
        assert runner.full(hit=True)
        assert not runner.full(hit=False)  # a ban's action would take the hit's place
        runner.drop(3)
        assert runner.dropped == 3
        await runner.close(grace=0.0)
        assert runner.full(hit=False)

    asyncio.run(scenario())
