"""Choosing the firewall backend named in the configuration."""

from __future__ import annotations

from porttrap.clock import Clock
from porttrap.errors import FirewallError
from porttrap.firewall.base import FirewallBackend
from porttrap.firewall.dryrun import DryRunBackend
from porttrap.firewall.kernel import is_supported
from porttrap.firewall.nftables import NftablesBackend

BACKENDS = ("nftables", "dry-run")


def make_backend(name: str, table: str, clock: Clock) -> FirewallBackend:
    """The backend called `name`; FirewallError says why it cannot run here and what to do."""
    if name == "nftables":
        supported, reason = is_supported()
        if not supported:
            raise FirewallError(
                f"firewall backend 'nftables' cannot run: {reason} "
                '(or set backend = "dry-run" in [firewall] to only log what would be banned)'
            )
        return NftablesBackend(table)
    if name == "dry-run":
        return DryRunBackend(clock)
    raise FirewallError(f"unknown firewall backend {name!r}: choose one of {', '.join(BACKENDS)}")
