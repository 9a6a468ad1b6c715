"""The nftables backend: bans as elements of sets in porttrap's own `inet` table, and in the
same table the watch of every mode (recent clients and peers, the marks of connect-mode UDP
traps) and the kernel sensor of stealth and advanced modes (this backend is the one writer of
their rules).

Every method is one libnftables transaction (see `porttrap.firewall.ruleset` for the
commands and for why the drop happens in prerouting at priority -350). Nothing outside
porttrap's table is read or changed. A temporary ban is a set element with a kernel timeout,
a permanent one an element without. Whether the table exists and the sensor's counters are
read over netlink (`porttrap.firewall.objects`): one message each, whatever the sets hold.
The bans are read from the ban sets alone, never with the table's other sets.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence

from porttrap import log
from porttrap.clock import Clock, SystemClock
from porttrap.errors import FirewallError
from porttrap.firewall.base import Inspection, KernelEntry
from porttrap.firewall.hold_rules import CHAIN, HoldRules
from porttrap.firewall.kernel import JsonCommand, Nft
from porttrap.firewall.objects import NftObjects, made_here
from porttrap.firewall.plan import Written, final_states, strongest
from porttrap.firewall.ruleset import SETS, Ruleset, parse_entries
from porttrap.firewall.sensor_rules import SensorRules, held_ports
from porttrap.firewall.watch_rules import WatchRules
from porttrap.model import Ban, Change, IPAddress, IPNetwork, show
from porttrap.sensorspec import COUNTERS, Ports, SensorState, no_ports

_FAILED_SHOWN = 10  # targets named in the error raised after a partial failure
# Targets per apply transaction: libnftables and the kernel slow down on huge transactions
# (100,000 new bans: 2.5 s in one, 1.8 s in chunks of 10,000; bench/nftables_bulk.py).
CHUNK = 10_000
BAN_SETS = [ban_set.name for ban_set in SETS]


class NftablesBackend:
    """FirewallBackend and SensorBackend on nftables: writes through `nft` (libnftables), reads
    whether the table exists and the sensor's counters through `objects` (netlink). Both default
    to ones made now, in the calling thread's network namespace; give both (made in one
    namespace) or neither."""

    name = "nftables"

    def __init__(
        self,
        table: str = "porttrap",
        nft: Nft | None = None,
        objects: NftObjects | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._nft, self._objects = made_here(nft, objects)
        self._rules = Ruleset(table)
        self._sensor: SensorRules | None = None  # the sensor of the last setup
        self._served: Ports = no_ports()  # ... and the ports it leaves open now
        self._watch: WatchRules | None = None  # the watch of the last setup
        self._gateways: frozenset[IPAddress] = frozenset()  # ... and the gateways it holds
        self._shape: str | None = None  # the digest of the table as porttrap last wrote it
        # what the ban sets may hold: a ban on another is one add
        self._written = Written((clock or SystemClock()).monotonic)

    def setup(self, bans: Sequence[Ban], now: float, sensor: SensorState | None = None) -> None:
        """Replace porttrap's table in one transaction: stray elements go, missing ones come,
        and the watch and the kernel sensor come with it as `sensor` says (None: bans only).
        In connect mode `sensor.spec` watches no protocol: only the watch is made."""
        held = strongest(bans, now)
        commands = self._rules.replace(held, now)
        watch, rules = None, None
        if sensor is not None:
            watch = WatchRules(self._rules.table, sensor.spec)
            commands += watch.create(sensor.gateways)
            rules = SensorRules(self._rules.table, sensor.spec)
            commands += rules.create(sensor.served, sensor.generation)
        self._written.forget()
        self._run(commands)
        self._written.replaced(held, now)
        self._shape = self._objects.shape(self._rules.table)
        self._watch = watch
        self._sensor = rules if rules is not None and rules.spec.protos else None
        self._served = dict(sensor.served) if sensor is not None else no_ports()
        self._gateways = _plain_set(sensor.gateways) if sensor is not None else frozenset()
        if self._sensor is not None and self._sensor.hold.on:
            self._add_queue_rule(self._sensor)  # refused: the table stands, holding nothing
            self._shape = self._objects.shape(self._rules.table)

    def apply(self, changes: Sequence[Change], now: float) -> None:
        """The changes in one transaction per `CHUNK` targets; if the kernel refuses one, each
        of its targets on its own, so that one bad element does not hold back the others. A
        ban already over at `now` lifts the target, as the kernel would have by then. A ban on
        a target that no ban set can hold (`Written`) is one element operation, not three."""
        states = list(final_states(changes, now).items())
        failed: list[IPNetwork] = []
        for start in range(0, len(states), CHUNK):
            chunk = states[start : start + CHUNK]
            absent = self._written.writing(chunk, now)
            try:
                self._run(self._rules.update(chunk, now, absent))
            except FirewallError as err:
                failed += self._apply_each(chunk, now, err)
            else:
                self._written.lifted(chunk)
        if failed:
            raise FirewallError(_partial_failure(failed, len(states)))

    def expire(self, bans: Sequence[Ban], now: float) -> None:
        """Nothing: every timed ban is an element with a kernel timeout."""

    def maintain(self, now: float) -> None:
        """Forget the bans whose elements the kernel removed long since (the kernel's timeouts
        are long enough for any ban)."""
        self._written.prune()

    def entries(self) -> list[KernelEntry]:
        """The bans: `list set` of each ban set, never of the table, whose watch and block
        sets can hold 65,536 elements each (libnftables fetches only the set it lists; 1,000
        bans beside 60,000 clients: bench/check_cost.py). A ban set that is missing holds none."""
        if not self.present():
            return []
        listed: list[JsonCommand] = []
        for name in BAN_SETS:
            listed += self._list_set(name)
        return parse_entries(listed)

    def present(self) -> bool:
        return self._objects.table_exists(self._rules.table)

    def inspect(self, entries: bool = False, count: bool = False) -> Inspection:
        """The table's chains, rules and sets against the digest read when porttrap last
        wrote them (netlink dumps, whatever the sets hold); with `entries`, its bans too
        (`entries`: the ban sets only, 2 s or more at 100,000 bans), with `count` how many
        (netlink dumps of the ban sets that build no addresses: about 0.5 s at 100,000).
        No other set's elements are read."""
        table = self._rules.table
        if not self.present():
            return Inspection(missing=True)
        if self._shape is not None and self._objects.shape(table) != self._shape:
            return Inspection(
                damaged=f"the chains, rules or sets of table inet {table} differ from what "
                "porttrap wrote (flushed or changed by hand?)"
            )
        held = self.entries() if entries else None
        number = self._objects.count_elements(table, BAN_SETS) if count else None
        return Inspection(entries=held, count=number)

    def teardown(self) -> None:
        self._written.forget()
        self._run(self._rules.remove())
        self._shape = None
        self._sensor, self._served = None, no_ports()
        self._watch, self._gateways = None, frozenset()

    # -- the kernel sensor ---------------------------------------------------------------

    def serve(self, ports: Ports) -> None:
        """Add and delete ports of the sensor's `open_*` sets, the difference to what they
        hold. FirewallError when the kernel refuses (the table may be gone: the next setup
        brings the sets back as the core then wants them)."""
        rules = self._sensor_rules()
        commands = []
        for proto in rules.spec.protos:
            now_open = rules.spec.open_ports(ports, proto)
            before = rules.spec.open_ports(self._served, proto)
            commands += rules.set_open(proto, now_open - before, before - now_open)
        commands += rules.hold.set_served(held_ports(self._served), held_ports(ports))
        if commands:
            self._run(commands)
        self._served = dict(ports)

    def rotate(self, empty: str) -> None:
        """The insert rules change: the digest of what porttrap wrote is read again, unless
        the table already differed from it before (changed since the last check): then the
        old digest stays, and the next check finds that damage instead of taking it as
        written."""
        whole = self._objects.shape(self._rules.table) == self._shape
        self._run(self._sensor_rules().rotate(empty))
        if whole:
            self._shape = self._objects.shape(self._rules.table)

    def set_gateways(self, addresses: Iterable[IPAddress]) -> None:
        """Make the gateway sets hold exactly `addresses`: one transaction with the difference
        to what they hold (nothing when there is none). FirewallError when the kernel refuses
        (the table may be gone: the next setup brings the gateways of its SensorState)."""
        if self._watch is None:
            raise FirewallError(
                f"porttrap's table inet {self._rules.table} holds no watch (it is made with the "
                "table when setup is given a SensorState)"
            )
        wanted = _plain_set(addresses)
        commands = self._watch.set_gateways(wanted - self._gateways, self._gateways - wanted)
        if commands:
            self._run(commands)
        self._gateways = wanted

    def release(self, addresses: Iterable[IPAddress]) -> None:
        """The hold let these sources' SYNs through: not held again for [kernel] hold_memory,
        in one transaction. FirewallError when the kernel refuses (a released set full at
        [kernel] client_size, or the table gone): those sources are held again next time."""
        commands = self._hold_rules().release(_plain_set(addresses))
        if commands:
            self._run(commands)

    def hold_ready(self) -> None:
        """The hold's heartbeat, from the daemon's queue reader while it works (every second
        or so): without it for `sensorspec.HOLD_READY_TIME` seconds, nothing is held."""
        self._run(self._hold_rules().ready())

    def _hold_rules(self) -> HoldRules:
        rules = self._sensor_rules().hold
        if not rules.on:
            raise FirewallError(
                f"porttrap's table inet {self._rules.table} holds no hold rules ([kernel] hold "
                'is "0", or TCP is in connect mode)'
            )
        return rules

    def _add_queue_rule(self, rules: SensorRules) -> None:
        """The hold's verdict rule: nft's `queue`, or on a kernel without nft_queue the same
        verdict as xtables' NFQUEUE target (nft_compat). Its own transaction, after the
        table's: until it is in, the hold chain holds nothing (fail open)."""
        try:
            self._nft.run(rules.hold.queue_rule())
        except FirewallError as err:
            if "No such file or directory" not in str(err):
                raise
            self._add_xt_queue_rule(rules.spec.kernel.hold_queue, err)

    def _add_xt_queue_rule(self, queue: int, native: FirewallError) -> None:
        try:
            self._objects.add_queue_rule(self._rules.table, CHAIN, queue)
        except FirewallError as err:
            raise FirewallError(
                f"[kernel] hold needs NFQUEUE in nftables, which this kernel refused both ways "
                f"({native}; {err}): load nft_queue (modprobe nft_queue), or set [kernel] "
                'hold = "0"'
            ) from err

    def sensor_counters(self) -> dict[str, int]:
        found = self._objects.counters(self._rules.table)
        return {name: count for name, count in found.items() if name in COUNTERS}

    def _sensor_rules(self) -> SensorRules:
        if self._sensor is None:
            raise FirewallError(
                f"porttrap's table inet {self._rules.table} holds no kernel sensor (it is made "
                "with the table when stealth or advanced mode is on)"
            )
        return self._sensor

    # -- helpers -------------------------------------------------------------------------

    def _list_set(self, name: str) -> list[JsonCommand]:
        try:
            return self._nft.list_json(self._rules.set_spec(name))
        except FirewallError as err:
            if "No such file or directory" not in str(err):
                raise
            return []

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

    def _apply_each(
        self, states: Sequence[tuple[IPNetwork, Ban | None]], now: float, err: FirewallError
    ) -> list[IPNetwork]:
        """The targets the kernel refused, trying each on its own."""
        if not self.present():
            raise FirewallError(
                f"{err} (porttrap's table inet {self._rules.table} is missing: it is created "
                "when the daemon starts, or by `setup`)"
            ) from err
        return [target for target, ban in states if not self._apply_one(target, ban, now)]

    def _apply_one(self, target: IPNetwork, ban: Ban | None, now: float) -> bool:
        try:
            self._run(self._rules.update([(target, ban)], now))
        except FirewallError as err:
            action = "unban" if ban is None else "ban"
            log.event(
                "firewall-error", logging.ERROR, action=action, address=show(target), error=str(err)
            )
            return False
        return True


def _plain_set(addresses: Iterable[IPAddress]) -> frozenset[IPAddress]:
    """Without IPv6 scopes, which the kernel's sets do not hold (fe80::1%eth0 is fe80::1)."""
    return frozenset(ipaddress.ip_address(address.packed) for address in addresses)


def _partial_failure(failed: list[IPNetwork], total: int) -> str:
    names = ", ".join(show(target) for target in failed[:_FAILED_SHOWN])
    more = f" and {len(failed) - _FAILED_SHOWN} more" if len(failed) > _FAILED_SHOWN else ""
    return (
        f"nftables refused {len(failed)} of {total} changes, for {names}{more} "
        "(the others were applied; each failure is logged as event=firewall-error)"
    )
