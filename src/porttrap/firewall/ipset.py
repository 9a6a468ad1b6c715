"""The ipset backend, for hosts without nftables: bans as elements of two ipset sets (IPv4,
IPv6) with per-element timeouts, dropped by a chain of porttrap's own in iptables' and
ip6tables' raw table, jumped to first thing in PREROUTING; and, given a SensorState (connect
mode: the daemon always gives one), the watch: recent clients and peers, the gateways and the
marks of connect-mode UDP traps, in sets and security-table chains of its own.

`porttrap.firewall.ipset_rules` writes the bans' scripts and reads the listings (and says why
raw PREROUTING), `porttrap.firewall.ipset_watch` the watch's (and says why the security table);
everything runs through `porttrap.firewall.exec`, in batches: one `ipset restore` per setup,
apply, re-arm or change of gateways, one `iptables-restore` transaction per family and setup.
Nothing but porttrap's own sets and chains is changed. Bans longer than ipset's 24.8-day limit
are re-armed (`porttrap.firewall.rearm`) by the daemon's upkeep (`maintain`, every 5 s) and
whenever it applies changes.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from porttrap import log
from porttrap.clock import Clock, SystemClock
from porttrap.errors import FirewallError
from porttrap.firewall import ipset_rules as rules
from porttrap.firewall import ipset_watch as watching
from porttrap.firewall.base import Inspection, KernelEntry
from porttrap.firewall.exec import CommandFailed, Exec, Runner
from porttrap.firewall.ipset_rules import FAMILIES, Element, Family, Listing, Names
from porttrap.firewall.ipset_watch import IpsetWatch
from porttrap.firewall.kernel import has_net_admin
from porttrap.firewall.plan import final_states, strongest
from porttrap.firewall.rearm import LongBans
from porttrap.model import Ban, Change, IPAddress, IPNetwork, show
from porttrap.sensorspec import Ports, SensorState

PROGRAMS = ("ipset", "iptables", "ip6tables", "iptables-restore", "ip6tables-restore")
INSTALL_HINT = "apt-get install ipset iptables"
WAIT = "5"  # seconds iptables waits for the xtables lock (iptables-legacy) before failing
_MISSING_SET = "does not exist"
_NO_SENSOR = (
    "the ipset backend holds no kernel sensor (it is nftables rules: stealth and advanced "
    'modes need backend = "nftables")'
)


class IpsetBackend:
    """FirewallBackend on ipset + iptables. `runner` defaults to running the programs in this
    process's network namespace; `clock` gives `entries` the time left of long bans."""

    name = "ipset"

    def __init__(
        self, table: str = "porttrap", clock: Clock | None = None, runner: Runner | None = None
    ) -> None:
        self.names = Names(table)
        self._clock = clock if clock is not None else SystemClock()
        self._run = runner if runner is not None else Exec()
        self._long = LongBans()
        self._watch: IpsetWatch | None = None  # the watch of the last setup
        self._gateways: frozenset[IPAddress] = frozenset()  # ... and the gateways it holds

    def setup(self, bans: Sequence[Ban], now: float, sensor: SensorState | None = None) -> None:
        """Fill new sets and swap them in (each live set changes in one kernel operation), the
        watch's too when `sensor` is given, in one `ipset restore`; then (re)make the chains
        and put the jumps to them first (raw PREROUTING; with the watch security INPUT and
        OUTPUT), one iptables transaction per family. There is no kernel sensor here (it is
        nftables rules): a `sensor` that watches a protocol is refused. Without `sensor`, a
        watch left by an earlier setup is removed."""
        if sensor is not None and sensor.spec.protos:
            raise FirewallError("the kernel sensor of stealth and advanced modes needs nftables")
        watch = IpsetWatch(self.names, sensor.spec) if sensor is not None else None
        gateways = _plain_set(sensor.gateways) if sensor is not None else frozenset()
        self._long.clear()
        elements = []
        for target, ban in strongest(bans, now).items():
            element = self._long.arm(target, ban.expires_at, now) if _holdable(target) else None
            if element is not None:
                elements.append(element)
        existing = self._set_names()
        script = rules.setup_script(self.names, existing, elements)
        if watch is not None:
            script += watch.sets_script(existing, gateways, before=self._watch)
        self._ipset(script)
        for family in FAMILIES:
            self._iptables_setup(family, watch)
        if watch is None:
            self._destroy(watching.sets_teardown(self.names, existing))
        self._watch, self._gateways = watch, gateways

    def apply(self, changes: Sequence[Change], now: float) -> None:
        """The changes, and any long bans due for re-arming, in one `ipset -exist restore`. A
        ban already over at `now` lifts the target, as the kernel would have by then."""
        states: dict[IPNetwork, Element | None] = {}
        refused: list[IPNetwork] = []
        for target, ban in final_states(changes, now).items():
            if not _holdable(target):
                refused.append(target)
            elif ban is None:
                self._long.forget(target)
                states[target] = None
            else:
                states[target] = self._long.arm(target, ban.expires_at, now)
        for target, expires_at in self._long.due(now):
            states.setdefault(target, self._long.arm(target, expires_at, now))
        self._update(states)
        if refused:
            names = ", ".join(show(target) for target in refused)
            raise FirewallError(f"{names} not banned: ipset's hash:net cannot hold a /0 network")

    def entries(self) -> list[KernelEntry]:
        """The elements of porttrap's sets; a long ban shows the time it has left, not the
        shorter timeout the kernel holds until it is re-armed."""
        existing = set(self._set_names())
        now = self._clock.now()
        found: list[KernelEntry] = []
        for name in (self.names.set(family) for family in FAMILIES):
            if name in existing:
                found += rules.parse_save(self._run.run(["ipset", "save", name]), [name])
        return [self._with_full_time(entry, now) for entry in found]

    def expire(self, bans: Sequence[Ban], now: float) -> None:
        """Nothing: every element has a kernel timeout (a long ban's is re-armed until the
        time left fits, and then ends on time)."""

    def maintain(self, now: float) -> None:
        """Re-arm the long bans that are due (see `porttrap.firewall.rearm`)."""
        self._rearm(now)

    def present(self) -> bool:
        """Whether both families' chains are in place with the jump first in raw PREROUTING
        and, with the watch, its chains with their jumps first in security INPUT and OUTPUT
        (an `iptables -S` of each small table: two, or four with the watch)."""
        return all(self._in_place(family) for family in FAMILIES)

    def inspect(self, entries: bool = False, count: bool = False) -> Inspection:
        """`present` already compares porttrap's chains and rules with what it writes (a
        chain flushed or a jump moved counts as missing: `setup` makes them again); with
        `entries`, the sets' elements too, with `count` their number (`ipset list -t`)."""
        if not self.present():
            return Inspection(missing=True)
        number = sum(self._count(family) for family in FAMILIES) if count else None
        return Inspection(entries=self.entries() if entries else None, count=number)

    def _count(self, family: Family) -> int:
        """The elements of the family's ban set, from `ipset list -t` (0 when it is gone)."""
        name = self.names.set(family)
        if name not in self._set_names():
            return 0
        return rules.parse_count(self._run.run(["ipset", "list", "-t", name]))

    def teardown(self) -> None:
        """Remove the jumps and porttrap's chains, then porttrap's sets (the rules referring
        to a set must go before it can). Only what exists is touched."""
        for family in FAMILIES:
            script = rules.iptables_teardown(self._listing(family, rules.TABLE), self.names)
            script += watching.iptables_teardown(self._listing(family, watching.TABLE), self.names)
            if script:
                self._restore(family, script)
        self._destroy(rules.teardown_script(self.names, self._set_names()))
        self._long.clear()
        self._watch, self._gateways = None, frozenset()

    # -- the watch (SensorBackend: in connect mode, the only part this backend holds) ----

    def set_gateways(self, addresses: Iterable[IPAddress]) -> None:
        """Make the gateway sets hold exactly `addresses`: one `ipset -exist restore` with the
        difference to what they hold (nothing when there is none). FirewallError when ipset
        refuses (the sets may be gone: the next setup brings the gateways of its SensorState)."""
        if self._watch is None:
            raise FirewallError(
                f"porttrap's ipset sets hold no watch ({self.names.gateways(FAMILIES[0])} and "
                "the others are made by setup when it is given a SensorState)"
            )
        wanted = _plain_set(addresses)
        script = self._watch.gateways_script(wanted - self._gateways, self._gateways - wanted)
        if script:
            self._ipset(script, exist=True)
        self._gateways = wanted

    def serve(self, ports: Ports) -> None:
        raise FirewallError(_NO_SENSOR)

    def rotate(self, empty: str) -> None:
        raise FirewallError(_NO_SENSOR)

    def sensor_counters(self) -> dict[str, int]:
        raise FirewallError(_NO_SENSOR)

    def release(self, addresses: Iterable[IPAddress]) -> None:
        raise FirewallError(_NO_SENSOR)

    def hold_ready(self) -> None:
        raise FirewallError(_NO_SENSOR)

    # -- helpers -----------------------------------------------------------------------

    def _rearm(self, now: float) -> None:
        due = self._long.due(now)
        if not due:
            return
        states = {target: self._long.arm(target, expires_at, now) for target, expires_at in due}
        try:
            self._update(states)
        except FirewallError:
            for target, expires_at in due:  # try again at the next check
                self._long.retry_at(target, expires_at, now)
            raise
        log.event("rearmed", logging.DEBUG, bans=len(due), held=len(self._long))

    def _update(self, states: Mapping[IPNetwork, Element | None]) -> None:
        script = rules.update_script(self.names, states)
        if script:
            self._ipset(script, exist=True)

    def _ipset(self, script: str, exist: bool = False) -> None:
        argv = ["ipset", "-exist", "restore"] if exist else ["ipset", "restore"]
        try:
            self._run.run(argv, script)
        except CommandFailed as err:
            raise FirewallError(self._explain(err, script)) from err

    def _explain(self, err: CommandFailed, script: str) -> str:
        text = str(err)
        number = rules.error_line(err.stderr)
        lines = script.splitlines()
        if number is not None and 0 < number <= len(lines):
            text += f" (script line {number}: {lines[number - 1]})"
        if _MISSING_SET in err.stderr:
            sets = " and ".join(self.names.set(family) for family in FAMILIES)
            text += f"; porttrap's sets {sets} are made when the daemon starts (setup)"
        return text

    def _destroy(self, script: str) -> None:
        if script:
            self._ipset(script)

    def _set_names(self) -> list[str]:
        return rules.parse_names(self._run.run(["ipset", "list", "-n"]))

    def _listing(self, family: Family, table: str) -> Listing:
        argv = [family.iptables, "-w", WAIT, "-t", table, "-S"]
        return rules.parse_listing(self._run.run(argv))

    def _iptables_setup(self, family: Family, watch: IpsetWatch | None) -> None:
        """The raw chain and, with `watch`, the watch's chains (else any left removed), in
        one transaction."""
        script = rules.iptables_setup(self._listing(family, rules.TABLE), self.names, family)
        security = self._listing(family, watching.TABLE)
        if watch is not None:
            script += watch.iptables_setup(security, family)
        else:
            script += watching.iptables_teardown(security, self.names)
        self._restore(family, script)

    def _in_place(self, family: Family) -> bool:
        if not rules.in_place(self._listing(family, rules.TABLE), self.names, family):
            return False
        watch = self._watch
        return watch is None or watch.in_place(self._listing(family, watching.TABLE), family)

    def _restore(self, family: Family, script: str) -> None:
        self._run.run([family.restore, "-w", WAIT, "--noflush"], script)

    def _with_full_time(self, entry: KernelEntry, now: float) -> KernelEntry:
        if entry.remaining is None:
            return entry
        full = self._long.remaining(entry.target, now)
        return entry if full is None else KernelEntry(entry.target, full)


def _plain_set(addresses: Iterable[IPAddress]) -> frozenset[IPAddress]:
    """Without IPv6 scopes, which the sets do not hold (fe80::1%eth0 is fe80::1)."""
    return frozenset(ipaddress.ip_address(address.packed) for address in addresses)


def _holdable(target: IPNetwork) -> bool:
    if rules.holdable(target):
        return True
    log.event(
        "firewall-error",
        logging.ERROR,
        action="ban",
        address=show(target),
        error="ipset's hash:net sets cannot hold a /0 network",
    )
    return False


def is_supported(
    runner: Runner | None = None,
    status: Path = Path("/proc/self/status"),
    which: Callable[[str], str | None] = shutil.which,
) -> tuple[bool, str]:
    """Whether the ipset backend can work here, and if not, how to fix it. Only reads: the
    programs on PATH, CAP_NET_ADMIN, `ipset list -n` (the kernel's ip_set answers) and
    `iptables -t raw -S` and `-t security -S` for both families (the tables are there)."""
    missing = [program for program in PROGRAMS if which(program) is None]
    if missing:
        return False, f"{', '.join(missing)} not found: {INSTALL_HINT}"
    if not has_net_admin(status.read_text()):
        return False, (
            "changing ipset and iptables needs CAP_NET_ADMIN: run porttrap as root, or give its "
            "service AmbientCapabilities=CAP_NET_ADMIN"
        )
    run = runner if runner is not None else Exec()
    problem = _kernel_problem(run, _probes())
    if problem is not None:
        return False, problem
    return True, (
        "ipset and iptables found, CAP_NET_ADMIN held, ip_set and the raw and security tables "
        "usable"
    )


def _probes() -> Iterable[tuple[list[str], str]]:
    yield ["ipset", "list", "-n"], "load the ip_set kernel module (modprobe ip_set)"
    for family in FAMILIES:
        for table in (rules.TABLE, watching.TABLE):
            module = f"{'iptable' if family.version == 4 else 'ip6table'}_{table}"
            yield [family.iptables, "-w", WAIT, "-t", table, "-S"], f"modprobe {module}"


def _kernel_problem(run: Runner, probes: Iterable[tuple[list[str], str]]) -> str | None:
    for argv, fix in probes:
        try:
            run.run(argv)
        except FirewallError as err:
            return f"{err}: {fix}"
    return None
