"""The core's part of prefix bans: a hit that completes a prefix sends the prefix ban and the
ends of the bans inside it out in one batch, with its log lines; `unban ADDRESS` inside a
prefix says which holds it; a prefix ban published by one host is applied by another."""

from __future__ import annotations

import logging
from ipaddress import ip_address, ip_network

from porttrap.config.loader import load_text
from porttrap.config.schema import Config
from porttrap.core.commands import Answer, Apply, Command, Log, Publish
from porttrap.core.core import Core
from porttrap.core.events import (
    AdminUnban,
    ClientsChanged,
    Event,
    FleetReceived,
    HitSeen,
    Started,
    TurnEnded,
)
from porttrap.model import Ban, FleetEntry, FleetKind, Hit, Proto, Unban, fleet_reason
from porttrap.testing.playbook import T0

HOST = "192.0.2.1"
NET = "198.51.100"
PREFIX = '[traps]\ntcp = ["23"]\n[ban]\ntime = "1h"\n[ban.prefix]\nspread = 3\n'
FLEET = '[fleet]\nurl = "postgresql://db.example.net/porttrap"\nname = "web-1"\n'


def config(text: str = "") -> Config:
    return load_text(PREFIX + text, None)


def started(cfg: Config) -> Core:
    core = Core(cfg, started_at=T0)
    core.handle(Started(frozenset({ip_address(HOST)}), []), T0)
    return core


def feed(core: Core, *events: Event, now: float = T0) -> list[Command]:
    out: list[Command] = []
    for event in (*events, TurnEnded()):
        out += core.handle(event, now)
    return out


def hit(source: str) -> HitSeen:
    return HitSeen(Hit(T0, ip_address(source), 40000, ip_address(HOST), 23, Proto.TCP))


def test_the_hit_that_completes_a_prefix_applies_it_and_ends_the_bans_inside() -> None:
    core = started(config(FLEET))
    feed(core, hit(f"{NET}.1"), hit(f"{NET}.2"))
    out = feed(core, hit(f"{NET}.3"))
    applied = [c for c in out if isinstance(c, Apply)]
    assert len(applied) == 1
    targets = [(type(c).__name__, str(c.target)) for c in applied[0].changes]
    assert targets == [
        ("Ban", f"{NET}.3/32"),
        ("Unban", f"{NET}.1/32"),
        ("Unban", f"{NET}.2/32"),
        ("Unban", f"{NET}.3/32"),
        ("Ban", f"{NET}.0/24"),
    ]
    logs = [c for c in out if isinstance(c, Log) and c.name.startswith("prefix")]
    assert [(log.name, log.level) for log in logs] == [("prefix-ban", logging.INFO)]
    assert logs[0].fields["prefix"] == f"{NET}.0/24"
    published = [c for c in out if isinstance(c, Publish)]
    assert any(
        isinstance(ch, Ban) and ch.target == ip_network(f"{NET}.0/24")
        for p in published
        for ch in p.changes
    )


def test_unban_of_an_address_inside_a_prefix_says_which_prefix_and_what_to_do() -> None:
    core = started(config())
    feed(core, *(hit(f"{NET}.{n}") for n in (1, 2, 3)))
    out = feed(core, AdminUnban((ip_network(f"{NET}.2"),)))
    answer = next(c for c in out if isinstance(c, Answer)).payload
    assert answer["were_banned"] == []
    assert answer["held_by"] == {f"{NET}.2": f"{NET}.0/24"}  # the prefix, to unban
    prefix_bans = answer["prefix_bans"]
    assert isinstance(prefix_bans, dict) and list(prefix_bans) == [f"{NET}.0/24"]
    assert prefix_bans[f"{NET}.0/24"].startswith(f"prefix {NET}.0/24")
    assert core.policy.banned(ip_address(f"{NET}.2"), T0) is not None


def test_unban_of_the_prefix_lifts_it() -> None:
    core = started(config())
    feed(core, *(hit(f"{NET}.{n}") for n in (1, 2, 3)))
    out = feed(core, AdminUnban((ip_network(f"{NET}.0/24"),)))
    answer = next(c for c in out if isinstance(c, Answer)).payload
    assert answer["were_banned"] == [f"{NET}.0/24"]
    assert core.policy.active(T0) == []


def test_unban_inside_a_carved_prefix_names_the_prefix_and_unban_of_it_lifts_every_piece() -> None:
    """A carved prefix ban is several CIDRs: an address inside one of them is held by the
    prefix (what the admin unbans), and unbanning the prefix lifts every piece."""
    core = started(config(f'[allow]\naddresses = ["{NET}.200"]\n'))
    feed(core, *(hit(f"{NET}.{n}") for n in (1, 2, 3)))
    pieces = {b.target for b in core.policy.active(T0)}
    assert len(pieces) == 8 and ip_network(f"{NET}.0/24") not in pieces
    out = feed(core, AdminUnban((ip_network(f"{NET}.130"),)))
    answer = next(c for c in out if isinstance(c, Answer)).payload
    assert answer["held_by"] == {f"{NET}.130": f"{NET}.0/24"}
    out = feed(core, AdminUnban((ip_network(f"{NET}.0/24"),)))
    answer = next(c for c in out if isinstance(c, Answer)).payload
    assert answer["count"] == 9 and answer["held_by"] == {}  # the prefix and its 8 pieces
    assert core.policy.active(T0) == []


def test_a_prefix_ban_from_another_host_is_applied_here() -> None:
    """The fleet's rows carry network targets: a prefix ban decided by web-2 reaches this
    host's kernel through the path every fleet ban takes."""
    core = started(load_text('[traps]\ntcp = ["23"]\n' + FLEET, None))
    reason = f"prefix {NET}.0/24 from {NET}.1, {NET}.2, {NET}.3"
    decided = Ban(ip_network(f"{NET}.0/24"), T0 - 5, T0 + 3600, 1, reason)
    row = FleetEntry(1, "web-2", FleetKind.BAN, decided.target, decided)
    out = feed(core, FleetReceived((row,)))
    (apply,) = [c for c in out if isinstance(c, Apply)]
    (held,) = apply.changes
    assert isinstance(held, Ban) and held.target == ip_network(f"{NET}.0/24")
    assert held.reason == fleet_reason(reason, "web-2")
    assert core.policy.banned(ip_address(f"{NET}.200"), T0) is not None
    assert not any(isinstance(c, Unban) for c in apply.changes)


def test_live_clients_reach_the_protection_and_a_change_is_logged() -> None:
    core = started(config())
    peers = frozenset({ip_address(f"{NET}.70")})
    assert feed(core, ClientsChanged(peers)) == [Log("live-clients", logging.DEBUG, {"count": 1})]
    assert core.policy.protection.clients == peers
    assert feed(core, ClientsChanged(peers)) == []  # the same set: nothing to say
