"""Choosing the firewall backend named in the configuration, or the first one this host can run
(`backend = "auto"`), saying what was tried and why each was refused."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from porttrap import log
from porttrap.clock import Clock
from porttrap.errors import FirewallError
from porttrap.firewall import ipset
from porttrap.firewall.base import FirewallBackend
from porttrap.firewall.dryrun import DryRunBackend
from porttrap.firewall.ipset_rules import FAMILIES
from porttrap.firewall.kernel import is_supported
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.sensor import NftSensor

BACKENDS = ("nftables", "ipset", "auto", "dry-run")
AUTO_ORDER = ("nftables", "ipset")  # nftables first: one kernel transaction per batch, in-process

Check = Callable[[], tuple[bool, str]]


def checks() -> dict[str, Check]:
    """How to tell whether each kernel backend can run here (only reads, changes nothing)."""
    return {"nftables": is_supported, "ipset": ipset.is_supported}


def make_backend(
    name: str,
    table: str,
    clock: Clock,
    sensor: NftSensor | None = None,
    supported: Mapping[str, Check] | None = None,
) -> FirewallBackend:
    """The backend called `name`, with the kernel sensor of stealth and advanced modes when
    given; FirewallError says why it cannot run here and what to do. `supported` replaces the
    checks of `checks()` (tests)."""
    if name not in BACKENDS:
        raise FirewallError(
            f"unknown firewall backend {name!r}: choose one of {', '.join(BACKENDS)}"
        )
    found = supported if supported is not None else checks()
    if name == "auto":
        name = choose(found, sensor is not None)
    elif sensor is not None and name != "nftables":
        raise FirewallError(
            f'stealth and advanced trap modes need backend = "nftables", not {name!r}: the '
            'kernel sensor is nftables rules (set [traps] mode = "connect" to use sockets)'
        )
    elif name in AUTO_ORDER:
        _require(name, found[name])
    if name == "dry-run":
        return DryRunBackend(clock)
    if name == "ipset":
        return ipset.IpsetBackend(table, clock)
    return NftablesBackend(table, sensor=sensor)


def _require(name: str, check: Check) -> None:
    ok, reason = check()
    if not ok:
        raise FirewallError(
            f"firewall backend {name!r} cannot run: {reason} "
            '(or set backend = "dry-run" in [firewall] to only log what would be banned)'
        )


def choose(supported: Mapping[str, Check], sensor: bool) -> str:
    """The first backend of AUTO_ORDER this host can run (only nftables with the kernel
    sensor, which is nftables rules); logs the choice and the refusals before it. When none
    can run, FirewallError lists why each was refused."""
    order = ("nftables",) if sensor else AUTO_ORDER
    refused: list[str] = []
    for name in order:
        ok, reason = supported[name]()
        if ok:
            log.event(
                "backend-auto", backend=name, reason=reason, refused="; ".join(refused) or None
            )
            return name
        refused.append(f"{name}: {reason}")
    why = " (stealth and advanced trap modes need nftables)" if sensor else ""
    raise FirewallError(
        f'backend = "auto" found no firewall this host can run{why}: {"; ".join(refused)} '
        '(or set backend = "dry-run" in [firewall] to only log what would be banned)'
    )


def removed(backend: FirewallBackend, table: str) -> str:
    """What `teardown` of `backend` removed, as `porttrap flush` reports it."""
    if isinstance(backend, ipset.IpsetBackend):
        names = backend.names
        sets = ", ".join(names.set(family) for family in FAMILIES)
        return f"ipset sets {sets} and iptables/ip6tables chain raw {names.chain}"
    if isinstance(backend, DryRunBackend):
        return "nothing (dry-run)"
    return f"nftables table inet {table}"
