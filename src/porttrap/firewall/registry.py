"""The one registry of firewall backends: each by name, beside how to tell whether it can run
here, what it can do, what its teardown removes and how to make one.

Everything that needs to know which backends exist reads it: `select` (making one by name, or
the first this host can run for `backend = "auto"`), the config loader (the names it accepts),
the systemd unit (what a backend needs from the sandbox), `porttrap flush` and
`uninstall-service` (what a teardown removed). It is light to import, so that loading a config
pulls in neither libnftables nor a backend: a backend's module is imported only when one is made
or its support is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from porttrap.errors import FirewallError

if TYPE_CHECKING:
    from porttrap.clock import Clock
    from porttrap.firewall.base import FirewallBackend

AUTO = "auto"  # not a backend: the first of `auto_order()` this host can run
Check = Callable[[], tuple[bool, str]]


class Maker(Protocol):
    """How to make a backend for porttrap's `table`, in the calling thread's namespace."""

    def __call__(self, table: str, clock: Clock) -> FirewallBackend: ...


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """One firewall backend as the rest of porttrap knows it before (or without) making one.
    Every capability is stated, none defaulted: a new backend has to say what it can do."""

    name: str
    is_supported: Check  # whether it can run here, and if not how to fix it; only reads
    make: Maker
    removes: Callable[[str], str]  # what its teardown removes for a [firewall] table
    kernel_sensor: bool  # can host the kernel sensor's rules (stealth and advanced modes)
    # holds the watch (recent clients and peers): marks datagrams to connect-mode UDP traps
    # (sensorspec.MARK_CLIENT, MARK_PEER); without, a trap socket reads no mark
    marks: bool
    in_kernel: bool  # bans take effect in the kernel (so a teardown has something to remove)
    one_object: bool  # porttrap's part is one kernel object: not `present()`, nothing to remove
    runs_iptables: bool  # runs ipset/iptables programs (iptables-legacy needs CAP_NET_RAW)
    auto: bool  # `auto` may choose it, in registry order


def _nftables_supported() -> tuple[bool, str]:
    from porttrap.firewall import kernel

    return kernel.is_supported()


def _make_nftables(table: str, clock: Clock) -> FirewallBackend:
    from porttrap.firewall.nftables import NftablesBackend

    return NftablesBackend(table, clock=clock)


def _ipset_supported() -> tuple[bool, str]:
    from porttrap.firewall import ipset

    return ipset.is_supported()


def _make_ipset(table: str, clock: Clock) -> FirewallBackend:
    from porttrap.firewall.ipset import IpsetBackend

    return IpsetBackend(table, clock)


def _ipset_removes(table: str) -> str:
    from porttrap.firewall.ipset_rules import FAMILIES, Names

    names = Names(table)
    sets = ", ".join([*(names.set(family) for family in FAMILIES), *names.watch_sets()])
    watch = ", ".join(names.watch_chains())
    return f"ipset sets {sets} and iptables/ip6tables chains raw {names.chain}, security {watch}"


def _dry_run_supported() -> tuple[bool, str]:
    return True, "changes nothing in the kernel"


def _make_dry_run(table: str, clock: Clock) -> FirewallBackend:
    from porttrap.firewall.dryrun import DryRunBackend

    return DryRunBackend(clock)


# nftables first: one kernel transaction per batch, in-process, and the kernel sensor.
BACKENDS = (
    BackendInfo(
        name="nftables",
        is_supported=_nftables_supported,
        make=_make_nftables,
        removes=lambda table: f"nftables table inet {table}",
        kernel_sensor=True,
        marks=True,
        in_kernel=True,
        one_object=True,
        runs_iptables=False,
        auto=True,
    ),
    BackendInfo(
        name="ipset",
        is_supported=_ipset_supported,
        make=_make_ipset,
        removes=_ipset_removes,
        kernel_sensor=False,
        marks=True,  # the watch in sets and security-table chains of its own
        in_kernel=True,
        one_object=False,  # sets and chains: `present()` is False while half of them is left
        runs_iptables=True,
        auto=True,
    ),
    BackendInfo(
        name="dry-run",
        is_supported=_dry_run_supported,
        make=_make_dry_run,
        removes=lambda table: "nothing (dry-run)",
        kernel_sensor=False,
        marks=False,
        in_kernel=False,
        one_object=False,
        runs_iptables=False,
        auto=False,
    ),
)
_BY_NAME = {info.name: info for info in BACKENDS}


def names() -> tuple[str, ...]:
    """Every value `[firewall] backend` takes, in the order messages list them: the backends
    `auto` chooses from, `auto`, then the others."""
    chosen = tuple(info.name for info in BACKENDS if info.auto)
    return (*chosen, AUTO, *(info.name for info in BACKENDS if not info.auto))


def get(name: str) -> BackendInfo:
    """The backend called `name` (not `auto`, which is a choice: see `candidates`);
    FirewallError lists the choices for any other name."""
    info = _BY_NAME.get(name)
    if info is None:
        raise FirewallError(
            f"unknown firewall backend {name!r}: choose one of {', '.join(names())}"
        )
    return info


def auto_order(sensor: bool = False) -> tuple[BackendInfo, ...]:
    """What `auto` tries, in order; with the kernel sensor only the backends that host it."""
    return tuple(info for info in BACKENDS if info.auto and (info.kernel_sensor or not sensor))


def candidates(name: str) -> tuple[BackendInfo, ...]:
    """The backends a configured `name` may end up running: every one `auto` may choose, or
    the one named (what the service must allow, what uninstalling may have to remove)."""
    return auto_order() if name == AUTO else (get(name),)


def sensor_hosts() -> tuple[str, ...]:
    """The names of the backends that can host the kernel sensor."""
    return tuple(info.name for info in BACKENDS if info.kernel_sensor)


def checks() -> dict[str, Check]:
    """How to tell whether each backend can run here (only reads, changes nothing)."""
    return {info.name: info.is_supported for info in BACKENDS}
