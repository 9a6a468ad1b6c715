"""Bans longer than ipset's 24.8-day timeout: what `LongBans` decides, and the ipset backend
keeping such a ban in a simulated kernel for exactly its time, on a fake clock."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porttrap.errors import FirewallError
from porttrap.firewall.exec import CommandFailed
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.ipset_rules import MAX_TIMEOUT, Element
from porttrap.firewall.rearm import REARM_EVERY, LongBans
from porttrap.model import Ban, Unban, parse_target, show
from porttrap.testing import FakeClock

DATA = Path(__file__).parent.parent / "data" / "ipset"
RAW_IN_PLACE = {4: (DATA / "raw-in-place-v4.txt").read_text(),
                6: (DATA / "raw-in-place-v6.txt").read_text()}  # fmt: skip
NOW = 1_800_000_000.0
DAY = 86400.0
TARGET = parse_target("198.51.100.7")
OTHER = parse_target("2001:db8::/48")


# -- LongBans -------------------------------------------------------------------------------


def test_short_permanent_and_over_bans_are_not_held() -> None:
    long = LongBans()
    assert long.arm(TARGET, NOW + 99.5, NOW) == Element(TARGET, 100)
    assert long.arm(TARGET, NOW + MAX_TIMEOUT, NOW) == Element(TARGET, MAX_TIMEOUT)
    assert long.arm(OTHER, None, NOW) == Element(OTHER, 0)
    assert long.arm(OTHER, NOW, NOW) is None
    assert len(long) == 0 and long.due(NOW + 100 * DAY) == []


def test_a_long_ban_is_held_at_the_maximum_and_due_a_day_later() -> None:
    long = LongBans()
    ends = NOW + 40 * DAY
    assert long.arm(TARGET, ends, NOW) == Element(TARGET, MAX_TIMEOUT)
    assert long.remaining(TARGET, NOW + DAY) == 39 * DAY
    assert long.due(NOW + REARM_EVERY - 1) == []
    assert long.due(NOW + REARM_EVERY) == [(TARGET, ends)]
    assert long.due(NOW + REARM_EVERY) == []  # taken: it is due again only once re-armed


def test_re_arming_holds_the_maximum_until_the_rest_fits_then_exactly() -> None:
    long, ends, now = LongBans(), NOW + 40 * DAY, NOW
    long.arm(TARGET, ends, now)
    timeouts = []
    while len(long):
        now += REARM_EVERY
        ((target, until),) = long.due(now)
        element = long.arm(target, until, now)
        assert element is not None
        timeouts.append(element.timeout)
    assert timeouts[:-1] == [MAX_TIMEOUT] * (len(timeouts) - 1)
    assert timeouts[-1] == math.ceil(ends - now) < MAX_TIMEOUT
    assert len(timeouts) == 16  # 40 days - 24.86 days: re-armed at the maximum 15 times


def test_re_arming_early_leaves_one_due_entry() -> None:
    long = LongBans()
    for step in range(500):  # a ban renewed again and again by apply
        long.arm(TARGET, NOW + 40 * DAY, NOW + step)
    assert long.due(NOW + 499 + REARM_EVERY) == [(TARGET, NOW + 40 * DAY)]
    assert long.due(NOW + 1000 * DAY) == []


def test_forget_and_clear() -> None:
    long = LongBans()
    long.arm(TARGET, NOW + 40 * DAY, NOW)
    long.arm(OTHER, NOW + 50 * DAY, NOW)
    long.forget(TARGET)
    assert long.remaining(TARGET, NOW) is None
    assert long.due(NOW + REARM_EVERY) == [(OTHER, NOW + 50 * DAY)]
    long.clear()
    assert len(long) == 0 and long.due(NOW + 10 * REARM_EVERY) == []


# -- the backend against a simulated kernel ------------------------------------------------


class FakeKernel:
    """ipset's sets as a dict of element -> when its timeout ends (None: never), on the fake
    clock; iptables always in place. Restore scripts are read line by line as ipset would."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sets: dict[str, dict[str, float | None]] = {}
        self.scripts: list[str] = []
        self.fail_next = False

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        if argv[-1] == "-S":
            return RAW_IN_PLACE[6 if argv[0] == "ip6tables" else 4]
        if list(argv[-2:]) == ["list", "-n"]:
            return "".join(f"{name}\n" for name in self.sets)
        if argv[:2] == ["ipset", "save"]:
            return "".join(self._save(argv[2]))
        if argv[0] != "ipset":  # iptables-restore: the chain is always in place here
            return ""
        assert argv[0] == "ipset" and argv[-1] == "restore" and stdin is not None
        if self.fail_next:
            self.fail_next = False
            raise CommandFailed(argv, 1, "ipset v7.17: Error in line 1: Kernel error received")
        self.scripts.append(stdin)
        for line in stdin.splitlines():
            self._do(*line.split())
        return ""

    def _do(self, verb: str, name: str, *rest: str) -> None:
        now = self.clock.now()
        if verb == "create":
            self.sets[name] = {}
        elif verb in ("swap", "rename"):
            self.sets[rest[0]], self.sets[name] = self.sets[name], self.sets.get(rest[0], {})
        elif verb == "destroy":
            del self.sets[name]
        elif verb == "add":
            seconds = int(rest[2])
            self.sets[name][rest[0]] = None if seconds == 0 else now + seconds
        elif verb == "del":
            self.sets[name].pop(rest[0], None)

    def _save(self, name: str) -> list[str]:
        now = self.clock.now()
        return [
            f"add {name} {key} timeout {0 if ends is None else math.floor(ends - now)}\n"
            for key, ends in self.sets[name].items()
            if ends is None or ends > now
        ]

    def held_until(self, key: str) -> float:
        """When the kernel drops `key` (inf: never; the past: it is not held)."""
        for elements in self.sets.values():
            if key in elements:
                ends = elements[key]
                return math.inf if ends is None else ends
        return -math.inf


def long_ban(clock: FakeClock, days: float, target: str = "198.51.100.7") -> Ban:
    now = clock.now()
    return Ban(parse_target(target), now, now + days * DAY, 3, "trap:tcp/23")


def lab() -> tuple[FakeClock, FakeKernel, IpsetBackend]:
    clock = FakeClock(NOW)
    kernel = FakeKernel(clock)
    return clock, kernel, IpsetBackend(clock=clock, runner=kernel)


@settings(max_examples=30, deadline=None)
@given(
    seconds=st.floats(min_value=MAX_TIMEOUT + 1, max_value=120 * DAY),
    check_every=st.floats(min_value=3600, max_value=12 * 3600),
)
def test_a_long_ban_lasts_exactly_its_time(seconds: float, check_every: float) -> None:
    """The daemon checks every 5 s; hours apart here keeps the test quick and is harder."""
    clock, kernel, fw = lab()
    ends = NOW + seconds
    fw.setup([Ban(TARGET, NOW, ends, 3, "trap:tcp/23")], NOW)
    while clock.now() < ends:
        held_until = kernel.held_until("198.51.100.7")
        assert held_until > clock.now(), f"dropped {ends - clock.now():.0f}s early"
        assert held_until <= ends + 1, "held longer than the ban"
        (entry,) = fw.entries()  # the kernel lists whole seconds, rounded down
        assert entry.remaining is not None
        assert abs(entry.remaining - (ends - clock.now())) <= 1
        clock.advance(check_every)
        fw.maintain(clock.now())
    assert kernel.held_until("198.51.100.7") <= ends + 1


def test_re_arms_only_when_due_and_the_kernel_shows_the_maximum_until_then() -> None:
    clock, kernel, fw = lab()
    fw.setup([long_ban(clock, 40)], clock.now())
    scripts = len(kernel.scripts)
    clock.advance(REARM_EVERY - 5)
    fw.maintain(clock.now())
    assert len(kernel.scripts) == scripts
    assert kernel.held_until("198.51.100.7") == NOW + MAX_TIMEOUT
    clock.advance(5)
    fw.maintain(clock.now())
    assert kernel.scripts[-1] == f"add porttrap_v4 198.51.100.7 timeout {MAX_TIMEOUT}\n"
    assert kernel.held_until("198.51.100.7") == clock.now() + MAX_TIMEOUT


def test_a_check_never_re_arms_only_the_upkeep_does() -> None:
    clock, kernel, fw = lab()
    fw.setup([long_ban(clock, 40)], clock.now())
    scripts = len(kernel.scripts)
    clock.advance(REARM_EVERY)
    assert fw.present()  # the firewall check reads, and writes nothing
    assert len(kernel.scripts) == scripts
    fw.maintain(clock.now())
    assert kernel.scripts[scripts:] == [f"add porttrap_v4 198.51.100.7 timeout {MAX_TIMEOUT}\n"]


def test_apply_takes_due_re_arms_along() -> None:
    clock, kernel, fw = lab()
    fw.setup([long_ban(clock, 40)], clock.now())
    clock.advance(REARM_EVERY)
    fw.apply([long_ban(clock, 30, "2001:db8::7")], clock.now())
    assert kernel.scripts[-1] == (
        f"add porttrap_v6 2001:db8::7 timeout {MAX_TIMEOUT}\n"
        f"add porttrap_v4 198.51.100.7 timeout {MAX_TIMEOUT}\n"
    )
    clock.advance(60)
    fw.maintain(clock.now())
    assert kernel.scripts[-1].startswith("add porttrap_v6")  # unchanged


def test_a_failed_re_arm_is_tried_again_at_the_next_check() -> None:
    clock, kernel, fw = lab()
    fw.setup([long_ban(clock, 40)], clock.now())
    clock.advance(REARM_EVERY)
    kernel.fail_next = True
    with pytest.raises(FirewallError, match="Kernel error received"):
        fw.maintain(clock.now())
    clock.advance(5)
    fw.maintain(clock.now())
    assert kernel.scripts[-1] == f"add porttrap_v4 198.51.100.7 timeout {MAX_TIMEOUT}\n"


def test_unban_setup_and_teardown_stop_re_arming() -> None:
    clock, kernel, fw = lab()
    fw.setup([long_ban(clock, 40), long_ban(clock, 50, "192.0.2.0/24")], clock.now())
    fw.apply([Unban(TARGET, clock.now(), "manual")], clock.now())
    fw.apply([long_ban(clock, 60, "2001:db8::7")], clock.now())
    fw.setup([long_ban(clock, 50, "192.0.2.0/24")], clock.now())  # 2001:db8::7 left out
    scripts = len(kernel.scripts)
    clock.advance(REARM_EVERY)
    fw.maintain(clock.now())
    assert kernel.scripts[scripts:] == [f"add porttrap_v4 192.0.2.0/24 timeout {MAX_TIMEOUT}\n"]
    assert [show(e.target) for e in fw.entries()] == ["192.0.2.0/24"]
    fw.teardown()
    assert kernel.scripts[-1] == "destroy porttrap_v4\ndestroy porttrap_v6\n"
    clock.advance(REARM_EVERY)
    fw.maintain(clock.now())
    assert len(kernel.scripts) == scripts + 2
