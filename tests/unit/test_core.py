"""The daemon's core as playbooks: these events, at these times, give exactly these commands
(`porttrap.testing.playbook`, after mitmproxy's). No loop, no kernel, no store: the paths the
end-to-end tests drive for real, checked here command by command."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from porttrap.cli import output
from porttrap.config.loader import load_text
from porttrap.config.schema import Config
from porttrap.core.commands import (
    ActionsAfter,
    ActionsBefore,
    ActionsExpired,
    ActionsStart,
    Answer,
    Apply,
    CheckFirewall,
    Command,
    Expire,
    FlushSoon,
    Log,
    LogChanges,
    Maintain,
    PrepareReload,
    PruneHits,
    RecordChanges,
    RecordHits,
    Refuse,
    Reloaded,
    ReplaceActions,
    RotateBlocks,
    Schedule,
    ServePorts,
    SetGateways,
    Setup,
    SetupReason,
    UpdateTraps,
)
from porttrap.core.core import CHECK_EVERY, MAINTAIN_EVERY, MAX_WRITE_BACKLOG, STORE_HINT, Core
from porttrap.core.events import (
    ActionsReplaced,
    AddressesChanged,
    AdminBan,
    AdminUnban,
    BlocksRotated,
    CountersRead,
    FirewallChecked,
    FirewallFailed,
    FirewallMissing,
    GatewaysChanged,
    HitSeen,
    Reconcile,
    ReloadCommitted,
    ReloadFailed,
    ReloadInvalid,
    ReloadPrepared,
    ReloadRequested,
    ServedPortsChanged,
    ServeFailed,
    SessionsChanged,
    Started,
    Stopping,
    StoreFailed,
    StoreRecovered,
    Tick,
    TurnEnded,
)
from porttrap.core.snapshot import IoFigures
from porttrap.core.views import ban_json, status
from porttrap.model import Ban, Evidence, Hit, Outcome, Proto, StoredBan, TrapReport, Unban
from porttrap.policy.engine import KEPT_FROM_KERNEL
from porttrap.sensorspec import SensorState, no_ports, spec_from_config
from porttrap.testing.playbook import T0, Playbook, later

# respond = "command" needs an action that runs on a ban (config.protection)
ON_BAN = '\n[[actions.command]]\nrun = ["/bin/true"]\n'

H = 3600.0
HOST = "192.0.2.1"
ATTACKER = "198.51.100.7"
OTHER = "198.51.100.8"
OWN = frozenset({ip_address(HOST)})


def config(text: str = "") -> Config:
    return load_text('[traps]\ntcp = ["23", "24"]\nudp = ["161"]\n' + text, None)


def hit(source: str = ATTACKER, port: int = 23, kind: str = "connect", client: bool = False) -> Hit:
    proto = Proto.UDP if kind == "udp" else Proto.TCP
    return Hit(T0, ip_address(source), 40000, ip_address(HOST), port, proto, kind, client)


def ban(
    target: str,
    at: float,
    seconds: float | None,
    *,
    count: int = 1,
    reason: str = "trap:tcp/23",
    evidence: Evidence = Evidence.VERIFIED,
) -> Ban:

    expires = None if seconds is None else at + seconds
    return Ban(ip_network(target), at, expires, count, reason, evidence)


UNVERIFIED_MAX = 600.0  # [ban] unverified_max_time by default


def watch(cfg: Config) -> SensorState:
    """What a connect-mode table holds besides the bans: the watch (clients, peers, marks)."""
    return SensorState(spec_from_config(cfg), no_ports())


def sent(*changes: Ban | Unban, now: float = T0) -> list[Command]:
    """The commands of a batch that goes out: the kernel, the store, the log, the actions."""
    return [Apply(changes, now), RecordChanges(changes), LogChanges(changes), ActionsAfter(changes)]


def started(cfg: Config) -> tuple[Core, Playbook]:
    """A core that has started with no bans (`Started` handled), and its playbook."""
    core = Core(cfg, started_at=T0)
    core.handle(Started(OWN, []), T0)
    return core, Playbook(core)


def test_a_trap_hit_bans_at_the_end_of_the_turn_kernel_first() -> None:
    cfg = config('[ban]\ntime = "1h"\n')
    core = Core(cfg, started_at=T0)
    first = ban(ATTACKER, T0, H)
    assert (
        Playbook(core)
        >> Started(OWN, [])
        << Setup([], T0, SetupReason.START, watch(cfg))
        << ActionsStart([])
        >> HitSeen(hit(), arrived=5.0)
        << FlushSoon()
        >> TurnEnded()
        << Apply([first], T0, arrivals=(5.0,))
        << RecordChanges([first])
        << LogChanges([first])
        << ActionsAfter([first])
        >> Tick()
        << RecordHits([(hit(), Outcome.BANNED)])
    )


def test_the_bans_of_one_turn_go_to_the_kernel_as_one_batch() -> None:
    core, playbook = started(config())
    bans = [ban(ATTACKER, T0, H), ban(OTHER, T0, H)]
    assert (
        playbook
        >> HitSeen(hit(ATTACKER))
        << FlushSoon()
        >> HitSeen(hit(OTHER))  # the turn goes on: no second FlushSoon
        >> HitSeen(hit(ATTACKER, port=24))  # already banned
        >> TurnEnded()
        << Apply(bans, T0)
        << RecordChanges(bans)
        << LogChanges(bans)
        << ActionsAfter(bans)
        >> TurnEnded()  # an empty turn sends nothing
    )
    assert core.stats.bans["temporary"] == 2
    assert core.stats.by_outcome() == {"banned": 2, "already-banned": 1}


def test_escalation_expiry_and_the_permanent_third_ban() -> None:
    core, playbook = started(config('[ban]\ntime = "1h"\n'))
    first, second = ban(ATTACKER, T0, H), ban(ATTACKER, T0 + H, 4 * H, count=2)
    third = ban(ATTACKER, T0 + 5 * H, None, count=3)
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << Apply([first], T0)
        << RecordChanges([first])
        << LogChanges([first])
        << ActionsAfter([first])
        >> later(H - 1)
        >> Tick()  # a second before its end: still on
        << RecordHits([(hit(), Outcome.BANNED)])
        >> later(1)
        >> Tick()
        << Expire([first], T0 + H)
        << ActionsExpired([first])
        >> HitSeen(replace(hit(), at=T0 + H))
        << FlushSoon()
        >> TurnEnded()
        << Apply([second], T0 + H)
        << RecordChanges([second])
        << LogChanges([second])
        << ActionsAfter([second])
        >> later(4 * H)
        >> Tick()
        << Expire([second], T0 + 5 * H)
        << ActionsExpired([second])
        << RecordHits([(replace(hit(), at=T0 + H), Outcome.BANNED)])
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << Apply([third], T0 + 5 * H)
        << RecordChanges([third])
        << LogChanges([third])
        << ActionsAfter([third])
        >> later(365 * 86400)
        >> Tick()  # a permanent ban never expires
        << RecordHits([(hit(), Outcome.BANNED)])
    )
    assert core.stats.unbans["expired"] == 2


def test_expiry_is_logged_and_expires_only_what_the_kernel_holds() -> None:
    cfg = config('[ban]\ntime = "1m"\nrespond = { tcp = "command" }\n' + ON_BAN)
    _, playbook = started(cfg)
    playbook.ignored = ()  # logs too
    trap = ban(ATTACKER, T0, 60)
    admin = ban(OTHER, T0, 60, reason="manual")
    assert (
        playbook
        >> AdminBan((ip_network(OTHER),), duration=60)
        << Apply([admin], T0)  # admin bans reach the kernel while a protocol bans ...
        << RecordChanges([admin])
        << LogChanges([admin])
        << ActionsAfter([admin])
        << Answer({"count": 1, "bans": [ban_json(admin)]}, after_store=True)
        >> HitSeen(hit())
        << FlushSoon()
        << Log("hit", logging.INFO, {"src": ip_address(ATTACKER), "sport": 40000,
                                     "dst": ip_address(HOST), "port": 23, "proto": Proto.TCP,
                                     "kind": "connect", "outcome": Outcome.BANNED})
        >> TurnEnded()  # ... and trap bans of a "command" protocol never do
        << RecordChanges([trap])
        << LogChanges([trap])
        << ActionsAfter([trap])
        >> later(60)
        >> Tick()
        << Expire([admin], T0 + 60)
        << Log("ban-expired", logging.INFO, {"address": OTHER, "ban_count": 1})
        << Log("ban-expired", logging.INFO, {"address": ATTACKER, "ban_count": 1})
        << ActionsExpired([admin, trap])
        << RecordHits([(hit(), Outcome.BANNED)])
    )  # fmt: skip


def test_first_commands_start_before_the_kernel_batch() -> None:
    cfg = config('[[actions.command]]\nrun = ["/bin/true"]\nfirst = true\n')
    _, playbook = started(cfg)
    first = ban(ATTACKER, T0, H)
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << ActionsBefore([first])
        << Apply([first], T0)
        << RecordChanges([first])
        << LogChanges([first])
        << ActionsAfter([first])
    )


def test_protected_sources_never_ban_and_are_recorded_as_such() -> None:
    _, playbook = started(config(f'[allow]\naddresses = ["{OTHER}"]\n'))
    assert (
        playbook
        >> HitSeen(hit(OTHER))
        >> HitSeen(hit(HOST))
        >> HitSeen(hit("127.0.0.1"))
        >> Tick()
        << RecordHits(
            [
                (hit(OTHER), Outcome.ALLOWED),
                (hit(HOST), Outcome.OWN_ADDRESS),
                (hit("127.0.0.1"), Outcome.OWN_ADDRESS),
            ]
        )
    )


def test_forged_probes_need_confirmation_and_never_ban_a_client_or_a_peer() -> None:
    _, playbook = started(stealth())
    syn = hit(kind="syn")
    client = hit(OTHER, kind="syn", client=True)
    peer = "198.51.100.9"
    assert (
        playbook
        >> HitSeen(syn)  # one forged SYN: counted, never a ban
        >> HitSeen(client)
        >> HitSeen(client)
        >> GatewaysChanged(frozenset({ip_address(peer)}))
        << SetGateways(frozenset({ip_address(peer)}))
        >> HitSeen(hit(peer, kind="udp", port=161))
        >> HitSeen(hit(peer, kind="udp", port=161))
        >> Tick()
        << RecordHits(
            [
                (syn, Outcome.COUNTED),
                (client, Outcome.CLIENT),
                (client, Outcome.CLIENT),
                (hit(peer, kind="udp", port=161), Outcome.PEER),
                (hit(peer, kind="udp", port=161), Outcome.PEER),
            ]
        )
        >> HitSeen(syn)  # the second SYN confirms: banned, briefly (forgeable evidence)
        << FlushSoon()
        >> HitSeen(hit(peer))  # a peer's completed handshake proves its address: that bans
        >> TurnEnded()
        << sent(ban(ATTACKER, T0, UNVERIFIED_MAX, evidence=Evidence.UNVERIFIED), ban(peer, T0, H))
    )


def test_hits_give_way_to_bans_when_the_disk_is_far_behind() -> None:
    core, playbook = started(config())
    playbook.ignored = ()
    assert (
        playbook
        >> HitSeen(hit(HOST))
        << Log("hit", logging.INFO, {"src": ip_address(HOST), "sport": 40000,
                                     "dst": ip_address(HOST), "port": 23, "proto": Proto.TCP,
                                     "kind": "connect", "outcome": Outcome.OWN_ADDRESS})
        >> Tick(store_backlog=MAX_WRITE_BACKLOG + 1)
        << Log("hits-not-stored", logging.WARNING, {"count": 1, "backlog": MAX_WRITE_BACKLOG + 1})
        >> Tick(store_backlog=MAX_WRITE_BACKLOG + 1)  # nothing is kept for later
    )  # fmt: skip
    assert core.hits_not_stored == 1


def test_the_firewall_is_checked_every_5_s_and_old_hits_pruned_every_minute() -> None:
    core, playbook = started(config())
    for tick in range(1, MAINTAIN_EVERY + 1):
        playbook >> Tick()
        if tick % CHECK_EVERY == 0:
            playbook << CheckFirewall(entries=True) << Maintain(T0)
    playbook << PruneHits(T0 - core.config.store.hit_retention, core.config.store.hit_rows)
    assert playbook


def test_a_refused_change_is_retried_once_as_a_rebuild_with_every_ban() -> None:
    cfg = config()
    _, playbook = started(cfg)
    first = ban(ATTACKER, T0, H)
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << sent(first)
        >> FirewallFailed("nftables refused it")
        << Schedule(5.0, Reconcile())
        >> FirewallFailed("again")  # one retry is enough
        >> later(5)
        >> Reconcile()
        << Setup([first], T0 + 5, SetupReason.RECONCILE, watch(cfg))
        >> FirewallMissing()  # someone ran `nft flush ruleset`
        << Setup([first], T0 + 5, SetupReason.RECONCILE, watch(cfg))
    )


def test_an_admin_ban_applies_at_once_and_answers_once_recorded() -> None:
    _, playbook = started(config())
    net = ban("203.0.113.0/24", T0, None, reason="manual")
    assert (
        playbook
        >> HitSeen(hit())  # queued this turn: goes out with the admin's
        << FlushSoon()
        >> AdminBan((ip_network("203.0.113.0/24"),), permanent=True)
        << sent(ban(ATTACKER, T0, H), net)
        << Answer({"count": 1, "bans": [ban_json(net)]}, after_store=True)
        >> AdminBan((ip_network(HOST),))
        << Refuse(f"refusing to ban {HOST}: {HOST} is an address of this host")
        >> AdminUnban((ip_network(ATTACKER), ip_network(OTHER)))
        << sent(Unban(ip_network(ATTACKER), T0, "manual"), Unban(ip_network(OTHER), T0, "manual"))
        << Answer({"count": 2, "unbanned": [ATTACKER, OTHER], "were_banned": [ATTACKER],
                   "held_by": {}}, after_store=True)
        >> TurnEnded()  # the FlushSoon of the first hit finds nothing left
    )  # fmt: skip


def test_an_admin_ban_keeps_the_admins_reason() -> None:
    _, playbook = started(config())
    net = ban("203.0.113.0/24", T0, None, reason="manual: scanned the mail server")
    assert (
        playbook
        >> AdminBan((ip_network("203.0.113.0/24"),), permanent=True,
                    reason="scanned the mail server")
        << sent(net)
        << Answer({"count": 1, "bans": [ban_json(net)]}, after_store=True)
    )  # fmt: skip


def test_unbanning_an_address_inside_a_banned_network_names_the_network() -> None:
    _, playbook = started(config())
    net = ban("203.0.113.0/24", T0, None, reason="manual")
    inside, wider = "203.0.113.9", ip_network("203.0.113.0/25")
    assert (
        playbook
        >> AdminBan((net.target,), permanent=True)
        << sent(net)
        << Answer({"count": 1, "bans": [ban_json(net)]}, after_store=True)
        >> AdminUnban((ip_network(inside), wider, ip_network(OTHER)))
        << sent(Unban(ip_network(inside), T0, "manual"), Unban(wider, T0, "manual"),
                Unban(ip_network(OTHER), T0, "manual"))
        << Answer({"count": 3, "unbanned": [inside, str(wider), OTHER], "were_banned": [],
                   "held_by": {inside: "203.0.113.0/24", str(wider): "203.0.113.0/24"}},
                  after_store=True)
    )  # fmt: skip


def test_unban_all_lifts_every_active_ban() -> None:
    _, playbook = started(config())
    first = ban("203.0.113.0/24", T0, None, reason="manual")
    second = ban("198.51.100.0/24", T0, None, reason="manual")
    targets = (first.target, second.target)
    assert (
        playbook
        >> AdminBan(targets, permanent=True)
        << sent(first, second)
        << Answer({"count": 2, "bans": [ban_json(first), ban_json(second)]}, after_store=True)
        >> AdminUnban((), everything=True)
        << sent(Unban(second.target, T0, "manual"), Unban(first.target, T0, "manual"))
        << Answer({"count": 2, "unbanned": ["198.51.100.0/24", "203.0.113.0/24"],
                   "were_banned": ["198.51.100.0/24", "203.0.113.0/24"], "held_by": {}},
                  after_store=True)
        >> AdminUnban((), everything=True)
        << Answer({"count": 0, "unbanned": [], "were_banned": [], "held_by": {}},
                  after_store=True)
    )  # fmt: skip


def test_a_start_restores_bans_and_lifts_those_now_protected() -> None:
    cfg = config(f'[allow]\naddresses = ["{OTHER}"]\n')
    kept, allowed = ban(ATTACKER, T0 - 60, H), ban(OTHER, T0 - 60, H)
    lifted = Unban(ip_network(OTHER), T0, f"protected: {OTHER} is on the allow list")
    assert (
        Playbook(Core(cfg, started_at=T0))
        >> Started(OWN, [StoredBan(kept), StoredBan(allowed)])
        << RecordChanges([lifted])
        << LogChanges([lifted])
        << ActionsAfter([lifted])
        << Setup([kept], T0, SetupReason.START, watch(cfg))
        << ActionsStart([kept])
    )


def test_a_new_own_address_is_unbanned() -> None:
    _, playbook = started(config())
    lifted = Unban(ip_network(ATTACKER), T0, f"protected: {ATTACKER} is an address of this host")
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << sent(ban(ATTACKER, T0, H))
        >> AddressesChanged(frozenset({ip_address(HOST), ip_address(ATTACKER)}))
        << FlushSoon()
        >> TurnEnded()
        << sent(lifted)
    )


def test_stopping_sends_out_what_is_pending_and_writes_every_hit() -> None:
    _, playbook = started(config())
    first = ban(ATTACKER, T0, H)
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> Stopping()
        << Apply([first], T0)
        << RecordChanges([first])
        << LogChanges([first])
        << ActionsAfter([first])
        << RecordHits([(hit(), Outcome.BANNED)])
    )


# -- the kernel sensor -----------------------------------------------------------------------


def stealth() -> Config:
    return load_text('[traps]\nmode = "stealth"\ntcp = ["23"]\nudp = ["161"]\n'
                     '[kernel]\nblock_size = 2048\nblock_time = "1m"\n', None)  # fmt: skip


def ports(tcp: Iterable[int] = (), udp: Iterable[int] = ()) -> dict[Proto, frozenset[int]]:
    return {Proto.TCP: frozenset(tcp), Proto.UDP: frozenset(udp)}


def test_the_start_builds_the_sensor_with_the_ports_served_then() -> None:
    cfg = stealth()
    assert (
        Playbook(Core(cfg, started_at=T0))
        >> Started(OWN, [], served=ports({22}))
        << Setup([], T0, SetupReason.START, SensorState(spec_from_config(cfg), ports({22}), "a"))
        << ActionsStart([])
    )


def test_a_port_no_longer_served_is_trapped_again_only_after_linger() -> None:
    _, playbook = started(stealth())
    assert (
        playbook
        >> ServedPortsChanged(ports({22, 80}), mono=100.0)
        << ServePorts(ports({22, 80}))
        >> ServedPortsChanged(ports({22}), mono=101.0)  # 80 lingers
        >> CountersRead({}, mono=110.9)
        >> CountersRead({}, mono=111.0)
        << ServePorts(ports({22}))
        >> ServedPortsChanged(ports({22}), mono=112.0)  # no change, nothing to do
    )


def test_a_port_served_again_during_linger_is_never_trapped() -> None:
    _, playbook = started(stealth())
    assert (
        playbook
        >> ServedPortsChanged(ports({80}), mono=100.0)
        << ServePorts(ports({80}))
        >> ServedPortsChanged(ports(), mono=101.0)
        >> ServedPortsChanged(ports({80}), mono=105.0)
        >> CountersRead({}, mono=200.0)
    )


def test_block_sets_rotate_when_half_full_and_take_turns() -> None:
    core, playbook = started(stealth())
    assert (
        playbook
        >> CountersRead({"block_a": 0, "block_b": 0}, mono=10.0)
        >> CountersRead({"block_a": 1023, "block_b": 0}, mono=11.0)
        >> CountersRead({"block_a": 1024, "block_b": 0}, mono=12.0)
        << RotateBlocks("b")
        >> CountersRead({"block_a": 1024, "block_b": 0}, mono=12.25)  # refused: asked again
        << RotateBlocks("b")
        >> BlocksRotated("b", mono=12.3)
        >> CountersRead({"block_a": 1024, "block_b": 1023}, mono=13.0)
        >> CountersRead({"block_a": 1024, "block_b": 1024}, mono=14.0)
        << RotateBlocks("a")
    )
    assert core.kernel is not None and core.kernel.generation == "b"
    assert core.kernel.rotations == 1


def test_block_rotation_warns_at_most_once_a_minute() -> None:
    _, playbook = started(stealth())
    playbook.ignored = ()
    hint = ("many new sources hit traps (a forged flood?): the oldest first-packet blocks gave "
            "way; raise [kernel] block_size to keep them longer")  # fmt: skip

    def rotated(level: int, rotations: int) -> Log:
        fields = {"rotations": rotations, "dropped_blocks": 0, "hint": hint}
        return Log("block-sets-rotated", level, fields)

    assert (
        playbook
        >> BlocksRotated("b", mono=10.0)
        << rotated(logging.WARNING, 1)
        >> BlocksRotated("a", mono=20.0)
        << rotated(logging.DEBUG, 2)
        >> BlocksRotated("b", mono=70.0)
        << rotated(logging.WARNING, 3)
    )


def test_a_rebuild_carries_the_sensor_as_the_core_wants_it() -> None:
    cfg = stealth()
    _, playbook = started(cfg)
    assert (
        playbook
        >> ServedPortsChanged(ports({443}), mono=1.0)
        << ServePorts(ports({443}))
        >> BlocksRotated("b", mono=2.0)
        >> FirewallMissing()
        << Setup(
            [], T0, SetupReason.RECONCILE, SensorState(spec_from_config(cfg), ports({443}), "b")
        )
    )


# -- reload ----------------------------------------------------------------------------------


def test_a_reload_of_traps_and_allow_list_lifts_a_newly_allowed_ban() -> None:
    old = config()
    new = load_text('[traps]\ntcp = ["23", "2525"]\nudp = ["161"]\n'
                    f'[allow]\naddresses = ["{ATTACKER}"]\n', None)  # fmt: skip
    core, playbook = started(old)
    lifted = Unban(ip_network(ATTACKER), T0, f"protected: {ATTACKER} is on the allow list")
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << sent(ban(ATTACKER, T0, H))
        >> ReloadRequested(new)
        << PrepareReload(new, ("traps", "allow"))
        >> HitSeen(hit(OTHER))  # hits go on under the old settings while it prepares
        << FlushSoon()
        >> ReloadPrepared()  # no kernel rules in connect mode: committed at once
        << UpdateTraps(new.traps, b"")
        << Reloaded(("traps", "allow"))
        >> TurnEnded()
        << Apply([ban(OTHER, T0, H), lifted], T0)
        << RecordChanges([ban(OTHER, T0, H), lifted])
        << LogChanges([ban(OTHER, T0, H), lifted])
        << ActionsAfter([ban(OTHER, T0, H), lifted])
    )
    assert core.config is new


def test_a_reload_that_changes_nothing_says_so() -> None:
    cfg = config()
    _, playbook = started(cfg)
    assert playbook >> ReloadRequested(config()) << Reloaded(())


def test_a_reload_needing_a_restart_or_invalid_is_refused_with_every_problem() -> None:
    cfg = config()
    core, playbook = started(cfg)
    other_table = config('[firewall]\ntable = "other"\n')
    hint = "the running configuration stays; fix the file and reload again"
    problems = ("a.toml:3: [ban] x: unknown key", "a.toml:4: [traps] bad")
    message = ("not reloaded, these changes need a restart (systemctl restart porttrap): "
               "[firewall] table: porttrap -> other (the bans live in the old one)")  # fmt: skip
    playbook.ignored = ()
    assert (
        playbook
        >> ReloadRequested(other_table)
        << Log("reload-refused", logging.ERROR, {"error": message, "hint": hint})
        << Refuse(message)
        >> ReloadInvalid(problems)
        << Log("config-error", logging.ERROR, {"problem": "a.toml:3: [ban] x: unknown key"})
        << Log("config-error", logging.ERROR, {"problem": "a.toml:4: [traps] bad"})
        << Log("reload-refused", logging.ERROR, {"error": "invalid configuration", "hint": hint})
        << Refuse("invalid configuration", problems)
    )  # fmt: skip
    assert core.config is cfg


def test_a_reload_of_the_sensor_rules_rebuilds_the_table_and_commits_only_then() -> None:
    old = stealth()
    new = load_text('[traps]\nmode = "stealth"\ntcp = ["23", "24"]\nudp = ["161"]\n'
                    '[kernel]\nblock_size = 2048\nblock_time = "1m"\n', None)  # fmt: skip
    core, playbook = started(old)
    syn = hit(kind="syn")
    banned = ban(ATTACKER, T0, UNVERIFIED_MAX, evidence=Evidence.UNVERIFIED)
    assert (
        playbook
        >> HitSeen(syn)
        >> HitSeen(syn)
        << FlushSoon()
        >> ReloadRequested(new)
        << PrepareReload(new, ("traps",))
        >> ReloadPrepared()  # what is queued goes out first, into the old table
        << Apply([banned], T0)
        << RecordChanges([banned])
        << LogChanges([banned])
        << ActionsAfter([banned])
        << Setup([banned], T0, SetupReason.RELOAD, SensorState(spec_from_config(new), ports(), "a"))
        >> ReloadFailed("nftables refused it")  # the old table stays, and so do the settings
        << Refuse("nftables refused it")
    )  # fmt: skip
    assert core.config is old
    assert core.kernel is not None and core.kernel.spec == spec_from_config(old)
    assert (
        playbook
        >> ReloadRequested(new)
        << PrepareReload(new, ("traps",))
        >> ReloadPrepared()
        << Setup([banned], T0, SetupReason.RELOAD, SensorState(spec_from_config(new), ports(), "a"))
        >> ReloadCommitted()
        << UpdateTraps((), b"")  # no socket traps in stealth mode: none kept, none bound
        << Reloaded(("traps",))
    )  # fmt: skip
    assert core.config is new and core.kernel.spec == spec_from_config(new)


def test_a_reload_of_respond_rebuilds_with_the_bans_the_new_settings_keep() -> None:
    old = config(ON_BAN)  # the same actions: only [ban] changes
    new = config('[ban]\nrespond = { tcp = "command" }\n' + ON_BAN)
    _, playbook = started(old)
    admin = ban(OTHER, T0, H, reason="manual")
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << sent(ban(ATTACKER, T0, H))
        >> AdminBan((ip_network(OTHER),), duration=H)
        << sent(admin)
        << Answer({"count": 1, "bans": [ban_json(admin)]}, after_store=True)
        >> ReloadRequested(new)
        << PrepareReload(new, ("ban",))
        >> ReloadPrepared()
        << Setup([admin], T0, SetupReason.RELOAD, watch(new))  # the trap ban leaves the kernel
        >> ReloadCommitted()
        << Reloaded(("ban",))
    )


def test_a_reload_of_actions_replaces_them_with_the_active_bans() -> None:
    old = config()
    new = config('[[actions.webhook]]\nurl = "http://192.0.2.9/hook"\n')
    _, playbook = started(old)
    first = ban(ATTACKER, T0, H)
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> TurnEnded()
        << sent(first)
        >> ReloadRequested(new)
        << PrepareReload(new, ("actions",))
        >> ReloadPrepared()
        << ReplaceActions(new)
        << Reloaded(("actions",))
        >> AdminBan((ip_network(OTHER),), duration=H)  # while the old actions finish ...
        << sent(ban(OTHER, T0, H, reason="manual"))
        << Answer({"count": 1, "bans": [ban_json(ban(OTHER, T0, H, reason="manual"))]},
                  after_store=True)
        >> ActionsReplaced()  # ... the new ones start with every ban active by then
        << ActionsStart([first, ban(OTHER, T0, H, reason="manual")])
    )  # fmt: skip


@pytest.mark.parametrize("respond", ["ban", "log"])
def test_respond_log_reports_and_never_bans(respond: str) -> None:
    core, playbook = started(config(f'[ban]\nrespond = "{respond}"\n'))
    playbook >> HitSeen(hit())
    if respond == "ban":
        playbook << FlushSoon()
    assert playbook
    outcome = Outcome.BANNED if respond == "ban" else Outcome.LOGGED
    assert core.stats.by_outcome() == {outcome.value: 1}


def test_a_refused_change_of_served_ports_is_sent_again_at_the_next_reading() -> None:
    _, playbook = started(stealth())
    assert (
        playbook
        >> ServedPortsChanged(ports({22}), mono=1.0)
        << ServePorts(ports({22}))
        >> ServeFailed()
        >> CountersRead(None, mono=1.25)  # even a failed read goes on with the ports
        << ServePorts(ports({22}))
        >> CountersRead({}, mono=1.5)  # taken this time: nothing more
    )


def test_hits_are_stored_again_once_the_disk_caught_up() -> None:
    _, playbook = started(config())
    assert (
        playbook
        >> HitSeen(hit(HOST))
        >> Tick(store_backlog=MAX_WRITE_BACKLOG + 1)  # given way
        >> HitSeen(hit("127.0.0.1"))
        >> Tick(store_backlog=MAX_WRITE_BACKLOG)
        << RecordHits([(hit("127.0.0.1"), Outcome.OWN_ADDRESS)])
    )


def test_after_stopping_a_refusal_is_logged_and_not_retried() -> None:
    _, playbook = started(config())
    first = ban(ATTACKER, T0, H)
    assert (
        playbook
        >> HitSeen(hit())
        << FlushSoon()
        >> Stopping()
        << sent(first)
        << RecordHits([(hit(), Outcome.BANNED)])
        >> FirewallFailed("refused while stopping")  # no Schedule: the loop is ending
    )


# -- peers -----------------------------------------------------------------------------------


def test_a_gateway_is_protected_while_it_is_one_and_then_no_longer() -> None:
    core, playbook = started(stealth())
    gateway = "203.0.113.53"
    datagram = hit(gateway, kind="udp", port=161)
    assert (
        playbook
        >> GatewaysChanged(frozenset({ip_address(gateway)}))
        << SetGateways(frozenset({ip_address(gateway)}))
        >> HitSeen(datagram)
        >> HitSeen(datagram)
        >> GatewaysChanged(frozenset({ip_address(gateway)}))  # the same: nothing to do
        >> GatewaysChanged(frozenset())  # its route went away
        << SetGateways(frozenset())
        >> HitSeen(datagram)
        >> HitSeen(datagram)
        << FlushSoon()
        >> Tick()
        << RecordHits([(datagram, o) for o in map(Outcome, ("peer", "peer", "counted", "banned"))])
    )
    assert core.policy.banned(ip_address(gateway), T0) is not None


def test_gateways_and_sessions_survive_a_reload() -> None:
    core, playbook = started(config())
    gateway, session = ip_address("203.0.113.1"), ip_address("198.51.100.22")
    assert (
        playbook
        >> GatewaysChanged(frozenset({gateway}))
        << SetGateways(frozenset({gateway}))
        >> SessionsChanged(frozenset({session}))
    )
    new = config(f'[allow]\naddresses = ["{OTHER}"]\n')
    assert playbook >> ReloadRequested(new) << PrepareReload(new, ("allow",))
    assert playbook >> ReloadPrepared() << Reloaded(("allow",))
    protection = core.policy.protection  # the new protection took them over
    assert protection.gateways == frozenset({gateway})
    assert protection.sessions == frozenset({session})
    assert protection.peer(gateway) and not protection.peer(session)


# -- issue 13: a store that cannot write, bans kept from the kernel, a damaged ruleset,
# -- jumps of the wall clock


def test_a_failing_store_is_logged_shown_in_status_and_cleared_when_it_writes_again() -> None:
    core, _ = started(config())
    playbook = Playbook(core, logs=True)
    assert (
        playbook
        >> StoreFailed("database or disk is full")
        << Log(
            "store-failing",
            logging.ERROR,
            {"error": "database or disk is full", "hint": _hint()},
        )
    )
    snap = core.snapshot(T0, _io())
    assert status(snap, 1)["store"]["error"] == "database or disk is full"
    assert status(snap, 1)["store"]["ok"] is False
    text = output.status_text(status(snap, 1))
    assert "STORE FAILING since 2027-01-15T08:00:00Z: database or disk is full" in text
    assert (
        playbook
        >> later(30)
        >> StoreRecovered(retries=5)
        << Log("store-recovered", logging.INFO, {"retries": 5, "failed_for": 30.0})
    )
    assert status(core.snapshot(T0 + 30, _io()), 1)["store"]["ok"] is True


def test_bans_in_the_kernel_that_the_store_lacks_are_kept_with_their_time_left() -> None:
    """The disk was full before the stop: 203.0.113.9 is in the kernel only, and stays."""
    cfg = config()
    core = Core(cfg, started_at=T0)
    stored = ban(ATTACKER, T0 - 60, H)
    lost = ip_network("203.0.113.9/32")
    kept = Ban(lost, T0, T0 + 1800, 1, KEPT_FROM_KERNEL)
    forever = Ban(ip_network("203.0.113.10/32"), T0, None, 1, KEPT_FROM_KERNEL)
    kernel = ((stored.target, H - 60), (lost, 1800.0), (forever.target, None))
    assert (
        Playbook(core)
        >> Started(OWN, [StoredBan(stored)], kernel=kernel)
        << RecordChanges([kept, forever])
        << LogChanges([kept, forever])
        << Setup([stored, kept, forever], T0, SetupReason.START, watch(cfg))
        << ActionsStart([stored, kept, forever])
    )


def test_a_kernel_ban_on_an_allowed_address_is_not_kept() -> None:
    cfg = config('[allow]\naddresses = ["203.0.113.0/24"]\n')
    core = Core(cfg, started_at=T0)
    kernel = ((ip_network("203.0.113.9/32"), 600.0),)
    assert (
        Playbook(core)
        >> Started(OWN, [], kernel=kernel)
        << Setup([], T0, SetupReason.START, watch(cfg))
        << ActionsStart([])
    )


def test_a_damaged_ruleset_is_rebuilt_with_every_ban_and_its_exact_time_left() -> None:
    cfg = config()
    core, playbook = started(cfg)
    first = ban(ATTACKER, T0, H)
    core.handle(HitSeen(hit()), T0)
    core.handle(TurnEnded(), T0)
    playbook.now = T0 + 100
    assert (
        playbook
        >> FirewallChecked(damaged="the prerouting chain is gone")
        << Setup([first], T0 + 100, SetupReason.RECONCILE, watch(cfg))
    )


def test_a_ban_missing_from_the_kernel_rebuilds_the_table_one_still_held_does_not() -> None:
    cfg = config()
    core, playbook = started(cfg)
    first = ban(ATTACKER, T0, H)
    core.handle(HitSeen(hit()), T0)
    core.handle(TurnEnded(), T0)
    playbook.now = T0 + 10
    assert playbook >> FirewallChecked(held=frozenset({first.target}))  # whole: nothing
    assert (
        playbook
        >> FirewallChecked(held=frozenset())  # `nft flush set`
        << Setup([first], T0 + 10, SetupReason.RECONCILE, watch(cfg))
    )


def test_a_ban_about_to_end_may_be_gone_from_the_kernel_already() -> None:
    cfg = config('[ban]\ntime = "60s"\n')
    core, playbook = started(cfg)
    core.handle(HitSeen(hit()), T0)
    core.handle(TurnEnded(), T0)
    playbook.now = T0 + 59
    assert playbook >> FirewallChecked(held=frozenset())


def test_the_check_looks_for_each_of_few_bans_and_counts_many_less_often() -> None:
    core, _ = started(config())

    def checks(rounds: int) -> list[CheckFirewall]:
        found: list[CheckFirewall] = []
        for _ in range(rounds * CHECK_EVERY):
            found += [c for c in core.handle(Tick(), T0) if isinstance(c, CheckFirewall)]
        return found

    assert checks(1) == [CheckFirewall(entries=True)]
    targets = tuple(ip_network(f"10.{n >> 8 & 255}.{n & 255}.{n >> 16}/32") for n in range(45_000))
    core.handle(AdminBan(targets, duration=H), T0)
    core.handle(TurnEnded(), T0)
    found = checks(6)  # counted once in 3 checks: 1 + 45,000 // 20,000
    assert sorted(found, key=repr) == [CheckFirewall()] * 4 + [CheckFirewall(count=True)] * 2


def test_a_count_below_the_bans_held_rebuilds_the_table() -> None:
    cfg = config()
    core, playbook = started(cfg)
    first = ban(ATTACKER, T0, H)
    core.handle(HitSeen(hit()), T0)
    core.handle(TurnEnded(), T0)
    playbook.now = T0 + 10
    assert playbook >> FirewallChecked(count=1) >> FirewallChecked(count=2)  # 2: a stray one
    assert (
        playbook
        >> FirewallChecked(count=0)
        << Setup([first], T0 + 10, SetupReason.RECONCILE, watch(cfg))
    )


def test_the_wall_clock_stepping_back_keeps_a_ban_to_its_real_end() -> None:
    """A one-hour ban; the wall clock steps back an hour after 30 minutes: the ban ends 30
    minutes later by the monotonic clock (as the kernel lifts it), not 90."""
    cfg = config('[ban]\ntime = "1h"\n')
    core, _ = started(cfg)
    core.handle(HitSeen(hit()), T0)
    core.handle(TurnEnded(), T0)
    mono = 1000.0
    core.handle(Tick(mono=mono), T0 + 1800)
    commands = core.handle(Tick(mono=mono + 0.5), T0 + 1800.5 - H)
    assert [c.name for c in commands if isinstance(c, Log)] == ["clock-jumped"]
    assert core.policy.banned(hit().source, T0 + 1799 - H + 1800) is not None
    expired = core.handle(Tick(mono=mono + 1800.5), T0 + 3600.5 - H)
    assert any(isinstance(c, Log) and c.name == "ban-expired" for c in expired)
    assert core.policy.banned(hit().source, T0 + 3601 - H) is None


def test_the_wall_clock_jumping_forward_keeps_bans_and_hit_history() -> None:
    """100 days forward: the ban lasts its hour; the next pruning goes by the time that
    really went by, not the jump."""
    cfg = config('[ban]\ntime = "1h"\n')
    core, _ = started(cfg)
    core.handle(HitSeen(hit()), T0)
    core.handle(TurnEnded(), T0)
    jump = 100 * 86_400.0
    mono, now = 1000.0, T0
    core.handle(Tick(mono=mono), now)
    pruned: list[PruneHits] = []
    pruned_at = 0.0
    logs: list[str] = []
    for n in range(1, MAINTAIN_EVERY + 1):
        now = T0 + n * 0.5 + (jump if n >= 2 else 0)
        out = core.handle(Tick(mono=mono + n * 0.5), now)
        if found := [c for c in out if isinstance(c, PruneHits)]:
            pruned, pruned_at = found, now
        logs += [c.name for c in out if isinstance(c, Log)]
        assert not any(isinstance(c, Maintain) and c.now < T0 for c in out)
    assert "clock-jumped" in logs and "ban-expired" not in logs
    assert core.policy.banned(hit().source, now) is not None
    retention = cfg.store.hit_retention
    assert pruned == [PruneHits(pruned_at - jump - retention, cfg.store.hit_rows)]


def test_a_clock_that_does_not_jump_is_left_alone() -> None:
    core, _ = started(config())
    for n in range(10):
        out = core.handle(Tick(mono=1000.0 + n * 0.5), T0 + n * 0.5 + n * 0.01)
        assert not any(isinstance(c, Log) and c.name == "clock-jumped" for c in out)
    assert core.clock_skew == 0.0


def _hint() -> str:
    return STORE_HINT


def _io() -> IoFigures:
    return IoFigures(backend="memory", traps=TrapReport(), actions={})
