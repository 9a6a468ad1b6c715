"""The firewall seam: one small interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from porttrap.model import Ban, Change, IPNetwork


@dataclass(frozen=True, slots=True)
class KernelEntry:
    """A ban as the kernel holds it. `remaining` None: no timeout (permanent)."""

    target: IPNetwork
    remaining: float | None

    @property
    def permanent(self) -> bool:
        return self.remaining is None


class FirewallBackend(Protocol):
    """Applies bans in the kernel. Implementations touch only porttrap's own table/sets.

    All methods are synchronous and quick (one kernel transaction each); the daemon calls
    them from its event loop. Errors are `FirewallError` with what was attempted.
    """

    name: str

    def setup(self, bans: Sequence[Ban], now: float) -> None:
        """Atomically (re)create porttrap's ruleset holding exactly `bans` (the active ones,
        with their remaining time). Anything else in porttrap's sets is removed; nothing
        outside porttrap's own table is touched."""
        ...

    def apply(self, changes: Sequence[Change], now: float) -> None:
        """Apply bans and unbans in one transaction. A ban of a target already in the kernel
        replaces its timeout; an unban of a target not in the kernel is not an error."""
        ...

    def entries(self) -> list[KernelEntry]:
        """Every ban the kernel holds now (empty when porttrap's table does not exist)."""
        ...

    def present(self) -> bool:
        """Whether porttrap's ruleset is in the kernel. Cheap: the daemon asks every few
        seconds, because a firewall reload elsewhere (`nft flush ruleset`) can remove it."""
        ...

    def teardown(self) -> None:
        """Remove porttrap's table and everything in it. Not an error when it is absent."""
        ...
