"""What the report shows, from the figures a store aggregates (`Store.report_figures`): the
totals, and for each of the busiest sources the bans that touched the period and whether it is
banned now, its own bans and those of the networks that hold it.

Pure apart from the one call to the store: the period, `now` and the host name are parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Literal

from porttrap.model import IPAddress, IPNetwork
from porttrap.report.figures import (
    Bucket,
    KindCount,
    Period,
    PortCount,
    ReportFigures,
    SourceFigures,
)
from porttrap.store.base import Store, StoredBan

BANS_PER_SOURCE = 12  # the newest this many of a source's bans are listed; older ones counted


@dataclass(frozen=True, slots=True)
class Totals:
    hits: int
    sources: int  # distinct addresses that hit a trap
    ports: int  # distinct protocol/port pairs hit
    bans: int  # bans made in the period
    permanent_bans: int  # of which for good
    banned_targets: int  # distinct addresses and networks banned
    active_now: int  # bans in force at generation time (whenever they were made)
    permanent_now: int


@dataclass(frozen=True, slots=True)
class BanState:
    """An address at generation time: banned for good, banned until `until`, or free."""

    state: Literal["permanent", "banned", "free"]
    until: float | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """One of the addresses that hit the traps most, with the bans that touched the period
    (its own, and those of networks holding it), oldest first."""

    address: str
    hits: int
    ports: int
    first_seen: float
    last_seen: float
    bans: tuple[StoredBan, ...]
    earlier_bans: int  # bans in the period older than those in `bans` (not listed)
    now: BanState


@dataclass(frozen=True, slots=True)
class FleetBan:
    """A ban from the fleet's shared log, with the host that made it."""

    host: str
    stored: StoredBan


@dataclass(frozen=True, slots=True)
class Fleet:
    """What `porttrap report --fleet` adds: the fleet's hosts, and the newest bans made in the
    period (any host's). The fleet's log holds no hits: each host keeps its own."""

    hosts: tuple[str, ...]
    bans: tuple[FleetBan, ...]  # the newest, newest first
    more_bans: int  # bans made in the period and not listed


@dataclass(frozen=True, slots=True)
class Report:
    host: str
    generated_at: float
    period: Period
    totals: Totals
    timeline: tuple[Bucket, ...]
    ports: tuple[PortCount, ...]
    kinds: tuple[KindCount, ...]
    sources: tuple[Source, ...]
    retention: float | None = None  # hits older than this are pruned (config hit_retention)
    fleet: Fleet | None = None  # the report of a whole fleet (`report --fleet`)


def collect(
    store: Store,
    period: Period,
    now: float,
    host: str,
    *,
    top: int = 20,
    retention: float | None = None,
) -> Report:
    """Everything the report shows for `period`, the ban state as of `now`; the `top` most
    hit ports and the `top` busiest sources."""
    counts = store.counts(now)
    found = store.report_figures(period, top)
    networks = _by_target(found.network_bans)
    sources = tuple(_source(each, networks, period=period, now=now) for each in found.sources)
    totals = _totals(found, *counts)
    timeline, ports, kinds = found.timeline, found.ports, found.kinds
    return Report(host, now, period, totals, timeline, ports, kinds, sources, retention)


def fleet(hosts: Sequence[str], made: Sequence[FleetBan], top: int) -> Fleet:
    """The fleet's part of the report: `made` (the period's bans, oldest first) shown newest
    first, up to `top`."""
    newest = tuple(reversed(made[-top:])) if top > 0 else ()
    return Fleet(tuple(hosts), newest, len(made) - len(newest))


def fleet_title(hosts: Sequence[str]) -> str:
    """The report's host line for a fleet: 'the fleet (3 hosts)'."""
    return f"the fleet ({len(hosts)} host{'' if len(hosts) == 1 else 's'})"


def _totals(found: ReportFigures, active: int, permanent: int) -> Totals:
    return Totals(
        hits=found.hits,
        sources=found.source_count,
        ports=found.port_count,
        bans=found.bans,
        permanent_bans=found.permanent_bans,
        banned_targets=found.banned_targets,
        active_now=active,
        permanent_now=permanent,
    )


def _source(
    found: SourceFigures,
    networks: dict[IPNetwork, list[StoredBan]],
    *,
    period: Period,
    now: float,
) -> Source:
    """A source with the bans that touched the period: its own, and those of the networks
    (of `networks`, each with its bans) that hold it."""
    own = list(found.bans)
    covering = [bans for network, bans in networks.items() if _holds(network, found.address)]
    touching = sorted(
        (b for b in [*own, *(b for bans in covering for b in bans)] if _touches(b, period)),
        key=lambda b: b.ban.banned_at,
    )
    shown = touching[-BANS_PER_SOURCE:]
    return Source(
        address=found.address,
        hits=found.hits,
        ports=found.ports,
        first_seen=found.first_seen,
        last_seen=found.last_seen,
        bans=tuple(shown),
        earlier_bans=len(touching) - len(shown),
        now=ban_state([own, *covering], now),
    )


def ban_state(histories: Sequence[Sequence[StoredBan]], now: float) -> BanState:
    """Whether an address is banned at `now`, given the ban history (oldest first) of each
    target that covers it. As in the store, only a target's newest ban not lifted counts: a
    newer ban replaces an older one, even a shorter one."""
    until: float | None = None
    for history in histories:
        current = [b for b in history if b.lifted_at is None and b.ban.banned_at <= now]
        if not current or not current[-1].ban.active(now):
            continue
        expires = current[-1].ban.expires_at
        if expires is None:
            return BanState("permanent")
        until = expires if until is None else max(until, expires)
    return BanState("free") if until is None else BanState("banned", until)


def _touches(stored: StoredBan, period: Period) -> bool:
    """Whether a ban was in force at some time within the period."""
    ends = [t for t in (stored.ban.expires_at, stored.lifted_at) if t is not None]
    return stored.ban.banned_at < period.end and (not ends or min(ends) > period.start)


def _by_target(bans: Sequence[StoredBan]) -> dict[IPNetwork, list[StoredBan]]:
    grouped: dict[IPNetwork, list[StoredBan]] = {}
    for stored in bans:
        grouped.setdefault(stored.ban.target, []).append(stored)
    return grouped


def _holds(network: IPNetwork, address: object) -> bool:
    try:
        parsed: IPAddress = ip_address(str(address))
    except ValueError:
        return False
    return parsed.version == network.version and parsed in network
