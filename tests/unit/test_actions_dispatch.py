"""Which actions each event calls for, and when: `first` commands started before the kernel
apply, the others after it; unbans and expiries; hit hooks under a flood; respond "command"
and "log"; shutdown; what `porttrap status` shows. The core and its shell are real, the
firewall and store are the shipped fakes, the commands are real processes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from porttrap.actions.dispatch import Dispatcher
from porttrap.cli import output
from porttrap.config.schema import (
    Actions,
    BanPolicy,
    CommandAction,
    Config,
    Event,
    HostsDenyAction,
    Respond,
)
from porttrap.core.events import AdminBan, AdminUnban, Started, Tick, TurnEnded
from porttrap.daemon.shell import Shell
from porttrap.daemon.wiring import make_shell
from porttrap.daemon.writer import Job, StoreWriter
from porttrap.model import Ban, Change, Hit, Outcome, Proto
from porttrap.policy import Policy
from porttrap.store.base import Store
from porttrap.testing import FakeClock, MemoryFirewall, MemoryStore

ALL = frozenset(Event)


def recording(log: Path, *, first: bool = False, on: frozenset[Event] = ALL) -> CommandAction:
    """A command that appends one line per event to `log`."""
    line = f"echo $PORTTRAP_EVENT $TARGET$ $PORT$ $MODE$ $PORTTRAP_REASON >> {log}"
    return CommandAction(run=(line,), shell=True, on=on, first=first)


def recorded(log: Path) -> list[str]:
    return sorted(log.read_text().splitlines()) if log.exists() else []


async def settle(dispatcher: Dispatcher) -> None:
    """Until every action has ended."""
    while dispatcher.runner.running or dispatcher.runner.waiting:
        await asyncio.sleep(0.01)


class Watching(MemoryFirewall):
    """Notes how many actions had been started when each batch reached the kernel."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.dispatcher: Dispatcher | None = None
        self.started_before: list[int] = []

    def apply(self, changes: Sequence[Change], now: float) -> None:
        assert self.dispatcher is not None
        self.started_before.append(self.dispatcher.runner.run)
        super().apply(changes, now)


@dataclass
class Rig:
    """The real core and shell over the fakes, driven by events as the daemon's loop would."""

    shell: Shell
    firewall: Watching
    clock: FakeClock

    @property
    def dispatcher(self) -> Dispatcher:
        return self.shell.actions

    @property
    def policy(self) -> Policy:
        return self.shell.core.policy

    @property
    def store(self) -> Store:
        return self.shell.store

    def ban(self, *targets: str, duration: float | None = None) -> None:
        self.shell.feed(AdminBan(tuple(ip_network(t) for t in targets), duration))

    def unban(self, *targets: str) -> None:
        self.shell.feed(AdminUnban(tuple(ip_network(t) for t in targets)))

    def hit(self, made: Hit) -> None:
        """A hit, and the end of its loop turn."""
        self.shell.on_hit(made)
        self.shell.feed(TurnEnded())

    def tick(self) -> None:
        self.shell.feed(Tick())


def wired(actions: Actions, tmp_path: Path, respond: Respond = Respond.BAN) -> Rig:
    clock = FakeClock()
    firewall = Watching(clock)
    config = Config(
        state_dir=tmp_path, actions=actions, ban=BanPolicy(respond_tcp=respond, respond_udp=respond)
    )
    shell = make_shell(config, clock, MemoryStore(), firewall)
    firewall.dispatcher = shell.actions
    shell.writer = shell.effects.writer = InlineWriter()
    shell.feed(Started(frozenset(), []))
    return Rig(shell, firewall, clock)


class InlineWriter(StoreWriter):
    """Writes at once, on the caller's thread."""

    def submit(self, job: Job) -> None:
        job()


def hit(source: str, clock: FakeClock, port: int = 23) -> Hit:
    return Hit(clock.now(), ip_address(source), 40000, ip_address("203.0.113.1"), port, Proto.TCP)


def test_first_commands_start_before_the_kernel_apply_and_the_others_after(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    actions = Actions(commands=(recording(log, first=True), recording(log)))

    async def scenario() -> None:
        rig = wired(actions, tmp_path)
        rig.ban("192.0.2.7")
        assert rig.firewall.started_before == [1]  # the first command, and only it, had started
        assert rig.dispatcher.runner.run == 2
        await settle(rig.dispatcher)

    asyncio.run(scenario())
    assert recorded(log) == ["ban 192.0.2.7 0 admin manual"] * 2


def test_the_kernel_apply_never_waits_for_a_first_command(tmp_path: Path) -> None:
    slow = CommandAction(run=("/bin/sleep", "60"), first=True, timeout=60.0)

    async def scenario() -> None:
        rig = wired(Actions(commands=(slow,)), tmp_path)
        rig.ban("192.0.2.7")
        assert [str(e.target) for e in rig.firewall.entries()] == ["192.0.2.7/32"]
        assert rig.dispatcher.runner.running == 1  # still sleeping, and the ban is in
        assert await rig.dispatcher.close(grace=0.1) == (0, 1)

    asyncio.run(scenario())


def test_unbans_carry_the_lifted_ban_and_expiries_say_expired(tmp_path: Path) -> None:
    log = tmp_path / "log"
    actions = Actions(commands=(recording(log, on=frozenset({Event.UNBAN})),))

    async def scenario() -> None:
        rig = wired(actions, tmp_path)
        rig.hit(hit("192.0.2.7", rig.clock, port=2323))
        rig.unban("192.0.2.7")
        rig.unban("192.0.2.99")  # not banned
        rig.hit(hit("192.0.2.8", rig.clock))
        rig.clock.advance(7200)
        rig.tick()
        await settle(rig.dispatcher)

    asyncio.run(scenario())
    assert recorded(log) == [
        "unban 192.0.2.7 2323 tcp manual",
        "unban 192.0.2.8 23 tcp expired",
        "unban 192.0.2.99 0 admin manual",
    ]


def test_bans_restored_on_start_are_known_to_their_unbans(tmp_path: Path) -> None:
    log = tmp_path / "log"
    actions = Actions(commands=(recording(log, on=frozenset({Event.UNBAN})),))
    restored = Ban(ip_network("2001:db8::/48"), 0.0, None, 3, "trap:udp/161")

    async def scenario() -> None:
        rig = wired(actions, tmp_path)
        rig.dispatcher.start([restored])
        rig.unban("2001:db8::/48")
        await settle(rig.dispatcher)

    asyncio.run(scenario())
    assert recorded(log) == ["unban 2001:db8::/48 161 udp manual"]


def test_respond_command_runs_the_hook_records_the_ban_and_leaves_the_kernel_alone(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    actions = Actions(commands=(recording(log),))

    async def scenario() -> None:
        rig = wired(actions, tmp_path, Respond.COMMAND)
        rig.hit(hit("192.0.2.7", rig.clock))
        assert rig.shell.core.stats.by_outcome() == {Outcome.BANNED.value: 1}
        assert rig.firewall.entries() == []
        stored = [b.target for b in rig.store.active_bans(rig.clock.now())]
        assert stored == [ip_network("192.0.2.7/32")]
        await settle(rig.dispatcher)

    asyncio.run(scenario())
    assert recorded(log) == ["ban 192.0.2.7 23 tcp trap:tcp/23", "hit 192.0.2.7 23 tcp trap:tcp/23"]


def test_respond_log_bans_nothing_and_runs_only_hit_hooks(tmp_path: Path) -> None:
    hits, bans = tmp_path / "hits", tmp_path / "bans"
    actions = Actions(
        commands=(
            recording(hits, on=frozenset({Event.HIT})),
            recording(bans, on=frozenset({Event.BAN, Event.PERMANENT_BAN})),
        )
    )
    line = f"echo $PORTTRAP_OUTCOME >> {tmp_path / 'outcomes'}"
    outcome = CommandAction(run=(line,), shell=True, on=frozenset({Event.HIT}))
    actions = Actions(commands=(*actions.commands, outcome))

    async def scenario() -> None:
        rig = wired(actions, tmp_path, Respond.LOG)
        rig.hit(hit("192.0.2.7", rig.clock))
        assert rig.shell.core.stats.by_outcome() == {Outcome.LOGGED.value: 1}
        assert rig.firewall.entries() == [] and rig.firewall.started_before == []
        await settle(rig.dispatcher)

    asyncio.run(scenario())
    assert recorded(hits) == ["hit 192.0.2.7 23 tcp trap:tcp/23"]
    assert recorded(bans) == []
    assert (tmp_path / "outcomes").read_text() == "logged\n"


def test_hosts_deny_follows_bans_unbans_and_expiries(tmp_path: Path) -> None:
    deny = tmp_path / "hosts.deny"
    deny.write_text("sshd: ALL\n")
    actions = Actions(
        hosts_deny=HostsDenyAction(file=deny, line="ALL: $TARGET$ : spawn /bin/echo $MODE$")
    )

    async def scenario() -> None:
        rig = wired(actions, tmp_path)
        dispatcher = rig.dispatcher
        dispatcher.start([Ban(ip_network("198.51.100.0/24"), 0.0, None, 1, "manual")])
        rig.ban("192.0.2.7", duration=60)
        rig.ban("192.0.2.8", duration=600)
        await asyncio.to_thread(dispatcher.hosts_deny.close)  # type: ignore[union-attr]
        assert deny.read_text().splitlines() == [
            "sshd: ALL",
            "ALL: 198.51.100.0/24 : spawn /bin/echo admin",
            "ALL: 192.0.2.7 : spawn /bin/echo admin",
            "ALL: 192.0.2.8 : spawn /bin/echo admin",
        ]
        rig.clock.advance(120)
        rig.tick()
        rig.unban("198.51.100.0/24")
        await dispatcher.close()
        assert dispatcher.status()["hosts_deny"] == {"file": str(deny), "lines": 1, "failed": 0}

    asyncio.run(scenario())
    assert deny.read_text().splitlines() == ["sshd: ALL", "ALL: 192.0.2.8 : spawn /bin/echo admin"]


def test_shutdown_drops_what_waits_and_kills_what_runs(tmp_path: Path) -> None:
    slow = CommandAction(run=("/bin/sleep", "60"), timeout=60.0)
    actions = Actions(commands=(slow,), max_running=1)

    async def scenario() -> tuple[int, int]:
        rig = wired(actions, tmp_path)
        rig.ban(*(f"192.0.2.{n}" for n in range(1, 4)))
        return await rig.dispatcher.close(grace=0.1)

    assert asyncio.run(scenario()) == (2, 1)


def test_a_flood_of_hits_cannot_pile_up_hit_actions_and_status_shows_it(tmp_path: Path) -> None:
    hook = CommandAction(run=("/bin/sleep", "60"), on=frozenset({Event.HIT}), timeout=60.0)
    actions = Actions(commands=(hook,), max_running=2, queue=10)
    config = Config(state_dir=tmp_path, actions=actions, ban=BanPolicy(respond_tcp=Respond.LOG))
    clock = FakeClock()

    async def scenario() -> dict[str, object]:
        daemon = make_shell(config, clock, MemoryStore(), MemoryFirewall(clock))
        for n in range(5000):
            daemon.on_hit(hit(f"2001:db8::{n:x}", clock))
        status = daemon.handlers["status"]({})
        await daemon.actions.close(grace=0.1)
        assert isinstance(status, dict)
        return status

    status = asyncio.run(scenario())
    actions_status = status["actions"]
    assert actions_status == {
        "run": 2,
        "failed": 0,
        "timed_out": 0,
        "dropped": 4988,
        "running": 2,
        "waiting": 10,
        "hosts_deny": None,
    }
    assert isinstance(actions_status, dict)
    assert output.actions_text(actions_status) == [
        "actions: 2 run (0 failed, 0 timed out), 2 running, 10 waiting, 4988 dropped (queue full)"
    ]


def test_without_actions_nothing_is_set_up(tmp_path: Path) -> None:
    clock = FakeClock()
    daemon = make_shell(Config(state_dir=tmp_path), clock, MemoryStore(), MemoryFirewall(clock))
    assert not daemon.actions.enabled and not daemon.actions.wants_hits
    status = daemon.handlers["status"]({})
    assert isinstance(status, dict) and status["actions"] is None


def test_status_text_names_hosts_deny() -> None:
    status = {"run": 3, "failed": 1, "timed_out": 1, "dropped": 0, "running": 0, "waiting": 0,
              "hosts_deny": {"file": "/etc/hosts.deny", "lines": 2, "failed": 1}}  # fmt: skip
    assert output.actions_text(status) == [
        "actions: 3 run (1 failed, 1 timed out), 0 running, 0 waiting, 0 dropped (queue full)",
        "  hosts.deny /etc/hosts.deny: 2 lines of porttrap's, 1 failed writes",
    ]


def test_a_bug_in_an_action_never_stops_the_ban(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    actions = Actions(commands=(recording(tmp_path / "log", first=True), recording(tmp_path / "l")))

    def broken(_job: object) -> None:
        raise RuntimeError("a bug")

    async def scenario() -> None:
        rig = wired(actions, tmp_path)
        monkeypatch.setattr(rig.dispatcher.runner, "submit", broken)
        rig.ban("192.0.2.7")
        assert [str(e.target) for e in rig.firewall.entries()] == ["192.0.2.7/32"]

    asyncio.run(scenario())
    assert "event=action-failed error=unexpected during=before-kernel" in caplog.text
    assert "event=action-failed error=unexpected during=after-kernel" in caplog.text
