"""Hits that cannot prove their source (stealth probes, UDP datagrams) and hits from recent
clients, as "these hits at these times give exactly these decisions"."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porttrap.config.schema import BanPolicy
from porttrap.model import Evidence, Hit, Outcome, Proto
from porttrap.policy import Policy, Protection

T0 = 1_800_000_000.0
ATTACKER = "198.51.100.7"
BANNED, COUNTED, CLIENT = Outcome.BANNED, Outcome.COUNTED, Outcome.CLIENT


def hit(
    at: float,
    kind: str = "syn",
    port: int = 23,
    client: bool = False,
    source: str = ATTACKER,
) -> Hit:
    proto = Proto.UDP if kind == "udp" else Proto.TCP
    local = ip_address("203.0.113.1")
    return Hit(T0 + at, ip_address(source), 40000, local, port, proto, kind, client)


def make(
    trigger: int = 1,
    confirm: int = 2,
    window: float = 600,
    time: float = 3600,
    unverified_max_time: float = 600,
) -> Policy:
    policy = BanPolicy(
        trigger=trigger,
        confirm=confirm,
        window=window,
        time=time,
        unverified_max_time=unverified_max_time,
    )
    return Policy(policy, (), Protection([]))


def play(engine: Policy, hits: list[Hit]) -> list[Outcome]:
    return [engine.on_hit(h, h.at).outcome for h in hits]


def test_one_probe_is_counted_not_banned() -> None:
    assert play(make(), [hit(0)]) == [COUNTED]


@pytest.mark.parametrize(("kind", "port"), [("syn", 23), ("fin", 24), ("xmas", 8080)])
def test_a_second_probe_in_the_window_bans(kind: str, port: int) -> None:
    assert play(make(), [hit(0), hit(30, kind, port)]) == [COUNTED, BANNED]


def test_udp_datagrams_cannot_prove_their_source() -> None:
    assert play(make(), [hit(0, "udp", 53), hit(1, "udp", 53)]) == [COUNTED, BANNED]


def test_confirm_one_bans_on_the_first_probe() -> None:
    assert play(make(confirm=1), [hit(0), hit(0, "udp", source="198.51.100.8")]) == [
        BANNED,
        BANNED,
    ]


def test_a_handshake_bans_at_once() -> None:
    assert play(make(confirm=5), [hit(0, "connect")]) == [BANNED]


def test_a_handshake_needs_only_the_distinct_port_trigger() -> None:
    hits = [hit(0, "connect", 23), hit(1, "connect", 24)]
    assert play(make(trigger=2, confirm=5), hits) == [COUNTED, BANNED]


def test_probes_from_a_client_never_ban_nor_count() -> None:
    probes = [hit(n, kind, 1000 + n, client=True) for n, kind in enumerate(["syn", "fin"] * 50)]
    later = [hit(200), hit(201, client=True), hit(202, "udp", client=True)]
    assert play(make(), probes + later) == [CLIENT] * 100 + [COUNTED, CLIENT, CLIENT]


def test_a_client_that_completes_handshakes_to_two_trap_ports_is_banned() -> None:
    hits = [hit(0, client=True), hit(1, "connect", 23, client=True)]
    hits += [hit(2, "connect", 23, client=True), hit(3, "connect", 24, client=True)]
    assert play(make(), hits) == [CLIENT, COUNTED, COUNTED, BANNED]


def test_a_clients_one_handshake_to_one_trap_port_is_a_health_check_not_a_scan() -> None:
    hits = [hit(n * 5.0, "connect", 8080, client=True) for n in range(10)]
    assert play(make(), hits) == [COUNTED] * 10
    assert Policy(BanPolicy(client_trigger=1), (), Protection([])).on_hit(
        hit(0, "connect", 8080, client=True), T0
    ).outcome is BANNED  # fmt: skip


def test_handshakes_prove_the_probes_of_their_source() -> None:
    engine = make(trigger=2)
    assert play(engine, [hit(0, "connect", 23), hit(1, "syn", 24)]) == [COUNTED, BANNED]
    (ban,) = engine.active(T0 + 1)
    assert ban.evidence is Evidence.VERIFIED and ban.expires_at == T0 + 1 + 3600


def test_probes_alone_make_a_short_unverified_ban_never_a_permanent_one() -> None:
    engine = make(time=3600, unverified_max_time=600)
    for round_ in range(5):  # five times over: the escalation is capped, never permanent
        start = round_ * 1000.0
        assert play(engine, [hit(start), hit(start + 1)]) == [COUNTED, BANNED]
        (ban,) = engine.active(T0 + start + 1)
        assert ban.evidence is Evidence.UNVERIFIED and ban.ban_count == round_ + 1
        assert ban.expires_at == T0 + start + 1 + 600
        engine.expire(T0 + start + 700)


def test_unverified_bans_leave_the_verified_escalation_alone() -> None:
    """Forged probes in an innocent's name, then its one real mistake: its first ban."""
    engine = make(time=3600)
    for start in (0.0, 1000.0, 2000.0):
        play(engine, [hit(start), hit(start + 1)])
        engine.expire(T0 + start + 700)
    verdict = engine.on_hit(hit(3000, "connect"), T0 + 3000)
    assert verdict.ban is not None and verdict.ban.ban_count == 1
    assert verdict.ban.expires_at == T0 + 3000 + 3600


def test_the_confirm_count_resets_when_the_window_closes() -> None:
    # a hit exactly `window` old has left it, as for the distinct ports
    hits = [hit(0), hit(600), hit(1250), hit(1300)]
    assert play(make(window=600), hits) == [COUNTED, COUNTED, COUNTED, BANNED]


def test_probes_need_trigger_ports_and_confirm_hits() -> None:
    hits = [hit(0, port=23), hit(1, port=23), hit(2, port=24), hit(3, "fin", 25)]
    assert play(make(trigger=3, confirm=2), hits) == [COUNTED, COUNTED, COUNTED, BANNED]
    other = [hit(t, port=p, source="198.51.100.8") for t, p in enumerate([23, 24, 25, 25, 26])]
    assert play(make(trigger=3, confirm=5), other) == [COUNTED] * 4 + [BANNED]


def test_forget_quiet_forgets_counts_whose_window_closed() -> None:
    engine = make(window=600, confirm=3)
    play(engine, [hit(0), hit(0, source="198.51.100.8"), hit(300, source="198.51.100.8")])
    assert engine.forget_quiet(T0 + 599) == 2
    assert engine.watched() == 2
    assert engine.forget_quiet(T0 + 600) == 1
    assert engine.forget_quiet(T0 + 900) == 0
    assert engine.watched() == 0


def test_a_ban_forgets_the_counts() -> None:
    engine = make(time=60)
    assert play(engine, [hit(0), hit(1), hit(70)]) == [COUNTED, BANNED, COUNTED]
    assert engine.watched() == 1


KINDS = ["syn", "fin", "null", "udp", "connect"]
hit_plans = st.lists(
    st.tuples(
        st.integers(0, 40),  # seconds after the previous hit
        st.sampled_from(KINDS),
        st.integers(1, 4),  # port
        st.booleans(),  # client
    ),
    max_size=40,
)


@given(
    plan=hit_plans,
    trigger=st.integers(1, 3),
    confirm=st.integers(1, 4),
    window=st.sampled_from([10.0, 60.0]),
)
def test_the_engine_matches_the_rules(
    plan: list[tuple[int, str, int, bool]], trigger: int, confirm: int, window: float
) -> None:
    """The first ban comes exactly at the first counted hit (not a client's probe) that sees
    `trigger` distinct ports (two for a client's handshake) and, unless a handshake within the
    window proved the source, `confirm` hits within the window."""
    hits, at = [], 0.0
    for gap, kind, port, client in plan:
        at += gap
        hits.append(hit(at, kind, port, client))
    expected: list[Outcome] = []
    counted: list[Hit] = []
    for h in hits:
        if BANNED in expected:
            expected.append(Outcome.ALREADY_BANNED)  # the first ban outlasts the whole plan
        elif h.client and not h.verified:
            expected.append(CLIENT)
        else:
            counted.append(h)
            recent = [c for c in counted if c.at > h.at - window]
            ports = {(c.proto, c.port) for c in recent}
            needed = max(trigger, 2) if h.client and h.verified else trigger
            proven = any(c.verified for c in recent)
            ok = len(ports) >= needed and (proven or len(recent) >= confirm)
            expected.append(BANNED if ok else COUNTED)
    engine = make(trigger=trigger, confirm=confirm, window=window, unverified_max_time=1e9)
    assert play(engine, hits) == expected


@given(plan=hit_plans, confirm=st.integers(1, 6))
def test_fewer_probes_than_confirm_never_ban(
    plan: list[tuple[int, str, int, bool]], confirm: int
) -> None:
    probes = [hit(float(n), kind, port) for n, (_, kind, port, _) in enumerate(plan)]
    probes = [p for p in probes if not p.verified][: confirm - 1]
    assert BANNED not in play(make(confirm=confirm), probes)
