"""The engine, as "these hits at these times give exactly these decisions"."""

from __future__ import annotations

from ipaddress import IPv6Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porttrap.config.schema import BanPolicy, Escalation, Trap
from porttrap.errors import UsageError
from porttrap.model import Ban, Hit, IPAddress, Outcome, Proto
from porttrap.policy import Policy, Protection
from porttrap.policy.engine import ban_duration
from porttrap.store.base import StoredBan

T0 = 1_800_000_000.0
H = 3600.0
DAY = 86400.0
ATTACKER = "198.51.100.7"


def hit(
    at: float,
    source: str = ATTACKER,
    port: int = 23,
    proto: Proto = Proto.TCP,
    local: str = "203.0.113.1",
) -> Hit:
    """A TCP handshake or, for UDP, a datagram (see test_policy_confirm for the others)."""
    kind = "udp" if proto is Proto.UDP else "connect"
    return Hit(T0 + at, ip_address(source), 40000, ip_address(local), port, proto, kind)


def make(
    policy: BanPolicy | None = None,
    traps: tuple[Trap, ...] = (),
    allow: tuple[str, ...] = (),
    own: tuple[str, ...] = (),
) -> Policy:
    protection = Protection([ip_network(a) for a in allow], [ip_address(o) for o in own])
    return Policy(policy or BanPolicy(), traps, protection)


def play(policy: Policy, hits: list[Hit]) -> list[tuple[Outcome, float | None]]:
    """Each hit's outcome and, when it banned, the ban's length (None for permanent)."""
    out: list[tuple[Outcome, float | None]] = []
    for h in hits:
        verdict = policy.on_hit(h, h.at)
        length = None
        if verdict.ban is not None and verdict.ban.expires_at is not None:
            length = verdict.ban.expires_at - verdict.ban.banned_at
        out.append((verdict.outcome, length))
    return out


def test_first_hit_bans_for_the_base_time() -> None:
    assert play(make(), [hit(0)]) == [(Outcome.BANNED, H)]


def test_hits_while_banned_change_nothing() -> None:
    assert play(make(), [hit(0), hit(10, port=80), hit(H - 3)]) == [
        (Outcome.BANNED, H),
        (Outcome.ALREADY_BANNED, None),
        (Outcome.ALREADY_BANNED, None),
    ]


def test_a_hit_in_a_bans_last_two_seconds_bans_again() -> None:
    """The kernel's timer may let the ban go a moment before this clock says: a hit then
    proves it is gone, and the scanner is banned again (the next ban of the escalation),
    not let through as 'already banned'."""
    assert play(make(), [hit(0), hit(H - 1, port=80)]) == [
        (Outcome.BANNED, H),
        (Outcome.BANNED, 4 * H),
    ]


def test_the_hits_of_a_burst_never_ban_again_even_when_the_ban_is_short() -> None:
    """A ban shorter than 2 s is 'ending' from its start: the rest of the burst that made it
    (read before the kernel had it) must not ban again and again, up to permanent."""
    short = make(BanPolicy(time=1.0))
    assert play(short, [hit(0), hit(0.1, port=80), hit(0.5, port=81)]) == [
        (Outcome.BANNED, 1),
        (Outcome.ALREADY_BANNED, None),
        (Outcome.ALREADY_BANNED, None),
    ]


def test_quadratic_escalation_then_permanent() -> None:
    # bans at 0 (1h), after expiry 4h, after that 9h... but the 3rd is permanent by default
    hits = [hit(0), hit(H + 1), hit(H + 1 + 4 * H + 1), hit(10 * DAY)]
    assert play(make(), hits) == [
        (Outcome.BANNED, H),
        (Outcome.BANNED, 4 * H),
        (Outcome.BANNED, None),
        (Outcome.ALREADY_BANNED, None),
    ]


@pytest.mark.parametrize(
    ("escalation", "lengths"),
    [
        (Escalation.QUADRATIC, [1, 4, 9, 16]),
        (Escalation.EXPONENTIAL, [1, 2, 4, 8]),
        (Escalation.NONE, [1, 1, 1, 1]),
    ],
)
def test_escalation_formulas(escalation: Escalation, lengths: list[int]) -> None:
    policy = BanPolicy(time=60, escalation=escalation, permanent_after=0)
    assert [ban_duration(policy, 60, n) for n in (1, 2, 3, 4)] == [60 * k for k in lengths]


def test_max_time_caps_temporary_bans() -> None:
    policy = BanPolicy(time=H, max_time=5 * H, permanent_after=0)
    assert [ban_duration(policy, H, n) for n in (1, 2, 3)] == [H, 4 * H, 5 * H]


def test_permanent_after_zero_never_bans_for_good() -> None:
    policy = BanPolicy(time=1, permanent_after=0, max_time=DAY)
    assert ban_duration(policy, 1, 1000) == DAY


def test_trigger_counts_distinct_ports_within_window() -> None:
    engine = make(BanPolicy(trigger=3, window=600))
    hits = [
        hit(0, port=23),
        hit(5, port=23),
        hit(10, port=24),
        hit(700, port=25),
        hit(710, port=26),
        hit(720, port=27),
    ]
    assert play(engine, hits) == [
        (Outcome.COUNTED, None),
        (Outcome.COUNTED, None),  # same port again: still one distinct port
        (Outcome.COUNTED, None),
        (Outcome.COUNTED, None),  # 23 and 24 fell out of the window
        (Outcome.COUNTED, None),
        (Outcome.BANNED, H),
    ]


def test_per_trap_ban_time_is_the_base_for_escalation() -> None:
    traps = (Trap(Proto.TCP, 9090, ban=2 * H), Trap(Proto.TCP, 23))
    engine = make(traps=traps)
    assert play(engine, [hit(0, port=9090), hit(2 * H + 1, port=9090)]) == [
        (Outcome.BANNED, 2 * H),
        (Outcome.BANNED, 8 * H),
    ]


def test_per_trap_ban_time_for_one_local_address() -> None:
    traps = (Trap(Proto.TCP, 9090, ip_address("203.0.113.5"), ban=2 * H),)
    engine = make(traps=traps)
    other = play(engine, [hit(0, port=9090, local="203.0.113.9")])
    mine = play(engine, [hit(0, source="198.51.100.8", port=9090, local="203.0.113.5")])
    assert (other, mine) == ([(Outcome.BANNED, H)], [(Outcome.BANNED, 2 * H)])


def test_per_trap_ban_time_for_one_family() -> None:
    """A trap on "::" or "0.0.0.0" traps every address of one family: a hit names the address
    it reached, and the trap's ban time is still its own."""
    traps = (
        Trap(Proto.TCP, 9090, ip_address("::"), ban=2 * H),
        Trap(Proto.TCP, 9090, ip_address("0.0.0.0"), ban=3 * H),
    )
    engine = make(traps=traps)
    six = play(engine, [hit(0, source="2001:db8::8", port=9090, local="2001:db8::1")])
    four = play(engine, [hit(0, port=9090, local="203.0.113.9")])
    assert (six, four) == ([(Outcome.BANNED, 2 * H)], [(Outcome.BANNED, 3 * H)])


def test_protected_sources_are_counted_never_banned() -> None:
    engine = make(allow=("192.0.2.0/24", "2001:db8::7/128"), own=("203.0.113.1",))
    hits = [
        hit(0, source="192.0.2.50"),
        hit(0, source="2001:db8::7"),
        hit(0, source="203.0.113.1"),
        hit(0, source="127.0.0.5"),
        hit(0, source="::1"),
        hit(0, source="2001:db8::8"),
    ]
    assert [o for o, _ in play(engine, hits)] == [
        Outcome.ALLOWED,
        Outcome.ALLOWED,
        Outcome.OWN_ADDRESS,
        Outcome.OWN_ADDRESS,
        Outcome.OWN_ADDRESS,
        Outcome.BANNED,
    ]


def test_bans_older_than_forget_after_do_not_escalate() -> None:
    engine = make(BanPolicy(forget_after=7 * DAY))
    assert play(engine, [hit(0), hit(8 * DAY)]) == [(Outcome.BANNED, H), (Outcome.BANNED, H)]


def test_manual_ban_refuses_protected_targets() -> None:
    engine = make(allow=("192.0.2.0/24",), own=("203.0.113.1",))
    for target, why in [
        ("192.0.2.9/32", "192.0.2.9 is on the allow list"),
        ("192.0.0.0/16", "overlaps allow-list entry 192.0.2.0/24"),
        ("203.0.113.0/24", "contains 203.0.113.1, an address of this host"),
        ("127.0.0.0/8", "loopback"),
    ]:
        with pytest.raises(UsageError, match=why):
            engine.ban([ip_network(target)], T0)


def test_manual_ban_kinds_and_cidr_cover_hits() -> None:
    engine = make()
    (net,) = engine.ban([ip_network("198.51.100.0/24")], T0, duration=60)
    (perm,) = engine.ban([ip_network("2001:db8::/48")], T0, permanent=True)
    (escalated,) = engine.ban([ip_network("203.0.113.9/32")], T0)
    assert (net.expires_at, perm.expires_at, escalated.expires_at) == (T0 + 60, None, T0 + H)
    assert play(engine, [hit(1), hit(1, source="2001:db8::1"), hit(61)]) == [
        (Outcome.ALREADY_BANNED, None),
        (Outcome.ALREADY_BANNED, None),
        (Outcome.BANNED, H),
    ]


def test_unban_forgives_the_ban() -> None:
    engine = make()
    first = engine.on_hit(hit(0), T0).ban
    assert first is not None
    engine.unban(first.target, T0 + 10)
    assert play(engine, [hit(20)]) == [(Outcome.BANNED, H)]


def test_restore_continues_escalation_and_lifts_newly_protected() -> None:
    old = Ban(ip_network(ATTACKER), T0 - 2 * H, T0 - H, 1, "trap:tcp/23")
    lifted = Ban(ip_network(ATTACKER), T0 - 3 * H, T0 - 2.5 * H, 1, "trap:tcp/23")
    allowed = Ban(ip_network("192.0.2.9/32"), T0 - 60, T0 + H, 1, "trap:tcp/23")
    engine = make(allow=("192.0.2.0/24",))
    stored = [StoredBan(lifted, T0 - 2.9 * H, "manual"), StoredBan(old), StoredBan(allowed)]
    unbans = engine.restore(stored, T0)
    assert [str(u.target) for u in unbans] == ["192.0.2.9/32"]
    assert play(engine, [hit(0)]) == [(Outcome.BANNED, 4 * H)]
    assert [(str(b.target), b.ban_count) for b in engine.active(T0)] == [(f"{ATTACKER}/32", 2)]


def test_own_address_change_lifts_its_ban() -> None:
    engine = make()
    engine.on_hit(hit(0, source="203.0.113.50"), T0)
    unbans = engine.set_own_addresses([ip_address("203.0.113.50")], T0 + 1)
    assert [str(u.target) for u in unbans] == ["203.0.113.50/32"]
    assert engine.active(T0 + 1) == []


def test_expire_forgets_ended_bans_and_closed_windows() -> None:
    engine = make(BanPolicy(trigger=2))
    engine.on_hit(hit(0, source="198.51.100.1"), T0)
    engine.ban([ip_network("198.51.100.2/32")], T0, duration=30)
    assert [str(b.target) for b in engine.expire(T0 + 31)] == ["198.51.100.2/32"]
    assert engine.expire(T0 + 32) == []  # once
    engine.forget_quiet(T0 + 700)
    assert play(engine, [hit(701, source="198.51.100.1", port=24)]) == [(Outcome.COUNTED, None)]


def test_udp_broadcast_and_multicast_are_not_scans() -> None:
    engine = make(BanPolicy(confirm=1), own=("203.0.113.1",))
    hits = [
        hit(0, proto=Proto.UDP, local="203.0.113.255"),
        hit(0, proto=Proto.UDP, local="255.255.255.255"),
        hit(0, proto=Proto.UDP, local="ff02::1"),
        hit(0, proto=Proto.UDP, local="203.0.113.1"),
    ]
    assert [o for o, _ in play(engine, hits)] == [
        Outcome.NOT_UNICAST,
        Outcome.NOT_UNICAST,
        Outcome.NOT_UNICAST,
        Outcome.BANNED,
    ]


def test_manual_ban_is_all_or_nothing() -> None:
    engine = make(allow=("192.0.2.0/24",))
    targets = [ip_network("198.51.100.1/32"), ip_network("192.0.2.5/32"), ip_network("::1/128")]
    with pytest.raises(UsageError) as refused:
        engine.ban(targets, T0)
    assert "192.0.2.5: 192.0.2.5 is on the allow list" in str(refused.value)
    assert "::1: ::1 is an address of this host" in str(refused.value)
    assert engine.active(T0) == []


def test_restore_lifts_bans_on_own_and_loopback_addresses() -> None:
    engine = make(own=("203.0.113.1",))
    stored = [
        StoredBan(Ban(ip_network(t), T0 - 60, T0 + H, 1, "old"))
        for t in ("203.0.113.1/32", "127.0.0.2/32", "198.51.100.9/32", "203.0.113.0/24")
    ]
    unbans = engine.restore(stored, T0)
    assert sorted(str(u.target) for u in unbans) == [
        "127.0.0.2/32",
        "203.0.113.0/24",
        "203.0.113.1/32",
    ]
    assert [str(b.target) for b in engine.active(T0)] == ["198.51.100.9/32"]


def test_network_bans_may_not_overlap() -> None:
    engine = make()
    engine.ban([ip_network("198.51.100.0/24")], T0)
    with pytest.raises(UsageError, match=r"198.51.100.0/25: overlaps the ban on 198.51.100.0/24"):
        engine.ban([ip_network("198.51.100.0/25")], T0)
    with pytest.raises(UsageError, match=r"2001:db8::/64: overlaps the ban on 2001:db8::/48"):
        engine.ban([ip_network("2001:db8::/48"), ip_network("2001:db8::/64")], T0)
    again = engine.ban([ip_network("198.51.100.0/24"), ip_network("198.51.100.9/32")], T0)
    assert [b.ban_count for b in again] == [2, 1]  # the same network again, and an address in it


def test_restore_lifts_older_overlapping_network_bans() -> None:
    def stored(target: str, at: float) -> StoredBan:
        return StoredBan(Ban(ip_network(target), T0 - at, T0 + H, 1, "manual"))

    engine = make()
    unbans = engine.restore(
        [
            stored("198.51.100.0/24", 30),
            stored("198.51.100.0/25", 20),
            stored("203.0.113.0/24", 10),
        ],
        T0,
    )
    assert [(str(u.target), u.reason) for u in unbans] == [
        ("198.51.100.0/24", "overlapped by the newer ban on 198.51.100.0/25")
    ]
    assert sorted(str(b.target) for b in engine.active(T0)) == ["198.51.100.0/25", "203.0.113.0/24"]


# Steps of a random history: ban an address for a while, ban it for good, unban it, or let
# time pass (then expire); addresses from a small pool, so that bans replace each other.
_step = st.one_of(
    st.tuples(st.just("ban"), st.integers(0, 5), st.integers(1, 5000)),
    st.tuples(st.just("permanent"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("unban"), st.integers(0, 5), st.just(0)),
    st.tuples(st.just("wait"), st.just(0), st.integers(0, 3000)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, max_size=60))
def test_expire_returns_exactly_the_bans_that_ran_out_once_each(
    steps: list[tuple[str, int, int]],
) -> None:
    """What `expire` returns is what `active` lost to time, never a lifted or replaced ban, and
    never twice: the heap of ends agrees with the bans, whatever happened in between."""
    engine = make()
    now = T0
    for kind, n, amount in steps:
        target = ip_network(f"198.51.100.{n}/32")
        if kind == "ban":
            engine.ban([target], now, duration=float(amount))
        elif kind == "permanent":
            engine.ban([target], now, permanent=True)
        elif kind == "unban":
            engine.unban(target, now)
        else:
            before = {b.target: b for b in engine.active(now)}
            now += amount
            after = {b.target for b in engine.active(now)}
            expired = engine.expire(now)
            assert sorted(b.target for b in expired) == sorted(set(before) - after)
            assert all(before[b.target] == b for b in expired)
            assert engine.expire(now) == []


def test_expire_does_nothing_before_the_earliest_end() -> None:
    engine = make()
    engine.ban([ip_network("198.51.100.1/32")], T0, duration=50)
    engine.ban([ip_network("198.51.100.2/32")], T0, duration=100)
    assert engine.expire(T0 + 49) == []
    assert [str(b.target) for b in engine.expire(T0 + 50)] == ["198.51.100.1/32"]
    assert engine.expire(T0 + 99) == []
    engine.unban(ip_network("198.51.100.2/32"), T0 + 99)
    assert engine.expire(T0 + 100) == []  # lifted: nothing ends
    assert engine._next_end is None


ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(lambda a: ip_address(int(a))),
    st.ip_addresses(v=6).map(lambda a: ip_address(int(a))),
    st.sampled_from(["127.0.0.1", "127.9.9.9", "169.254.3.4", "::1", "fe80::1", "febf::9",
                     "fec0::1", "192.0.2.1", "2001:db8::1", "::ffff:127.0.0.1",
                     "::ffff:192.0.2.1"]).map(ip_address),
)  # fmt: skip


@settings(max_examples=400)
@given(
    address=ADDRESSES,
    guarded=st.lists(ADDRESSES, max_size=3),
    allow=st.lists(st.sampled_from(["192.0.2.0/24", "2001:db8::/48", "10.0.0.0/8"]), max_size=2),
    patterns=st.lists(st.sampled_from([r"192\.0\.2\.\d+", r"2001:db8::.*"]), max_size=1),
)
def test_free_is_true_only_when_neither_conflict_nor_peer_in_objects(
    address: IPAddress, guarded: list[IPAddress], allow: list[str], patterns: list[str]
) -> None:
    """The fast check a fleet's catch-up makes per address never lets through an address that
    the full checks protect: own, allow list, patterns, loopback, sessions, peers."""
    protection = Protection([ip_network(n) for n in allow], guarded[:1], patterns)
    protection.set_sessions(guarded[1:2])
    protection.set_gateways(guarded[2:])
    target = ip_network(address)
    full = protection.conflict(target) is None and protection.peer_in(target) is None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        assert not protection.free(address)  # the full checks decide, on any Python
    else:
        assert protection.free(address) == full, (address, guarded, allow, patterns)
