"""One contract for every FirewallBackend: the in-memory fake, dry-run, and real nftables and
real ipset + iptables, each in a fresh network namespace. The kernel counts real seconds (the
harness's clock does not) and reports whole ones: a remaining time is compared within SLACK,
less the real seconds since the harness began, however many a starved machine took."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from netns import Netns, in_host_netns
from porttrap.firewall.base import FirewallBackend
from porttrap.firewall.dryrun import DryRunBackend
from porttrap.firewall.exec import Exec
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.nftables import NftablesBackend
from porttrap.model import Ban, Change, Unban, show
from porttrap.testing import FakeClock, MemoryFirewall
from porttrap.units import MAX_BAN

SLACK = 2.0
HOUR = 3600.0


@dataclass
class Harness:
    backend: FirewallBackend
    clock: FakeClock
    kernel: bool = False  # a kernel backend, whose timeouts run in real seconds
    started: float = field(default_factory=time.monotonic)  # noqa: TID251 - test timing

    @property
    def now(self) -> float:
        return self.clock.now()

    def ban(self, target: str, seconds: float | None, count: int = 1) -> Ban:
        expires = None if seconds is None else self.now + seconds
        network = ipaddress.ip_network(target)
        return Ban(network, self.now, expires, count, "trap:tcp/23")

    def unban(self, target: str) -> Unban:
        return Unban(ipaddress.ip_network(target), self.now, "test")

    def held(self) -> dict[str, float | None]:
        entries = self.backend.entries()
        held = {show(entry.target): entry.remaining for entry in entries}
        assert len(held) == len(entries), f"a target is held twice: {entries}"
        return held

    def real_seconds(self) -> float:
        """At least the seconds a kernel timeout set since the harness began has run down."""
        return time.monotonic() - self.started if self.kernel else 0.0  # noqa: TID251

    def assert_holds(self, expected: dict[str, float | None]) -> None:
        held = self.held()
        passed = self.real_seconds()
        # a ban whose whole time has passed in real seconds may be gone from the kernel
        over = {t for t, want in expected.items() if want is not None and want <= passed}
        assert expected.keys() - over <= held.keys() <= expected.keys(), (held, passed)
        for target, want in expected.items():
            got = held.get(target, 0.0 if target in over else None)
            if want is None:
                assert got is None, f"{target} should be permanent, has {got}s left"
            else:
                assert got is not None, f"{target} should have {want}s left, is permanent"
                assert want - SLACK - passed <= got <= want + SLACK, (
                    f"{target}: {got}s left, expected {want}s ({passed:.1f} s have passed)"
                )


def _kernel_backend(netns_factory: Callable[[], Netns]) -> NftablesBackend:
    """Made as the daemon makes it: libnftables and the netlink reader both bound to the
    namespace of the thread that makes the backend, which is then used from outside it."""
    netns = netns_factory()
    with netns.inside():
        assert not in_host_netns(), "refusing to bind libnftables to the host's namespace"
        return NftablesBackend()


KERNEL = pytest.mark.kernel


@pytest.fixture(
    params=[
        "memory",
        "dry-run",
        pytest.param("nftables", marks=KERNEL),
        pytest.param("ipset", marks=KERNEL),
    ]
)
def fw(request: pytest.FixtureRequest) -> Harness:
    clock = FakeClock()
    if request.param == "memory":
        return Harness(MemoryFirewall(clock), clock)
    if request.param == "dry-run":
        return Harness(DryRunBackend(clock), clock)
    netns = request.getfixturevalue("netns_factory")
    if request.param == "ipset":
        return Harness(IpsetBackend(clock=clock, runner=Exec(netns=netns().name)), clock, True)
    return Harness(_kernel_backend(netns), clock, True)


MIXED = {
    "198.51.100.7": HOUR,
    "198.51.100.8": None,
    "203.0.113.0/24": 2 * HOUR,
    "192.0.2.0/25": None,
    "2001:db8::7": HOUR,
    "2001:db8::8": None,
    "2001:db8:1::/48": 3 * HOUR,
    "2001:db8:2::/64": None,
}


def test_empty_before_setup(fw: Harness) -> None:
    assert fw.backend.entries() == []


def test_setup_holds_exactly_the_bans(fw: Harness) -> None:
    fw.backend.setup([fw.ban(target, seconds) for target, seconds in MIXED.items()], fw.now)
    fw.assert_holds(MIXED)


def test_setup_again_replaces_everything(fw: Harness) -> None:
    fw.backend.setup([fw.ban(target, seconds) for target, seconds in MIXED.items()], fw.now)
    fw.backend.setup([fw.ban("198.51.100.7", 60), fw.ban("2001:db8::9", None)], fw.now)
    fw.assert_holds({"198.51.100.7": 60, "2001:db8::9": None})


def test_setup_skips_expired_bans(fw: Harness) -> None:
    old = fw.ban("198.51.100.1", 10)
    fw.clock.advance(11)
    fw.backend.setup([old, fw.ban("198.51.100.2", 10), fw.ban("2001:db8::1", -5)], fw.now)
    fw.assert_holds({"198.51.100.2": 10})


def test_setup_rounds_remaining_up_to_whole_seconds(fw: Harness) -> None:
    fw.backend.setup([fw.ban("198.51.100.1", 0.2), fw.ban("198.51.100.2", 99.5)], fw.now)
    fw.assert_holds({"198.51.100.1": 1, "198.51.100.2": 100})


def test_setup_keeps_the_strongest_of_duplicate_bans(fw: Harness) -> None:
    bans = [fw.ban("198.51.100.1", 60), fw.ban("198.51.100.1", HOUR), fw.ban("198.51.100.1", 5)]
    bans += [fw.ban("2001:db8::1", HOUR), fw.ban("2001:db8::1", None)]
    fw.backend.setup(bans, fw.now)
    fw.assert_holds({"198.51.100.1": HOUR, "2001:db8::1": None})


def test_apply_adds_bans(fw: Harness) -> None:
    fw.backend.setup([], fw.now)
    fw.backend.apply([fw.ban(target, seconds) for target, seconds in MIXED.items()], fw.now)
    fw.assert_holds(MIXED)


@pytest.mark.parametrize("target", ["198.51.100.7", "203.0.113.0/24", "2001:db8::7"])
def test_apply_replaces_the_timeout_of_a_held_ban(fw: Harness, target: str) -> None:
    fw.backend.setup([fw.ban(target, HOUR)], fw.now)
    fw.backend.apply([fw.ban(target, 60)], fw.now)
    fw.assert_holds({target: 60})
    fw.backend.apply([fw.ban(target, 2 * HOUR)], fw.now)
    fw.assert_holds({target: 2 * HOUR})


@pytest.mark.parametrize("target", ["198.51.100.7", "192.0.2.0/24", "2001:db8::7", "2001:db8::/64"])
def test_apply_moves_between_temporary_and_permanent(fw: Harness, target: str) -> None:
    fw.backend.setup([fw.ban(target, HOUR)], fw.now)
    fw.backend.apply([fw.ban(target, None, count=3)], fw.now)
    fw.assert_holds({target: None})
    fw.backend.apply([fw.ban(target, 60)], fw.now)
    fw.assert_holds({target: 60})


def test_unban_removes_every_kind(fw: Harness) -> None:
    fw.backend.setup([fw.ban(target, seconds) for target, seconds in MIXED.items()], fw.now)
    fw.backend.apply([fw.unban(target) for target in MIXED if target != "198.51.100.7"], fw.now)
    fw.assert_holds({"198.51.100.7": HOUR})


def test_unban_of_absent_target_is_fine(fw: Harness) -> None:
    fw.backend.setup([fw.ban("198.51.100.7", HOUR)], fw.now)
    fw.backend.apply([fw.unban("198.51.100.9"), fw.unban("2001:db8::/48")], fw.now)
    fw.backend.apply([fw.unban("198.51.100.9")], fw.now)
    fw.assert_holds({"198.51.100.7": HOUR})


def test_apply_in_order_last_change_wins(fw: Harness) -> None:
    fw.backend.setup([], fw.now)
    first, second = "198.51.100.1", "198.51.100.2"
    changes: list[Change] = [fw.ban(first, 60), fw.unban(first), fw.ban(second, 60)]
    fw.backend.apply([*changes, fw.unban(second), fw.ban(second, None)], fw.now)
    fw.assert_holds({"198.51.100.2": None})


def test_apply_of_a_ban_already_over_lifts_it(fw: Harness) -> None:
    fw.backend.setup([fw.ban("198.51.100.1", HOUR)], fw.now)
    over = fw.ban("198.51.100.1", 5)
    fw.clock.advance(6)
    fw.backend.apply([over], fw.now)
    fw.assert_holds({})


def test_apply_nothing_is_fine(fw: Harness) -> None:
    fw.backend.setup([fw.ban("198.51.100.1", None)], fw.now)
    fw.backend.apply([], fw.now)
    fw.assert_holds({"198.51.100.1": None})


def test_teardown_removes_everything_and_is_idempotent(fw: Harness) -> None:
    fw.backend.teardown()
    fw.backend.setup([fw.ban(target, seconds) for target, seconds in MIXED.items()], fw.now)
    fw.backend.teardown()
    assert fw.backend.entries() == []
    fw.backend.teardown()
    assert fw.backend.entries() == []


def test_setup_after_teardown_works(fw: Harness) -> None:
    fw.backend.setup([fw.ban("198.51.100.1", 60)], fw.now)
    fw.backend.teardown()
    fw.backend.setup([fw.ban("2001:db8::1", 60)], fw.now)
    fw.assert_holds({"2001:db8::1": 60})


def test_present_from_setup_until_teardown(fw: Harness) -> None:
    assert not fw.backend.present()
    fw.backend.setup([], fw.now)
    assert fw.backend.present()
    fw.backend.teardown()
    assert not fw.backend.present()


def test_inspect_finds_a_whole_ruleset_and_lists_its_bans_when_asked(fw: Harness) -> None:
    assert fw.backend.inspect(entries=True).missing
    fw.backend.setup([fw.ban("198.51.100.7", HOUR), fw.ban("2001:db8::/48", None)], fw.now)
    fw.backend.apply([fw.ban("203.0.113.0/24", HOUR)], fw.now)
    found = fw.backend.inspect(entries=False)
    assert not found.missing and found.damaged is None and found.entries is None
    assert fw.backend.inspect(count=True).count == 3
    listed = fw.backend.inspect(entries=True).entries
    assert listed is not None
    assert {show(e.target) for e in listed} == {"198.51.100.7", "2001:db8::/48", "203.0.113.0/24"}
    fw.backend.teardown()
    assert fw.backend.inspect(entries=False).missing


LONG = 40 * 86400.0  # more than ipset's longest element timeout (2,147,483 s, 24.8 days)


def test_a_ban_longer_than_the_kernel_can_time_keeps_its_full_time(fw: Harness) -> None:
    fw.backend.setup([fw.ban("198.51.100.7", LONG), fw.ban("2001:db8::/48", LONG)], fw.now)
    fw.backend.apply([fw.ban("203.0.113.0/24", LONG + HOUR)], fw.now)
    fw.assert_holds({"198.51.100.7": LONG, "2001:db8::/48": LONG, "203.0.113.0/24": LONG + HOUR})
    assert fw.backend.present()
    fw.backend.apply([fw.ban("198.51.100.7", 60)], fw.now)
    fw.assert_holds({"198.51.100.7": 60, "2001:db8::/48": LONG, "203.0.113.0/24": LONG + HOUR})


def test_every_backend_holds_the_longest_ban(fw: Harness) -> None:
    """MAX_BAN (10 years) is within what every backend accepts: nft refuses a timeout of more
    than 8 digits of seconds, ipset one of more than 24.8 days (each written or re-armed as
    it can hold it)."""
    fw.backend.setup([fw.ban("198.51.100.7", MAX_BAN.seconds)], fw.now)
    fw.backend.apply([fw.ban("2001:db8::/48", MAX_BAN.seconds)], fw.now)
    fw.assert_holds({"198.51.100.7": MAX_BAN.seconds, "2001:db8::/48": MAX_BAN.seconds})
