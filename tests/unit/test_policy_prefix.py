"""Prefix bans (`[ban.prefix]`) as "these hits at these times give exactly these decisions":
IPv6 sources counted and banned per prefix, spread bans and their growth, the bans inside
ending, carve-outs around every protected address, expiry and escalation."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from porttrap.config.schema import BanPolicy, PrefixPolicy
from porttrap.model import Ban, Change, Hit, IPNetwork, Outcome, Proto, Unban
from porttrap.policy import Policy, Protection
from porttrap.policy.engine import Verdict
from porttrap.policy.prefix import Spread, carve, prefix_of, prefix_reason, source_unit
from porttrap.store.base import StoredBan

T0 = 1_800_000_000.0
H = 3600.0
NET = "198.51.100"


def hit(at: float, source: str, port: int = 23, kind: str = "connect") -> Hit:
    local = "2001:db8:ffff::1" if ":" in source else "203.0.113.1"
    return Hit(T0 + at, ip_address(source), 40000, ip_address(local), port, Proto.TCP, kind)


def prefixed(
    spread: int = 3,
    v6_source: int = 128,
    v4: tuple[int, ...] = (24,),
    v6: tuple[int, ...] = (64, 56, 48),
    **ban: float,
) -> BanPolicy:
    prefix = PrefixPolicy(v6_source=v6_source, v4=v4, v6=v6, spread=spread)
    return BanPolicy(time=H, prefix=prefix, **ban)  # type: ignore[arg-type]


def make(policy: BanPolicy, allow: tuple[str, ...] = (), own: tuple[str, ...] = ()) -> Policy:
    protection = Protection([ip_network(a) for a in allow], [ip_address(o) for o in own])
    return Policy(policy, (), protection)


def changes(verdict: Verdict) -> list[Change]:
    return [] if verdict.ban is None else [verdict.ban, *verdict.more]


def bans_of(verdict: Verdict) -> list[str]:
    return [str(c.target) for c in changes(verdict) if isinstance(c, Ban)]


def active(policy: Policy, at: float = 0.0) -> set[str]:
    return {str(b.target) for b in policy.active(T0 + at)}


def play(policy: Policy, *hits: Hit) -> list[Verdict]:
    return [policy.on_hit(h, h.at) for h in hits]


# -- IPv6 sources are prefixes -------------------------------------------------------------


def test_a_rotation_inside_a_64_is_one_source_banned_at_the_second_address() -> None:
    policy = make(prefixed(spread=0, v6_source=64, trigger=2))
    first, second = play(policy, hit(0, "2001:db8:1:2::1", 23), hit(1, "2001:db8:1:2::99", 24))
    assert first.outcome is Outcome.COUNTED
    assert second.outcome is Outcome.BANNED
    assert bans_of(second) == ["2001:db8:1:2::/64"]
    assert second.ban is not None and second.ban.reason == "trap:tcp/24"
    third = policy.on_hit(hit(2, "2001:db8:1:2:dead::7", 25), T0 + 2)
    assert third.outcome is Outcome.ALREADY_BANNED


def test_with_v6_source_128_each_ipv6_address_counts_alone() -> None:
    policy = make(prefixed(spread=0, v6_source=128, trigger=2))
    verdicts = play(policy, hit(0, "2001:db8:1:2::1", 23), hit(1, "2001:db8:1:2::99", 24))
    assert [v.outcome for v in verdicts] == [Outcome.COUNTED, Outcome.COUNTED]


def test_an_ipv6_prefix_ban_leaves_out_the_hosts_own_address_in_it() -> None:
    policy = make(prefixed(spread=0, v6_source=64), own=("2001:db8:1:2::1",))
    verdict = policy.on_hit(hit(0, "2001:db8:1:2::66"), T0)
    banned = [ip_network(t) for t in bans_of(verdict)]
    assert len(banned) == 64  # a /64 less one address: one CIDR per bit
    assert not any(ip_address("2001:db8:1:2::1") in net for net in banned)
    assert any(ip_address("2001:db8:1:2::66") in net for net in banned)
    assert [n.event for n in verdict.notes] == ["prefix-carved"]


def test_an_ipv6_prefix_that_would_take_too_many_pieces_bans_the_address_alone() -> None:
    own = ("2001:db8:1:2::1", "2001:db8:1:2:8000::1", "2001:db8:1:2:4000::1")
    policy = make(prefixed(spread=0, v6_source=64), own=own)
    verdict = policy.on_hit(hit(0, "2001:db8:1:2::66"), T0)
    assert bans_of(verdict) == ["2001:db8:1:2::66/128"]
    assert [n.event for n in verdict.notes] == ["prefix-refused"]


# -- spread ------------------------------------------------------------------------------


def test_sources_spread_over_a_24_ban_it_at_the_spread_th_and_end_the_bans_inside() -> None:
    policy = make(prefixed(spread=3))
    one, two, three = play(policy, hit(0, f"{NET}.1"), hit(5, f"{NET}.2"), hit(9, f"{NET}.3"))
    assert bans_of(one) == [f"{NET}.1/32"] and not one.more
    assert bans_of(two) == [f"{NET}.2/32"] and not two.more
    assert bans_of(three) == [f"{NET}.3/32", f"{NET}.0/24"]
    ended = [c for c in three.more if isinstance(c, Unban)]
    assert {str(u.target) for u in ended} == {f"{NET}.1/32", f"{NET}.2/32", f"{NET}.3/32"}
    assert all(u.reason == f"covered by the prefix ban on {NET}.0/24" for u in ended)
    assert active(policy, 9) == {f"{NET}.0/24"}
    prefix_ban = three.more[-1]
    assert isinstance(prefix_ban, Ban)
    assert prefix_ban.reason == f"prefix {NET}.0/24 from {NET}.1, {NET}.2, {NET}.3"
    assert prefix_ban.ban_count == 1 and prefix_ban.expires_at == T0 + 9 + H
    assert [n.event for n in three.notes] == ["prefix-ban"]
    assert policy.on_hit(hit(10, f"{NET}.200"), T0 + 10).outcome is Outcome.ALREADY_BANNED


def test_sources_outside_the_window_do_not_count() -> None:
    policy = make(prefixed(spread=3, window=600.0))
    verdicts = play(policy, hit(0, f"{NET}.1"), hit(500, f"{NET}.2"), hit(700, f"{NET}.3"))
    assert all(not v.more for v in verdicts)
    assert active(policy, 700) == {f"{NET}.1/32", f"{NET}.2/32", f"{NET}.3/32"}


def test_spread_zero_never_bans_a_prefix() -> None:
    policy = make(prefixed(spread=0))
    verdicts = play(policy, *(hit(n, f"{NET}.{n + 1}") for n in range(10)))
    assert all(not v.more for v in verdicts)


def test_the_ban_grows_to_the_next_length_when_the_evidence_spans_several_prefixes() -> None:
    policy = make(prefixed(spread=2, v4=(24, 16)))
    verdicts = play(
        policy,
        hit(0, "198.51.1.1"),
        hit(1, "198.51.1.2"),  # 198.51.1.0/24
        hit(2, "198.51.2.1"),  # a second /24 with evidence: the /16 holds two
    )
    assert "198.51.1.0/24" in bans_of(verdicts[1])
    assert bans_of(verdicts[2]) == ["198.51.2.1/32", "198.51.0.0/16"]
    ended = {str(c.target) for c in verdicts[2].more if isinstance(c, Unban)}
    assert ended == {"198.51.1.0/24", "198.51.2.1/32"}
    assert active(policy, 2) == {"198.51.0.0/16"}


def test_ipv6_prefixes_grow_from_64s_to_their_56() -> None:
    policy = make(prefixed(spread=2, v6_source=64))
    verdicts = play(policy, hit(0, "2001:db8:0:1::1"), hit(1, "2001:db8:0:2::1"))
    assert bans_of(verdicts[1]) == ["2001:db8:0:2::/64", "2001:db8::/56"]
    assert active(policy, 1) == {"2001:db8::/56"}


def test_an_admins_network_ban_inside_stands_in_the_way() -> None:
    policy = make(prefixed(spread=2))
    policy.ban([ip_network(f"{NET}.128/25")], T0, reason="manual")
    verdicts = play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    assert [n.event for n in verdicts[1].notes] == ["prefix-refused"]
    assert f"{NET}.128/25" in verdicts[1].notes[0].why
    assert active(policy, 1) == {f"{NET}.128/25", f"{NET}.1/32", f"{NET}.2/32"}


def test_a_single_ban_that_outlasts_the_prefix_ban_stays() -> None:
    policy = make(prefixed(spread=2))
    policy.ban([ip_network(f"{NET}.9")], T0, permanent=True)
    play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    assert active(policy, 1) == {f"{NET}.0/24", f"{NET}.9/32"}


# -- carve-outs ----------------------------------------------------------------------------


def test_an_allow_listed_address_inside_is_carved_out() -> None:
    policy = make(prefixed(spread=3), allow=(f"{NET}.77",))
    verdicts = play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"), hit(2, f"{NET}.3"))
    pieces = [c for c in verdicts[2].more if isinstance(c, Ban)]
    assert len(pieces) == 8  # a /24 less one address
    assert not any(ip_address(f"{NET}.77") in p.target for p in pieces)
    assert {p.reason for p in pieces} == {
        f"prefix {NET}.0/24 less 1 protected from " + ", ".join(f"{NET}.{n}" for n in (1, 2, 3))
    }
    assert [n.event for n in verdicts[2].notes] == ["prefix-ban", "prefix-carved"]
    assert "198.51.100.77 (allow list)" in verdicts[2].notes[1].why
    assert policy.banned(ip_address(f"{NET}.77"), T0 + 2) is None
    assert policy.banned(ip_address(f"{NET}.76"), T0 + 2) is not None


def test_live_clients_sessions_and_gateways_are_carved_out() -> None:
    policy = make(prefixed(spread=2), own=(f"{NET}.10",))
    policy.protection.set_clients([ip_address(f"{NET}.20")])
    policy.protection.set_sessions([ip_address(f"{NET}.30")])
    policy.protection.set_gateways([ip_address(f"{NET}.254")])
    play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    for kept in (10, 20, 30, 254):
        assert policy.banned(ip_address(f"{NET}.{kept}"), T0 + 1) is None
    assert policy.banned(ip_address(f"{NET}.100"), T0 + 1) is not None


def test_a_ban_inside_a_carved_out_hole_is_not_ended_by_the_prefix_ban() -> None:
    """A live client that scanned has its own ban; the prefix ban leaves the client out, so
    it does not cover that ban, which must stay (ending it would let the scanner go)."""
    policy = make(prefixed(spread=3))
    client = f"{NET}.20"
    (first,) = play(policy, hit(0, client))
    assert bans_of(first) == [f"{client}/32"]
    policy.protection.set_clients([ip_address(client)])  # its connection is still open
    *_, last = play(policy, hit(1, f"{NET}.1"), hit(2, f"{NET}.2"))
    assert [n.event for n in last.notes] == ["prefix-ban", "prefix-carved"]
    ended = {str(c.target) for c in last.more if isinstance(c, Unban)}
    assert ended == {f"{NET}.1/32", f"{NET}.2/32"}
    held = policy.banned(ip_address(client), T0 + 2)
    assert held is not None and str(held.target) == f"{client}/32"


def test_a_prefix_all_allowed_is_refused() -> None:
    policy = make(prefixed(spread=2), allow=(f"{NET}.0/25", f"{NET}.128/25"))
    # the sources themselves are allowed, so nothing bans; a wider allow entry is the case
    # of a prefix whose sources were banned before the list grew: refused whole
    assert carve(ip_network(f"{NET}.0/24"), [ip_network(f"{NET}.0/23")], 64) == ()
    assert policy.on_hit(hit(0, f"{NET}.1"), T0).outcome is Outcome.ALLOWED


def test_an_allow_list_entry_added_later_is_carved_out_of_the_active_prefix_ban() -> None:
    policy = make(prefixed(spread=2))
    play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    assert active(policy, 1) == {f"{NET}.0/24"}
    protection = Protection([ip_network(f"{NET}.64/26")])
    out = policy.reconfigure(prefixed(spread=2), (), protection, T0 + 5)
    lifted = [c for c in out if isinstance(c, Unban)]
    assert [str(u.target) for u in lifted] == [f"{NET}.0/24"]
    assert "carved out" in lifted[0].reason
    assert active(policy, 5) == {f"{NET}.0/26", f"{NET}.128/25"}
    kept = [c for c in out if isinstance(c, Ban)]
    assert {b.expires_at for b in kept} == {T0 + 1 + H}  # the ban's own times carry over


def test_a_new_host_address_is_carved_out_at_once() -> None:
    policy = make(prefixed(spread=2))
    play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    out = policy.set_own_addresses([ip_address(f"{NET}.5")], T0 + 3)
    assert any(isinstance(c, Unban) for c in out)
    assert policy.banned(ip_address(f"{NET}.5"), T0 + 3) is None
    assert policy.banned(ip_address(f"{NET}.6"), T0 + 3) is not None


def test_an_admins_network_ban_over_a_new_allow_entry_is_lifted_whole_as_before() -> None:
    policy = make(prefixed(spread=2))
    policy.ban([ip_network(f"{NET}.0/24")], T0)
    out = policy.reconfigure(prefixed(spread=2), (), Protection([ip_network(f"{NET}.7")]), T0)
    assert [type(c) for c in out] == [Unban]
    assert active(policy) == set()


def test_unban_all_of_a_carved_prefix_lifts_its_pieces() -> None:
    policy = make(prefixed(spread=2), allow=(f"{NET}.77",))
    play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    assert len(active(policy, 1)) == 8
    lifted = policy.unban_all(ip_network(f"{NET}.0/24"), T0 + 2)
    assert len(lifted) == 9  # the prefix named, and its 8 pieces
    assert active(policy, 2) == set()


def test_covering_names_the_network_ban_that_holds_an_address() -> None:
    policy = make(prefixed(spread=2))
    play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    held = policy.covering(ip_address(f"{NET}.1"), T0 + 1)
    assert held is not None and str(held.target) == f"{NET}.0/24"


# -- expiry and escalation -----------------------------------------------------------------


def test_a_prefix_ban_expires_and_escalates_with_its_own_count() -> None:
    policy = make(prefixed(spread=2))
    first = play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))[1]
    assert first.more[-1].target == ip_network(f"{NET}.0/24")
    expired = policy.expire(T0 + 1 + H)
    assert [str(b.target) for b in expired] == [f"{NET}.0/24"]
    later = 2 * H
    again = play(policy, hit(later, f"{NET}.3"), hit(later + 1, f"{NET}.4"))[1]
    prefix_ban = again.more[-1]
    assert isinstance(prefix_ban, Ban) and prefix_ban.ban_count == 2
    assert prefix_ban.expires_at == T0 + later + 1 + 4 * H  # quadratic: 2**2 hours
    # the sources' own counts are theirs: .3 and .4 were banned for the first time
    assert all(c.ban_count == 1 for c in again.more[:-1] if isinstance(c, Ban))


def test_an_unverified_prefix_ban_is_bounded_like_the_bans_it_rests_on() -> None:
    policy = make(prefixed(spread=2, confirm=1))
    probes = play(policy, hit(0, f"{NET}.1", kind="syn"), hit(1, f"{NET}.2", kind="syn"))
    prefix_ban = probes[1].more[-1]
    assert isinstance(prefix_ban, Ban) and not prefix_ban.verified
    assert prefix_ban.expires_at == T0 + 1 + 600.0  # unverified_max_time


# -- the pure pieces -----------------------------------------------------------------------


def test_carve_gives_the_fewest_cidrs() -> None:
    pieces = carve(ip_network("192.0.2.0/24"), [ip_network("192.0.2.0/25")], 64)
    assert pieces == (ip_network("192.0.2.128/25"),)
    assert carve(ip_network("192.0.2.0/24"), [ip_network("192.0.2.1")], 7) is None
    assert carve(ip_network("192.0.2.0/24"), [ip_network("2001:db8::1")], 1) == (
        ip_network("192.0.2.0/24"),
    )


def test_the_reason_names_the_prefix_and_reads_back() -> None:
    sources: list[IPNetwork] = [ip_network(f"{NET}.{n}") for n in range(1, 6)]
    reason = prefix_reason(ip_network(f"{NET}.0/24"), sources)
    assert reason == f"prefix {NET}.0/24 from {NET}.1, {NET}.2, {NET}.3 +2 more"
    assert prefix_of(reason) == ip_network(f"{NET}.0/24")
    assert prefix_of(reason + " (fleet: web-1)") == ip_network(f"{NET}.0/24")
    assert prefix_of("trap:tcp/23") is None


def test_source_unit() -> None:
    assert source_unit(ip_address("2001:db8::1:2:3:4"), 64) == ip_network("2001:db8::/64")
    assert source_unit(ip_address("2001:db8::1"), 128) == ip_network("2001:db8::1/128")
    assert source_unit(ip_address("192.0.2.1"), 64) == ip_network("192.0.2.1/32")


def test_spread_is_bounded() -> None:
    spread = Spread(PrefixPolicy(spread=3), limit=10)
    for n in range(100):
        spread.add(IPv4Network((n << 8, 32)), T0, True, T0 - 600)
    assert len(spread) == 10


# -- never over a protected address --------------------------------------------------------

_octet = st.integers(min_value=0, max_value=255)


@st.composite
def _protected(draw: st.DrawFn) -> list[IPNetwork]:
    nets: list[IPNetwork] = []
    for _ in range(draw(st.integers(0, 6))):
        length = draw(st.sampled_from([32, 32, 30, 28, 26, 25, 24]))
        address = (198 << 24) | (51 << 16) | (draw(st.integers(99, 100)) << 8) | draw(_octet)
        nets.append(IPv4Network((address >> (32 - length) << (32 - length), length)))
    return nets


@st.composite
def _case(draw: st.DrawFn) -> tuple[list[IPNetwork], list[int], list[int], list[str], int]:
    """An allow list, own addresses and live clients (last octets), sources, a spread."""
    sources = draw(st.lists(st.tuples(st.integers(99, 100), _octet), min_size=1, max_size=25))
    return (
        draw(_protected()),
        draw(st.lists(_octet, max_size=3)),
        draw(st.lists(_octet, max_size=3)),
        [f"198.51.{third}.{fourth}" for third, fourth in sources],
        draw(st.integers(2, 4)),
    )


@settings(max_examples=150, deadline=None)
@given(case=_case(), later=_protected())
def test_no_prefix_ban_ever_covers_a_protected_address(
    case: tuple[list[IPNetwork], list[int], list[int], list[str], int], later: list[IPNetwork]
) -> None:
    allow, own, clients, sources, spread = case
    own_addresses = [ip_address(f"198.51.100.{o}") for o in own]
    policy = Policy(prefixed(spread=spread, v4=(24, 23)), (), Protection(allow, own_addresses))
    policy.protection.set_clients([ip_address(f"198.51.99.{c}") for c in clients])
    for n, source in enumerate(sources):
        policy.on_hit(hit(n, source), T0 + n)
    now = T0 + len(sources)
    protected = [*allow, *(ip_network(a) for a in own_addresses)]
    protected += [ip_network(f"198.51.99.{c}") for c in clients]
    _assert_spares(policy, protected, now)
    # an allow list that grows later is carved out of what is banned
    policy.reconfigure(policy.policy, (), Protection([*allow, *later]), now)
    _assert_spares(policy, [*protected, *later], now)


def _assert_spares(policy: Policy, protected: list[IPNetwork], now: float) -> None:
    for ban in policy.active(now):
        if ban.target.prefixlen == ban.target.max_prefixlen:
            continue  # a source's own ban: the source was not protected when it hit
        for net in protected:
            assert not ban.target.overlaps(net), (ban, net)


def test_config_reads_the_section() -> None:
    from porttrap.config.loader import load_text

    cfg = load_text("[ban.prefix]\nv6_source = 64\nv4 = [16, 24]\nspread = 3\n", None)
    assert cfg.ban.prefix == replace(PrefixPolicy(), v6_source=64, v4=(24, 16), spread=3)
    assert cfg.ban.prefix.lengths(6) == (56, 48)
    assert not load_text("", None).ban.prefix.on


def test_network_bans_are_found_by_length_however_many() -> None:
    from porttrap.policy.netbans import SCAN_BELOW, NetBans

    nets = NetBans()
    for n in range(SCAN_BELOW * 4):
        target = ip_network(f"2001:db8:{n:x}::/48")
        nets[target] = Ban(target, T0, T0 + H, 1, "manual")
    nets[ip_network(f"{NET}.0/24")] = Ban(ip_network(f"{NET}.0/24"), T0, None, 1, "manual")
    found = nets.covering(ip_address("2001:db8:3f:1::1"), T0)
    assert found is not None and found.target == ip_network("2001:db8:3f::/48")
    assert nets.covering(ip_address("2001:db8:ffff::1"), T0) is None
    assert nets.covering(ip_address(f"{NET}.9"), T0) is not None
    assert nets.covering(ip_address("2001:db8:3f::1"), T0 + H) is None  # it has ended
    nets.pop(ip_network(f"{NET}.0/24"))
    del nets[ip_network("2001:db8:3f::/48")]
    assert nets.covering(ip_address(f"{NET}.9"), T0) is None
    assert nets.covering(ip_address("2001:db8:3f::1"), T0) is None
    assert nets.pop(ip_network("2001:db8:ffff::/48")) is None


def test_an_admins_permanent_ban_inside_an_ipv6_prefix_stays() -> None:
    policy = make(prefixed(spread=0, v6_source=64))
    policy.ban([ip_network("2001:db8:1:2::7")], T0, permanent=True)
    verdict = policy.on_hit(hit(0, "2001:db8:1:2::66"), T0)
    assert bans_of(verdict) == ["2001:db8:1:2::/64"]
    assert active(policy) == {"2001:db8:1:2::/64", "2001:db8:1:2::7/128"}


def test_a_longer_network_ban_inside_that_outlasts_the_prefix_stands_in_the_way() -> None:
    """The kernel's interval sets cannot hold a /64 inside a /56: the /56 waits."""
    policy = make(prefixed(spread=2, v6_source=64))
    first = policy.on_hit(hit(0, "2001:db8:0:1::1"), T0)
    assert first.ban is not None
    policy.expire(T0 + H)
    again = policy.on_hit(hit(H, "2001:db8:0:1::1"), T0 + H)  # its second ban: 4 h
    assert again.ban is not None and again.ban.ban_count == 2
    other = policy.on_hit(hit(H + 1, "2001:db8:0:2::1"), T0 + H + 1)  # the /56 would last 1 h
    assert [n.event for n in other.notes] == ["prefix-refused"]
    assert "2001:db8:0:1::/64 stands in the way" in other.notes[0].why
    assert active(policy, H + 1) == {"2001:db8:0:1::/64", "2001:db8:0:2::/64"}


def test_a_restored_carved_prefix_ban_counts_once_toward_its_escalation() -> None:
    policy = make(prefixed(spread=2), allow=(f"{NET}.77",))
    made = play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))[1]
    pieces = [StoredBan(c) for c in made.more if isinstance(c, Ban)]
    assert len(pieces) == 8
    restored = make(prefixed(spread=2), allow=(f"{NET}.77",))
    restored.restore(pieces, T0 + 2 * H)  # all ended by now
    again = play(restored, hit(2 * H, f"{NET}.3"), hit(2 * H + 1, f"{NET}.4"))[1]
    assert {
        c.ban_count for c in again.more if isinstance(c, Ban) and c.reason[:7] == "prefix "
    } == {2}


_v6_low = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def _v6_case(draw: st.DrawFn) -> tuple[list[IPNetwork], list[IPNetwork], list[str]]:
    """Protected networks and addresses, and sources, inside 2001:db8::/62 (four /64s)."""

    def address() -> int:
        return (0x20010DB8 << 96) | (draw(st.integers(0, 3)) << 64) | draw(_v6_low)

    allow: list[IPNetwork] = []
    for _ in range(draw(st.integers(0, 4))):
        length = draw(st.sampled_from([128, 128, 120, 96, 64]))
        allow.append(IPv6Network((address() >> (128 - length) << (128 - length), length)))
    own: list[IPNetwork] = [IPv6Network(address()) for _ in range(draw(st.integers(0, 2)))]
    sources = [str(IPv6Address(address())) for _ in range(draw(st.integers(1, 20)))]
    return allow, own, sources


@settings(max_examples=100, deadline=None)
@given(case=_v6_case(), spread=st.integers(2, 3))
def test_no_ipv6_prefix_ban_covers_a_protected_address(
    case: tuple[list[IPNetwork], list[IPNetwork], list[str]], spread: int
) -> None:
    allow, own, sources = case
    protection = Protection(allow, [o.network_address for o in own])
    policy = Policy(prefixed(spread=spread, v6_source=64, v6=(63, 62)), (), protection)
    for n, source in enumerate(sources):
        policy.on_hit(hit(n, source), T0 + n)
    _assert_spares(policy, [*allow, *own], T0 + len(sources))


def test_a_carve_is_no_forgiveness_the_prefix_keeps_its_count() -> None:
    policy = make(prefixed(spread=2))
    play(policy, hit(0, f"{NET}.1"), hit(1, f"{NET}.2"))
    policy.reconfigure(prefixed(spread=2), (), Protection([ip_network(f"{NET}.64/26")]), T0 + 5)
    policy.expire(T0 + 2 * H)
    again = play(policy, hit(2 * H, f"{NET}.3"), hit(2 * H + 1, f"{NET}.4"))[1]
    counts = {c.ban_count for c in again.more if isinstance(c, Ban) and c.reason[:7] == "prefix "}
    assert counts == {2}
