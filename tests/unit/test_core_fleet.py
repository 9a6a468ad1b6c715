"""The core's part of the fleet as playbooks: which decisions are published, and what the rows
of the shared log become here (local protection first, local durations, forgeable evidence
bounded, escalation counted fleet-wide, unbans)."""

from __future__ import annotations

import logging
from ipaddress import ip_address, ip_network

from porttrap.config.loader import load_text
from porttrap.config.schema import Config
from porttrap.core.commands import (
    ActionsAfter,
    Apply,
    Command,
    FlushSoon,
    Log,
    LogChanges,
    Publish,
    RecordChanges,
    Refuse,
)
from porttrap.core.core import Core
from porttrap.core.events import (
    AdminBan,
    AdminUnban,
    Event,
    FleetLinkChanged,
    FleetReceived,
    GatewaysChanged,
    HitSeen,
    Started,
    TurnEnded,
)
from porttrap.model import (
    Ban,
    Evidence,
    FleetEntry,
    FleetKind,
    Hit,
    Proto,
    Unban,
    decided_for,
    fleet_origin,
    fleet_reason,
)
from porttrap.policy.engine import KEPT_FROM_KERNEL
from porttrap.testing.playbook import T0, Playbook

H = 3600.0
HOST = "192.0.2.1"
ATTACKER = "198.51.100.7"
OTHER = "198.51.100.8"
OWN = frozenset({ip_address(HOST)})
FLEET = '[fleet]\nurl = "postgresql://db.example.net/porttrap"\nname = "web-1"\n'


def config(text: str = "", fleet: str = FLEET) -> Config:
    return load_text('[traps]\ntcp = ["23", "24"]\n[ban]\ntime = "1h"\n' + fleet + text, None)


def started(cfg: Config) -> tuple[Core, Playbook]:
    core = Core(cfg, started_at=T0)
    core.handle(Started(OWN, []), T0)
    return core, Playbook(core)


def feed(core: Core, *events: Event) -> list[Command]:
    """Every command `events` make, ends of turns included (for what a playbook would have to
    spell out in full)."""
    out: list[Command] = []
    for event in (*events, TurnEnded()):
        out += core.handle(event, T0)
    return out


def hit(source: str = ATTACKER, port: int = 23) -> Hit:
    return Hit(T0, ip_address(source), 40000, ip_address(HOST), port, Proto.TCP, "connect")


def ban(
    target: str,
    at: float = T0,
    seconds: float | None = H,
    *,
    count: int = 1,
    reason: str = "trap:tcp/23",
    evidence: Evidence = Evidence.VERIFIED,
) -> Ban:
    expires = None if seconds is None else at + seconds
    return Ban(ip_network(target), at, expires, count, reason, evidence)


_ids = iter(range(1, 1_000_000))


def row(b: Ban, host: str = "web-2") -> FleetEntry:
    return FleetEntry(next(_ids), host, FleetKind.BAN, b.target, b)


def unban_row(target: str, host: str = "web-2", wide: bool = False) -> FleetEntry:
    kind = FleetKind.UNBAN_FLEET if wide else FleetKind.UNBAN
    return FleetEntry(next(_ids), host, kind, ip_network(target))


def received(*entries: FleetEntry, clients: frozenset[str] = frozenset()) -> FleetReceived:
    return FleetReceived(entries, frozenset(ip_address(c) for c in clients))


def adopted(b: Ban, origin: str = "web-2") -> Ban:
    return Ban(b.target, b.banned_at, b.expires_at, b.ban_count, fleet_reason(b.reason, origin),
               b.evidence)  # fmt: skip


def batch(*changes: Ban | Unban, published: bool = False, now: float = T0) -> list[Command]:
    out: list[Command] = [Apply(changes, now), RecordChanges(changes)]
    if published:
        out.append(Publish(changes))
    return [*out, LogChanges(changes), ActionsAfter(changes)]


# -- what is published -------------------------------------------------------------------


def test_this_hosts_trap_ban_is_published_after_the_kernel_and_the_store() -> None:
    _, playbook = started(config())
    first = ban(ATTACKER)
    assert playbook >> HitSeen(hit()) << FlushSoon() >> TurnEnded() << batch(first, published=True)


def test_nothing_is_published_with_publish_off_or_without_a_fleet() -> None:
    for cfg in (config("publish = false\n"), config(fleet="")):
        _, playbook = started(cfg)
        assert playbook >> HitSeen(hit()) << FlushSoon() >> TurnEnded() << batch(ban(ATTACKER))


def test_a_ban_from_the_fleet_is_applied_in_one_batch_and_never_published_again() -> None:
    core, playbook = started(config())
    one, two = ban(ATTACKER, T0 - 10), ban(OTHER, T0 - 5, None, reason="manual")
    assert (
        playbook
        >> received(row(one), row(two, "web-3"))
        << FlushSoon()
        >> TurnEnded()
        << batch(adopted(one), adopted(two, "web-3"))  # no Publish
    )
    held = {b.target: b for b in core.policy.active(T0)}
    assert fleet_origin(held[ip_network(OTHER)].reason) == "web-3"
    assert decided_for(held[ip_network(OTHER)].reason) == "manual"


def test_admin_bans_and_unbans_are_published_fleet_wide_ones_marked() -> None:
    core, _ = started(config())
    target = (ip_network(ATTACKER),)
    published = [c for c in feed(core, AdminBan(target)) if isinstance(c, Publish)]
    assert [b.target for b in published[0].changes] == list(target)
    out = feed(core, AdminUnban(target), AdminUnban(target, fleet=True))
    unbans = [c for c in out if isinstance(c, Publish)]
    assert [u.fleet_wide for u in unbans] == [frozenset(), frozenset(target)]


def test_unban_fleet_is_refused_on_a_host_in_no_fleet() -> None:
    core, _ = started(config(fleet=""))
    refusal = feed(core, AdminUnban((ip_network(ATTACKER),), fleet=True))[0]
    assert isinstance(refusal, Refuse) and "in no fleet" in refusal.message and refusal.usage


def test_bans_kept_from_the_kernel_are_not_published() -> None:
    core, _ = started(config())
    kept = ban(ATTACKER, reason=KEPT_FROM_KERNEL)
    assert core.fleet.publish([kept, ban(OTHER)]) == [Publish([ban(OTHER)])]


# -- local protection always wins ---------------------------------------------------------


def test_fleet_bans_of_what_the_local_protection_holds_are_refused_and_recorded() -> None:
    core, _ = started(config(f'[allow]\naddresses = ["{OTHER}"]\n'))
    peer, client = "203.0.113.53", "198.51.100.99"
    targets = [HOST, "192.0.2.0/24", OTHER, "127.0.0.1", peer, "203.0.113.0/24", client]
    out = feed(
        core,
        GatewaysChanged(frozenset({ip_address(peer)})),
        received(*(row(ban(t)) for t in targets), clients=frozenset({client})),
    )
    refused = [c.fields["why"] for c in out if isinstance(c, Log) and c.name == "fleet-ban-refused"]
    assert refused == [
        f"{HOST} is an address of this host",
        f"192.0.2.0/24 contains {HOST}, an address of this host",
        f"{OTHER} is on the allow list",
        "127.0.0.1 is an address of this host",  # loopback
        f"{peer} holds {peer}, a peer of this host",
        f"203.0.113.0/24 holds {peer}, a peer of this host",
        f"{client} is a live client of this host",
    ]
    assert core.policy.active(T0) == []
    records = [c for c in out if isinstance(c, RecordChanges)]
    assert len(records) == len(targets)  # each in the history: a ban over at once, with why
    (first,) = records[0].changes
    assert isinstance(first, Ban) and first.expires_at == first.banned_at == T0
    assert first.reason == f"refused here: {HOST} is an address of this host (fleet: web-2)"
    assert core.fleet.counts.refused == len(targets)


def test_rows_of_this_host_and_with_accept_off_change_nothing() -> None:
    core, _ = started(config())
    assert feed(core, received(row(ban(ATTACKER), host="web-1"))) == []  # its own: nothing
    core, _ = started(config("accept = false\n"))
    assert feed(core, received(row(ban(ATTACKER)))) == []
    assert core.policy.active(T0) == []


# -- durations, evidence, escalation ---------------------------------------------------------


def test_a_trap_ban_lasts_what_this_hosts_settings_give_an_admins_keeps_its_times() -> None:
    core, _ = started(config())
    trap = ban(ATTACKER, T0 - 10, 60)  # decided elsewhere with 1 min
    manual = ban(OTHER, T0 - 10, 60, reason="manual")
    feed(core, received(row(trap), row(manual)))
    held = {b.target: b for b in core.policy.active(T0)}
    assert held[ip_network(ATTACKER)].expires_at == T0 - 10 + H  # 1h here ([ban] time)
    assert held[ip_network(OTHER)].expires_at == T0 - 10 + 60


def test_forgeable_evidence_is_bounded_here_as_where_it_was_decided() -> None:
    core, _ = started(config())
    forged = ban(ATTACKER, T0, None, count=5, evidence=Evidence.UNVERIFIED)  # "permanent"
    feed(core, received(row(forged)))
    (held,) = core.policy.active(T0)
    assert held.expires_at == T0 + 600  # unverified_max_time, never permanent
    assert held.evidence is Evidence.UNVERIFIED


def test_forgeable_fleet_bans_spend_this_hosts_budget() -> None:
    core, _ = started(config(fleet="unverified_rate = 1\n" + FLEET))
    many = [row(ban(f"203.0.113.{n}", evidence=Evidence.UNVERIFIED)) for n in range(1, 40)]
    feed(core, received(*many))
    assert 0 < len(core.policy.active(T0)) < 39  # a burst's worth, the rest counted
    assert core.fleet.counts.ignored == 39 - len(core.policy.active(T0))


def test_escalation_is_fleet_wide_and_a_duplicate_row_counts_once() -> None:
    core, _ = started(config())
    elsewhere = ban(ATTACKER, T0 - 2 * H, H)  # ended an hour ago, on web-2
    feed(core, received(row(elsewhere), row(elsewhere)))  # delivered twice
    verdict = core.policy.on_hit(hit(), T0)
    assert verdict.ban is not None and verdict.ban.ban_count == 2  # the second ban, not third
    assert verdict.ban.expires_at == T0 + 4 * H  # quadratic: 1h * 2**2


def test_a_ban_longer_than_the_one_held_replaces_it_a_shorter_one_is_ignored() -> None:
    core, _ = started(config())
    short = ban(ATTACKER, T0 - 5, 60, reason="manual")
    long = ban(ATTACKER, T0, None, count=3, reason="manual")
    feed(core, received(row(short), row(long, "web-3"), row(short, "web-4")))
    assert [b.expires_at for b in core.policy.active(T0)] == [None]
    assert core.fleet.counts.ignored == 1


# -- unbans -------------------------------------------------------------------------------


def test_an_unban_lifts_only_the_copy_of_its_hosts_ban() -> None:
    core, _ = started(config())
    feed(core, HitSeen(hit(OTHER)))  # this host's own ban of OTHER
    feed(core, received(row(ban(ATTACKER)), unban_row(OTHER), unban_row(ATTACKER, "web-3")))
    assert {str(b.target) for b in core.policy.active(T0)} == {f"{ATTACKER}/32", f"{OTHER}/32"}
    feed(core, received(unban_row(ATTACKER)))
    assert {str(b.target) for b in core.policy.active(T0)} == {f"{OTHER}/32"}
    assert core.fleet.counts.lifted == 1


def test_a_fleet_wide_unban_lifts_this_hosts_own_ban_too_and_is_not_published() -> None:
    core, playbook = started(config())
    feed(core, HitSeen(hit()))
    lifted = Unban(ip_network(ATTACKER), T0, "unbanned fleet-wide by web-2")
    assert (
        playbook
        >> received(unban_row(ATTACKER, wide=True))
        << FlushSoon()
        >> TurnEnded()
        << batch(lifted)
    )
    assert core.policy.active(T0) == []


# -- the link ------------------------------------------------------------------------------


def test_the_loss_and_the_return_of_the_link_are_logged_once_each() -> None:
    _, playbook = started(config())
    playbook.ignored = ()
    why = "this host protects itself alone meanwhile; its bans wait in the outbox"
    lost = Log("fleet-lost", logging.WARNING, {"error": "OperationalError: refused", "why": why})
    assert (
        playbook
        >> FleetLinkChanged(up=True)
        << Log("fleet-connected", logging.INFO, {"host": "web-1"})
        >> FleetLinkChanged(up=True)
        >> FleetLinkChanged(up=False, error="OperationalError: refused")
        << lost
        >> FleetLinkChanged(up=False, error="OperationalError: refused")
        >> FleetLinkChanged(up=True)
        << Log("fleet-connected", logging.INFO, {"host": "web-1"})
    )
