"""What bounds a forger: the budgets of bans on forgeable evidence, and the memory the policy
keeps of sources, as "these hits at these times give exactly these decisions"."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from porttrap.config.schema import BanPolicy
from porttrap.model import Evidence, Hit, Outcome, Proto
from porttrap.policy import Policy, Protection
from porttrap.policy.budget import BURST_SECONDS, Bucket, prefix_of
from porttrap.policy.escalation import Past
from porttrap.policy.recent import Watch

T0 = 1_800_000_000.0


def datagram(source: str, at: float = 0.0, port: int = 161) -> Hit:
    return Hit(T0 + at, ip_address(source), 40000, ip_address("192.0.2.1"), port, Proto.UDP, "udp")


def policy(**settings: float) -> Policy:
    return Policy(BanPolicy(**settings), (), Protection([]))  # type: ignore[arg-type]


def twice(engine: Policy, source: str, at: float = 0.0) -> Outcome:
    """Two datagrams from `source` (confirm = 2): the second one's outcome."""
    engine.on_hit(datagram(source, at), T0 + at)
    return engine.on_hit(datagram(source, at), T0 + at).outcome


# -- the budgets ------------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    bucket = Bucket(2.0, T0)
    assert [bucket.take(T0) for _ in range(11)] == [True] * 10 + [False]  # 2/s for 5 s
    assert not bucket.take(T0 + 0.4)
    assert bucket.take(T0 + 0.5)  # one more half a second later
    assert not bucket.take(T0 - 100)  # a clock stepped back adds nothing


def test_networks_are_slash_24_and_slash_48() -> None:
    assert prefix_of(IPv4Address("198.51.100.7")) == prefix_of(IPv4Address("198.51.100.250"))
    assert prefix_of(IPv4Address("198.51.100.7")) != prefix_of(IPv4Address("198.51.101.7"))
    same = prefix_of(IPv6Address("2001:db8:1:2::1")), prefix_of(IPv6Address("2001:db8:1:ff::9"))
    assert same[0] == same[1]
    assert prefix_of(IPv6Address("2001:db8:2::1")) != same[0]


def test_a_flood_of_forged_sources_bans_the_budget_and_no_more() -> None:
    engine = policy(unverified_rate=10, unverified_prefix_rate=1000)
    outcomes = [twice(engine, f"2001:db8:{n:x}::1") for n in range(1000)]
    assert outcomes.count(Outcome.BANNED) == 10 * BURST_SECONDS
    assert outcomes.count(Outcome.HELD) == 1000 - 10 * BURST_SECONDS
    assert engine.held == 1000 - 10 * BURST_SECONDS
    assert all(b.evidence is Evidence.UNVERIFIED for b in engine.active(T0))


def test_one_network_gets_its_own_budget_and_leaves_the_others_theirs() -> None:
    engine = policy(unverified_rate=1000, unverified_prefix_rate=1)
    same = [twice(engine, f"198.51.100.{n}") for n in range(1, 21)]
    assert same.count(Outcome.BANNED) == BURST_SECONDS  # the /24's burst
    assert twice(engine, "203.0.113.9") is Outcome.BANNED  # another /24 is untouched
    assert twice(engine, "198.51.100.99", at=1.0) is Outcome.BANNED  # a second later, one more


def test_verified_evidence_is_never_held_back() -> None:
    engine = policy(unverified_rate=1, unverified_prefix_rate=1)
    for n in range(100):
        twice(engine, f"2001:db8:{n:x}::1")
    handshake = Hit(T0, ip_address("198.51.100.7"), 40000, ip_address("192.0.2.1"), 23, Proto.TCP)
    assert engine.on_hit(handshake, T0).outcome is Outcome.BANNED


@settings(max_examples=50, deadline=None)
@given(
    sources=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=300),
    rate=st.integers(1, 20),
    seconds=st.integers(1, 10),
)
def test_no_flood_bans_more_than_the_budget_allows(
    sources: list[int], rate: int, seconds: int
) -> None:
    """Whatever the sources, over `seconds` at most burst + rate * seconds bans."""
    engine = policy(unverified_rate=rate, unverified_prefix_rate=10**6)
    banned = 0
    for n, source in enumerate(sources):
        at = seconds * n / len(sources)
        banned += twice(engine, str(IPv4Address(source)), at) is Outcome.BANNED
    assert banned <= rate * BURST_SECONDS + rate * seconds


# -- the sources watched ----------------------------------------------------------------------


def test_the_least_recently_hit_source_gives_way_and_is_counted() -> None:
    watch = Watch(confirm=2, limit=3)
    for source in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        watch.of(ip_address(source))
    watch.of(ip_address("192.0.2.1"))  # hit again: the most recent now
    watch.of(ip_address("192.0.2.4"))  # no room: 192.0.2.2 goes
    assert len(watch) == 3 and watch.evicted == 1
    assert watch.pop(ip_address("192.0.2.2")) is None
    assert watch.pop(ip_address("192.0.2.1")) is not None


def test_a_flood_of_new_sources_keeps_memory_bounded() -> None:
    engine = policy()
    engine._recent.limit = 1000
    for n in range(5000):
        engine.on_hit(datagram(str(IPv4Address(0xC6336400 + n))), T0)
    assert engine.watched() == 1000 and engine.evicted == 4000
    # A real scanner, hitting again at once, is still caught.
    assert twice(engine, "203.0.113.66") is Outcome.BANNED


def test_the_unverified_ban_history_keeps_the_most_recently_banned() -> None:
    past = Past(max_unverified=2)
    a, b, c = (ip_network(f"198.51.100.{n}/32") for n in (1, 2, 3))
    past.add(a, T0, verified=False)
    past.add(b, T0 + 1, verified=False)
    past.add(a, T0 + 2, verified=False)  # banned again: the most recent now
    past.add(c, T0 + 3, verified=False)  # no room: b goes
    past.add(c, T0 + 4, verified=True)  # the verified history is apart, and not bounded here
    assert past.evicted == 1
    assert [past.count(t, False, 0.0) for t in (a, b, c)] == [2, 0, 1]
    assert past.count(c, True, 0.0) == 1


def test_a_long_forged_flood_keeps_the_ban_history_bounded() -> None:
    engine = policy(unverified_rate=1000, unverified_prefix_rate=1000, time=1)
    engine._past._max_unverified = 100
    for n in range(500):  # 500 bans, one a second: each ends before the next
        assert twice(engine, f"2001:db8:{n:x}::1", at=float(n)) is Outcome.BANNED
        engine.expire(T0 + n + 0.5)
    assert engine.past_evicted == 400
    assert len(engine._past._unverified) == 100


def test_an_admin_session_is_never_banned_by_any_hit_and_refused_to_the_admin() -> None:
    engine = policy()
    engine.protection.set_sessions([ip_address("203.0.113.5")])
    handshake = Hit(T0, ip_address("203.0.113.5"), 40000, ip_address("192.0.2.1"), 23, Proto.TCP)
    assert engine.on_hit(handshake, T0).outcome is Outcome.SESSION
    assert engine.active(T0) == []
    refused = engine.protection.conflict(ip_network("203.0.113.0/24"))
    assert (
        refused
        == "203.0.113.0/24 contains 203.0.113.5, the peer of a live SSH session to this host"
    )
