"""Choosing the firewall backend named in the configuration."""

from __future__ import annotations

from porttrap.clock import Clock
from porttrap.errors import FirewallError
from porttrap.firewall.base import FirewallBackend
from porttrap.firewall.dryrun import DryRunBackend
from porttrap.firewall.kernel import is_supported
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import table_exists
from porttrap.firewall.sensor import NftSensor

BACKENDS = ("nftables", "dry-run")


def make_backend(
    name: str, table: str, clock: Clock, sensor: NftSensor | None = None
) -> FirewallBackend:
    """The backend called `name`, with the kernel sensor of stealth and advanced modes when
    given; FirewallError says why it cannot run here and what to do."""
    if sensor is not None and name != "nftables":
        raise FirewallError(
            f'stealth and advanced trap modes need backend = "nftables", not {name!r}: the '
            'kernel sensor is nftables rules (set [traps] mode = "connect" to use sockets)'
        )
    if name == "nftables":
        supported, reason = is_supported()
        if not supported:
            raise FirewallError(
                f"firewall backend 'nftables' cannot run: {reason} "
                '(or set backend = "dry-run" in [firewall] to only log what would be banned)'
            )
        return NftablesBackend(table, sensor=sensor, exists=table_exists)
    if name == "dry-run":
        return DryRunBackend(clock)
    raise FirewallError(f"unknown firewall backend {name!r}: choose one of {', '.join(BACKENDS)}")
