"""The nftables backend: bans as elements of sets in porttrap's own `inet` table.

Every method is one libnftables transaction (see `porttrap.firewall.ruleset` for the
commands and for why the drop happens in prerouting at priority -350). Nothing outside
porttrap's table is read or changed. A temporary ban is a set element with a kernel timeout,
a permanent one an element without.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from porttrap import log
from porttrap.errors import FirewallError
from porttrap.firewall.base import KernelEntry
from porttrap.firewall.kernel import Nft
from porttrap.firewall.objects import NftObjects, made_here
from porttrap.firewall.plan import final_states, strongest
from porttrap.firewall.ruleset import Ruleset, parse_entries
from porttrap.firewall.sensor import NftSensor
from porttrap.model import Ban, Change, IPNetwork, show

_FAILED_SHOWN = 10  # targets named in the error raised after a partial failure
# Targets per apply transaction: libnftables and the kernel slow down on huge transactions
# (100,000 new bans: 2.5 s in one, 1.8 s in chunks of 10,000; bench/nftables_bulk.py).
CHUNK = 10_000


class NftablesBackend:
    """FirewallBackend on nftables: writes through `nft` (libnftables), reads whether the table
    exists through `objects` (netlink). Both default to ones made now, in the calling thread's
    network namespace; give both (made in one namespace) or neither."""

    name = "nftables"

    def __init__(
        self,
        table: str = "porttrap",
        nft: Nft | None = None,
        sensor: NftSensor | None = None,
        objects: NftObjects | None = None,
    ) -> None:
        self._nft, self._objects = made_here(nft, objects)
        self._rules = Ruleset(table)
        self.sensor = sensor

    def setup(self, bans: Sequence[Ban], now: float) -> None:
        """Replace porttrap's table in one transaction: stray elements go, missing ones come,
        and the kernel sensor (stealth and advanced modes) comes with it, as it was."""
        sensor = self.sensor.commands() if self.sensor is not None else []
        self._run(self._rules.replace(strongest(bans, now), now) + sensor)

    def apply(self, changes: Sequence[Change], now: float) -> None:
        """The changes in one transaction per `CHUNK` targets; if the kernel refuses one, each
        of its targets on its own, so that one bad element does not hold back the others. A
        ban already over at `now` lifts the target, as the kernel would have by then."""
        states = list(final_states(changes, now).items())
        failed: list[IPNetwork] = []
        for start in range(0, len(states), CHUNK):
            chunk = dict(states[start : start + CHUNK])
            try:
                self._run(self._rules.update(chunk, now))
            except FirewallError as err:
                failed += self._apply_each(chunk, now, err)
        if failed:
            raise FirewallError(_partial_failure(failed, len(states)))

    def entries(self) -> list[KernelEntry]:
        if not self.present():
            return []
        return parse_entries(self._nft.list_json(self._rules.table_spec()))

    def teardown(self) -> None:
        self._run(self._rules.remove())

    def _run(self, commands: list[str]) -> None:
        try:
            self._nft.run(commands)
        except FirewallError as err:
            if "syntax error" not in str(err):
                raise
            raise FirewallError(
                f"{err} (nft's syntax may not take {self._rules.table!r} as a table name, if it "
                'is one of its keywords: set another [firewall] table, e.g. "porttrap")'
            ) from err

    def present(self) -> bool:
        return self._objects.table_exists(self._rules.table)

    def _apply_each(
        self, states: Mapping[IPNetwork, Ban | None], now: float, err: FirewallError
    ) -> list[IPNetwork]:
        """The targets the kernel refused, trying each on its own."""
        if not self.present():
            raise FirewallError(
                f"{err} (porttrap's table inet {self._rules.table} is missing: it is created "
                "when the daemon starts, or by `setup`)"
            ) from err
        return [target for target, ban in states.items() if not self._apply_one(target, ban, now)]

    def _apply_one(self, target: IPNetwork, ban: Ban | None, now: float) -> bool:
        try:
            self._run(self._rules.update({target: ban}, now))
        except FirewallError as err:
            action = "unban" if ban is None else "ban"
            log.event(
                "firewall-error", logging.ERROR, action=action, address=show(target), error=str(err)
            )
            return False
        return True


def _partial_failure(failed: list[IPNetwork], total: int) -> str:
    names = ", ".join(show(target) for target in failed[:_FAILED_SHOWN])
    more = f" and {len(failed) - _FAILED_SHOWN} more" if len(failed) > _FAILED_SHOWN else ""
    return (
        f"nftables refused {len(failed)} of {total} changes, for {names}{more} "
        "(the others were applied; each failure is logged as event=firewall-error)"
    )
