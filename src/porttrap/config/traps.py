"""The `[traps]` section: plain port lists per protocol plus `[[traps.port]]` entries with their
own address or ban time, expanded into one `Trap` per port; and how each protocol is watched
(`mode`, with the port ranges of `[traps.advanced]`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from porttrap.config import fields
from porttrap.config.fields import Problems, Section
from porttrap.config.schema import DEFAULT_TCP_TRAPS, DEFAULT_UDP_TRAPS, Modes, Trap, TrapMode
from porttrap.model import IPAddress, Proto
from porttrap.units import parse_ports

TCP, UDP = Proto.TCP, Proto.UDP
DEFAULTS = {Proto.TCP: DEFAULT_TCP_TRAPS, Proto.UDP: DEFAULT_UDP_TRAPS}
KEYS = ("tcp", "udp", "port", "mode", "advanced", "banner")
ENTRY_KEYS = ("port", "proto", "address", "ban")
ADVANCED_KEYS = ("tcp", "udp", "exclude_tcp", "exclude_udp")
_LIST_EXAMPLE = '["23", "2323", "5900-5910"]'
_RANGE_EXAMPLE = '["1-65535"]'
_MODE_TABLE_EXAMPLE = '{ tcp = "stealth", udp = "connect" }'
BANNER_MAX = 1024  # bytes of UTF-8: one non-blocking send, never a wait


@dataclass(frozen=True, slots=True)
class _Entry:
    """The traps of one valid `[[traps.port]]` table; `index` is its place in the file."""

    index: int
    traps: tuple[Trap, ...]


def build_traps(section: Section) -> tuple[Trap, ...]:
    """The traps `[traps]` asks for, sorted by (proto, port, address); problems for the rest."""
    section.check_keys(KEYS)
    plain = {(proto, port) for proto in Proto for port in _plain_ports(section, proto)}
    entries = _entries(section.table.get("port", []), section.problems)
    _check_clashes(entries, section.problems)
    specific = {trap for entry in entries for trap in entry.traps}
    replaced = {(trap.proto, trap.port) for trap in specific}
    traps = {Trap(proto, port) for proto, port in plain - replaced} | specific
    return tuple(sorted(traps, key=_order))


def build_modes(section: Section, backend: object = "nftables", respond_bans: bool = True) -> Modes:
    """Each protocol's mode (`[traps] mode`) and what advanced mode watches (`[traps.advanced]`).

    `[traps.advanced]` is read and checked whatever the modes: people switch back and forth.
    Without `mode`, see `default_mode`; `backend` is `[firewall] backend` as written,
    `respond_bans` whether `[ban] respond` is "ban" for both protocols.
    """
    modes = _modes(section, default_mode(section, backend, respond_bans))
    advanced = section.sub("advanced")
    advanced.check_keys(ADVANCED_KEYS)
    default = Modes()
    tcp = _advanced(advanced, TCP, modes[TCP], default.advanced_tcp, default.exclude_tcp)
    udp = _advanced(advanced, UDP, modes[UDP], default.advanced_udp, default.exclude_udp)
    return Modes(
        tcp=modes[TCP],
        udp=modes[UDP],
        advanced_tcp=tcp[0],
        advanced_udp=udp[0],
        exclude_tcp=tcp[1],
        exclude_udp=udp[1],
    )


def build_banner(section: Section) -> bytes:
    """`[traps] banner` (PortSentry's PORT_BANNER) as the bytes connect-mode TCP traps send."""
    return section.get("banner", _banner, b"")


def _banner(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(
            f'expected text such as "SSH-2.0-OpenSSH_9.2\\r\\n", got {fields.show(value)}'
        )
    data = value.encode("utf-8")
    if len(data) > BANNER_MAX:
        raise ValueError(
            f"the banner is {len(data)} bytes in UTF-8, more than {BANNER_MAX}; shorten it"
        )
    return data


def default_ports(proto: Proto) -> set[int]:
    return {port for text in DEFAULTS[proto] for port in parse_ports(text)}


def _order(trap: Trap) -> tuple[str, int, int, int]:
    if trap.address is None:
        return (trap.proto.value, trap.port, 0, 0)
    return (trap.proto.value, trap.port, trap.address.version, int(trap.address))


def _plain_ports(section: Section, proto: Proto) -> set[int]:
    if proto.value not in section.table:
        return default_ports(proto)
    found = section.items(proto.value, fields.ports, _LIST_EXAMPLE)
    return {port for ports in found for port in ports}


def _entries(value: object, problems: Problems) -> list[_Entry]:
    if not isinstance(value, list):
        problems.add("traps.port", f"expected [[traps.port]] tables, got {fields.show(value)}")
        return []
    entries = (_entry(index, item, problems) for index, item in enumerate(value))
    return [entry for entry in entries if entry is not None]


def _entry(index: int, item: object, problems: Problems) -> _Entry | None:
    """One `[[traps.port]]` table; None when anything in it is wrong (problems say what)."""
    key = f"traps.port[{index}]"
    if not isinstance(item, dict):
        problems.add(key, f"expected a table with port and proto, got {fields.show(item)}")
        return None
    before = len(problems)
    section = Section(item, key, problems)
    section.check_keys(ENTRY_KEYS)
    ports = section.need("port", fields.ports)
    proto = section.need("proto", fields.proto)
    address = section.get("address", fields.address, None)
    ban = section.get("ban", fields.duration, None)
    if ports is None or proto is None or len(problems) > before:
        return None
    return _Entry(index, tuple(Trap(proto, port, address, ban) for port in ports))


def _check_clashes(entries: Iterable[_Entry], problems: Problems) -> None:
    """Two entries may share a port only on two different specific addresses."""
    owners: dict[tuple[Proto, int], list[tuple[IPAddress | None, int]]] = {}
    reported: set[tuple[int, int]] = set()
    for entry in entries:
        for trap in entry.traps:
            spot = owners.setdefault((trap.proto, trap.port), [])
            for there, other in spot:
                if _clash(trap.address, there) and (other, entry.index) not in reported:
                    reported.add((other, entry.index))
                    problems.add(f"traps.port[{entry.index}]", _clash_message(trap, there, other))
            spot.append((trap.address, entry.index))


def _clash(here: IPAddress | None, there: IPAddress | None) -> bool:
    return here is None or there is None or here == there


def _clash_message(trap: Trap, there: IPAddress | None, other: int) -> str:
    port = f"{trap.port}/{trap.proto.value}"
    if trap.address == there:
        return f"{port} {_on(there)} is already trapped by traps.port[{other}]; remove one of them"
    return (
        f"{port} {_on(trap.address)} clashes with traps.port[{other}], which traps it "
        f"{_on(there)}: the kernel cannot bind a port on every address and on one address "
        "too; give both an address or remove one"
    )


def _on(address: IPAddress | None) -> str:
    return "on every address" if address is None else f"on {address}"


def default_mode(section: Section, backend: object, respond_bans: bool = True) -> TrapMode:
    """The mode of a protocol `mode` does not name. Advanced: a scanner sees no service at
    all (0 of 5 in every nmap scan of the benchmarks, against 5 of 5 in connect mode), a
    service always takes its port, and no socket is held per trap. Connect where advanced
    cannot be, or would ignore what the file says, so that a file written for the earlier
    default (connect) means what it meant: with a backend other than nftables (the ipset
    backend runs connect mode only); when the file lists its own trap ports (`tcp`, `udp`,
    `[[traps.port]]`) or a `banner`, which advanced mode does not use; and when `[ban]
    respond` is not "ban" (advanced mode's first-packet block is a ban of its own)."""
    says_connect = any(name in section.table for name in ("tcp", "udp", "port", "banner"))
    if says_connect or not respond_bans or backend != "nftables":
        return TrapMode.CONNECT
    return TrapMode.ADVANCED


def _modes(section: Section, default: TrapMode) -> dict[Proto, TrapMode]:
    """`mode = "stealth"` for both protocols, or `mode = { tcp = "stealth" }` for each one."""
    return fields.per_protocol(section, "mode", TrapMode, default, _MODE_TABLE_EXAMPLE)


def _advanced(
    section: Section,
    proto: Proto,
    mode: TrapMode,
    watched: frozenset[int],
    excluded: frozenset[int],
) -> tuple[frozenset[int], frozenset[int]]:
    """The ports advanced mode watches for `proto`, and those it leaves alone (given: defaults)."""
    before = len(section.problems)
    watched = _port_set(section, proto.value, watched)
    excluded = _port_set(section, f"exclude_{proto.value}", excluded)
    if mode is TrapMode.ADVANCED and len(section.problems) == before:
        _check_watched(section, proto, watched, excluded)
    return watched, excluded


def _port_set(section: Section, name: str, default: frozenset[int]) -> frozenset[int]:
    if name not in section.table:
        return default
    found = section.items(name, fields.ports, _RANGE_EXAMPLE)
    return frozenset(port for ports in found for port in ports)


def _check_watched(
    section: Section, proto: Proto, watched: frozenset[int], excluded: frozenset[int]
) -> None:
    """Advanced mode with no port left to watch is a mistake, not a way to turn it off."""
    if watched - excluded:
        return
    name = proto.value
    if watched:
        why = f"every port of {name} is also in exclude_{name}, which leaves nothing to watch"
        fix = f"remove some from exclude_{name}"
    else:
        why = "an empty list leaves nothing to watch"
        fix = f"list ports such as {_RANGE_EXAMPLE}"
    section.problems.add(
        fields.join(section.key, name),
        f'{name} is in "advanced" mode, but {why}; {fix}, or set another mode for {name}',
    )
