"""What a config asks of the host it runs on: the checks that depend on the host's limits.

Connect mode binds a socket per trap port and IP family. More of them than the descriptor
limit allows leaves the daemon without descriptors for its control socket, its database and
its firewall commands (and every trap accept fails without a ban); a trap socket inside the
kernel's `ip_local_port_range` takes a port from the pool the host's own connections draw their
source ports from (all of them: the host can no longer connect out). Stealth and advanced
modes hold no socket on a trap port, and their rules leave established and related packets
alone (`firewall.sensor_rules`), so replies to the host's own connections on such a port pass:
they are not checked.

`read` takes the facts from /proc and getrlimit (I/O, read-only); `check` is pure.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from porttrap.config import fields
from porttrap.config.fields import Problems, Table
from porttrap.config.schema import Config, KernelSensor, Modes, Trap, TrapMode
from porttrap.config.traps import default_ports
from porttrap.model import Proto

LOCAL_PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")  # IPv6 uses it too
RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
# Descriptors the daemon keeps beside its trap sockets: control connections, the database and
# its journal, netlink sockets, pipes of firewall commands and actions, log files.
HEADROOM = 256
_STEALTH_FIX = 'or set mode = "stealth" or "advanced" (nftables rules: no socket per port)'


@dataclass(frozen=True, slots=True)
class Host:
    """The host's limits. `local_ports` None: unknown (not checked); `nofile` None: no limit."""

    local_ports: range | None = None
    reserved: frozenset[int] = field(default_factory=frozenset)
    nofile: int | None = None  # the hard RLIMIT_NOFILE: the daemon raises its soft limit to it


def read() -> Host:
    """This host's limits, as this process sees them (its network namespace, its rlimit)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return Host(
        local_ports=_local_ports(),
        reserved=_reserved(),
        nofile=None if hard == resource.RLIM_INFINITY else hard,
    )


def _local_ports() -> range | None:
    try:
        low, high = (int(part) for part in LOCAL_PORT_RANGE.read_text().split())
    except (OSError, ValueError):
        return None
    return range(low, high + 1)


def _reserved() -> frozenset[int]:
    try:
        text = RESERVED_PORTS.read_text().strip()
    except OSError:
        return frozenset()
    found: set[int] = set()
    for item in filter(None, text.split(",")):
        low, _, high = item.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return frozenset(found)


def check(problems: Problems, data: Table, config: Config, host: Host) -> None:
    """Problems for `config` (read from `data`) that this host cannot run without harm."""
    _check_descriptors(problems, data, config, host)
    if host.local_ports is not None:
        for proto in Proto:
            if config.modes.of(proto) is TrapMode.CONNECT:
                _check_local_ports(problems, data, proto, host)


def sockets_needed(traps: Iterable[Trap], modes: Modes, kernel: KernelSensor) -> int:
    """Listening sockets the daemon binds: one per connect-mode trap and IP family (two for
    a trap on every address), and the two of the catch-all port in stealth mode."""
    connect = [t for t in traps if modes.of(t.proto) is TrapMode.CONNECT]
    count = sum(1 if trap.address is not None else 2 for trap in connect)
    redirect = modes.tcp is not TrapMode.CONNECT and kernel.client_trap_port and kernel.client_time
    return count + (2 if redirect else 0)


def _check_descriptors(problems: Problems, data: Table, config: Config, host: Host) -> None:
    needed = sockets_needed(config.traps, config.modes, config.kernel)
    if host.nofile is None or needed + HEADROOM <= host.nofile:
        return
    problems.add(
        fields.traps_key(data, ("mode", "tcp", "udp")),
        f"connect mode needs {needed:,} sockets here (one per trap port and IP family), but "
        f"this host allows {host.nofile:,} descriptors (the hard RLIMIT_NOFILE) and porttrap "
        f"keeps {HEADROOM} of them for itself (control socket, database, firewall commands); "
        f"trap fewer ports in connect mode, {_STEALTH_FIX}",
    )


def _check_local_ports(problems: Problems, data: Table, proto: Proto, host: Host) -> None:
    for key, ports, shown in _trap_items(data, proto):
        inside = _inside(ports, host)
        if inside:
            problems.add(key, _local_ports_message(proto, shown, inside, host))


def _trap_items(data: Table, proto: Proto) -> Iterator[tuple[str, Iterable[int], str]]:
    """`[traps] tcp` (or udp) and each `[[traps.port]]` of `proto`: its key, its ports and how
    to name them. Without the key, the built-in list. Invalid items are skipped (they have
    their own problems)."""
    traps = data.get("traps")
    table = traps if isinstance(traps, dict) else {}
    name = proto.value
    if name not in table:
        yield f"traps.{name}", default_ports(proto), "the built-in list"
    else:  # one problem for the list, however many of its items are inside
        found = (_ports(item) for item in _list(table.get(name)))
        yield f"traps.{name}", {p for ports in found if ports for p in ports}, f"[traps] {name}"
    for index, entry in enumerate(_list(table.get("port"))):
        ports = _ports(entry.get("port")) if isinstance(entry, dict) else None
        if ports is not None and isinstance(entry, dict) and entry.get("proto") == name:
            yield f"traps.port[{index}]", ports, fields.show(entry.get("port"))


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _ports(value: object) -> range | None:
    try:
        return fields.ports(value)
    except ValueError:
        return None


def _inside(ports: Iterable[int], host: Host) -> list[int]:
    local = host.local_ports or range(0)
    return sorted(p for p in ports if p in local and p not in host.reserved)


def _local_ports_message(proto: Proto, shown: str, inside: list[int], host: Host) -> str:
    local = host.local_ports or range(0)
    span = f"{local.start}-{local.stop - 1}"
    which = _ranges(inside)
    return (
        f"{proto.value.upper()} {which} of {shown} {'is' if len(inside) == 1 else 'are'} inside "
        f"the kernel's ip_local_port_range ({span}), where this host's own connections take "
        "their source ports: a trap socket there takes the port from them (all of them, and "
        f"the host cannot connect out, when it covers the range); trap ports outside {span}, "
        f"reserve them (sysctl net.ipv4.ip_local_reserved_ports={_ranges(inside, ',')}), "
        f"{_STEALTH_FIX}"
    )


def _ranges(ports: list[int], sep: str = ", ") -> str:
    """Sorted ports as ranges: 1, 5-9 (at most five ranges, then "...")."""
    spans: list[list[int]] = []
    for port in ports:
        if spans and port == spans[-1][1] + 1:
            spans[-1][1] = port
        else:
            spans.append([port, port])
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in spans[:5]]
    return sep.join(shown) + (f"{sep}..." if len(spans) > 5 else "")
