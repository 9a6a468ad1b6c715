"""Reading PortSentry's files as PortSentry itself reads them.

- portsentry.conf: `KEY="value"` lines (spaces around `=` allowed), the value ending at the next
  double quote (no escapes, no variables: `$TARGET$`, `$PORT$`, `$MODE$` are PortSentry's own
  macros), `#` at the start of a line for comments. PortSentry 1.2 takes the first line of a
  key and skips a value without quotes; 2.x takes the last and allows port ranges ("1-1024").
- /etc/default/portsentry (Debian's init script sources it): TCP_MODE and UDP_MODE, shell
  assignments; an empty or missing one means that protocol is not watched.
- the ignore file(s): one `address[/bits]` per line, `#` comments.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass

from porttrap.config.legacy.notes import Note, SourceFile
from porttrap.model import IPNetwork

KEYS = (
    "TCP_PORTS",
    "UDP_PORTS",
    "ADVANCED_PORTS_TCP",
    "ADVANCED_PORTS_UDP",
    "ADVANCED_EXCLUDE_TCP",
    "ADVANCED_EXCLUDE_UDP",
    "IGNORE_FILE",
    "HISTORY_FILE",
    "BLOCKED_FILE",
    "RESOLVE_HOST",
    "BLOCK_TCP",
    "BLOCK_UDP",
    "KILL_ROUTE",
    "KILL_HOSTS_DENY",
    "KILL_RUN_CMD",
    "KILL_RUN_CMD_FIRST",
    "SCAN_TRIGGER",
    "PORT_BANNER",
)
MODES = ("tcp", "stcp", "atcp", "udp", "sudp", "audp")
_ENTRY = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")
_VERSION_2 = re.compile(r"port\s*sentry\s+2\.", re.IGNORECASE)
_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Z_]+_MODE)=(.*)")
_DYNAMIC = "dynamically fetched"  # Debian's portsentry-build-ignore-file: the host's addresses


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    value: str
    line: int


@dataclass(frozen=True, slots=True)
class Conf:
    """portsentry.conf as PortSentry reads it: one setting per key, and its format's version."""

    name: str
    settings: dict[str, Setting]
    version: int  # 1 (1.2) or 2 (2.x)

    def get(self, key: str) -> Setting | None:
        return self.settings.get(key)


@dataclass(frozen=True, slots=True)
class Ignored:
    """One ignore-file entry as a network, where it came from, and what to say about it."""

    network: IPNetwork | None  # None: not carried over
    file: str
    line: int
    text: str
    note: str = ""


def version_of(source: SourceFile) -> int:
    """2 for a 2.x file (its header says so, or a port list has a range), else 1."""
    if _VERSION_2.search(source.text):
        return 2
    for _number, line in source.lines():
        match = _ENTRY.match(line)
        if match is None or line.lstrip().startswith("#") or not match.group(1).endswith("PORTS"):
            continue
        value = _quoted(match.group(2))
        if value is not None and "-" in value:
            return 2
    return 1


def _quoted(rest: str) -> str | None:
    """The value after `KEY=`: from the first double quote to the next (or the end)."""
    if not rest.startswith('"'):
        return None
    value = rest[1:].split('"', 1)[0]
    return "".join(c for c in value if c.isprintable())


def parse_conf(source: SourceFile, notes: list[Note]) -> Conf:
    version = version_of(source)
    settings: dict[str, Setting] = {}
    for number, line in source.lines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        setting = _setting(source.name, number, line, notes)
        if setting is None:
            continue
        earlier = settings.get(setting.key)
        if earlier is None or version == 2:
            settings[setting.key] = setting
        if earlier is not None:
            used, unused = (earlier, setting) if version == 1 else (setting, earlier)
            rule = "1.2 uses the first" if version == 1 else "2.x uses the last"
            notes.append(
                Note(
                    source.name,
                    unused.line,
                    unused.key,
                    f"set again on line {used.line}; PortSentry {rule}: ignored",
                )
            )
    return Conf(source.name, settings, version)


def _setting(name: str, number: int, line: str, notes: list[Note]) -> Setting | None:
    match = _ENTRY.match(line)
    if match is None:
        notes.append(
            Note(
                name,
                number,
                line.strip()[:40],
                'not KEY="value": PortSentry '
                "ignored it (1.2) or refused to start (2.x): not carried over",
            )
        )
        return None
    key, rest = match.groups()
    if key not in KEYS:
        upper = key.upper()
        why = (
            f"PortSentry reads {upper} in upper case only"
            if upper in KEYS
            else "not a PortSentry setting"
        )
        notes.append(Note(name, number, key, f"{why}: ignored, not carried over"))
        return None
    value = _quoted(rest)
    if value is None:
        notes.append(
            Note(
                name,
                number,
                key,
                "the value has no double quotes, so PortSentry "
                "skipped it (1.2) or refused to start (2.x): not carried over",
            )
        )
        return None
    return Setting(key, value, number)


def ports(setting: Setting, version: int, name: str, notes: list[Note]) -> list[str]:
    """A comma-separated port list as porttrap port strings ("23", "5900-5910")."""
    found: list[str] = []
    for item in setting.value.split(","):
        text = item.strip()
        if not text:
            continue
        parsed, problem = _port_item(text, version)
        if parsed is None:
            notes.append(Note(name, setting.line, setting.key, f"{text!r}: {problem}"))
        elif parsed not in found:
            found.append(parsed)
    if version == 1 and len(found) > 64 and setting.key.endswith("_PORTS"):
        notes.append(
            Note(
                name,
                setting.line,
                setting.key,
                f"{len(found)} ports: PortSentry "
                "1.2 watched the first 64 only; porttrap traps them all",
            )
        )
    return found


def _port_item(text: str, version: int) -> tuple[str | None, str]:
    """("23" or "5900-5910", "") when valid, else (None, why it is left out)."""
    low, dash, high = text.partition("-")
    if not _digits(low) or (dash and not _digits(high)):
        return None, "not a port: left out"
    if dash and version == 1:
        return None, "PortSentry 1.2 has no port ranges (it read the first port only): left out"
    first, last = int(low), int(high or low)
    if not 1 <= first <= last <= 65535:
        return None, "not a port or range within 1-65535: left out"
    return (f"{first}-{last}" if dash else str(first)), ""


@dataclass(frozen=True, slots=True)
class Modes:
    """TCP_MODE and UDP_MODE: a PortSentry mode name, or "" when the protocol is not watched;
    with the line each was set on (None: not set)."""

    tcp: str
    udp: str
    tcp_line: int | None = None
    udp_line: int | None = None


def parse_defaults(source: SourceFile, notes: list[Note]) -> Modes:
    """Debian's /etc/default/portsentry, a shell file: the last assignment of each mode wins."""
    found: dict[str, tuple[str, int | None]] = {}
    for number, line in source.lines():
        match = _ASSIGNMENT.match(line)
        if match is None or match.group(1) not in ("TCP_MODE", "UDP_MODE"):
            continue
        try:
            words = shlex.split(match.group(2), comments=True)
        except ValueError:
            words = [match.group(2).strip()]
        found[match.group(1)] = (words[0] if words else "", number)
    modes: dict[str, tuple[str, int | None]] = {}
    for key, proto in (("TCP_MODE", "tcp"), ("UDP_MODE", "udp")):
        mode, at = found.get(key, ("", None))
        valid = (proto + " s" + proto + " a" + proto).split()
        if mode and mode not in valid:
            notes.append(
                Note(
                    source.name,
                    at,
                    key,
                    f"{mode!r} is not one of {', '.join(valid)}"
                    f": Debian's init script did not start it: {proto.upper()} not "
                    "watched",
                )
            )
            mode = ""
        modes[proto] = (mode, at)
    return Modes(modes["tcp"][0], modes["udp"][0], modes["tcp"][1], modes["udp"][1])


def parse_ignore(source: SourceFile) -> list[Ignored]:
    """Each entry of an ignore file; entries after Debian's "dynamically fetched" marker are
    the host's own addresses when the file was built."""
    found, own = [], False
    for number, line in source.lines():
        text = line.split("#", 1)[0].strip()
        if _DYNAMIC in line:
            own = True
        if not text:
            continue
        entry = text.split()[0]
        found.append(_ignored(source.name, number, entry, own))
    return found


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


def _ignored(name: str, number: int, entry: str, own: bool) -> Ignored:
    address, slash, bits = entry.partition("/")
    try:
        base = ipaddress.ip_address(address)
    except ValueError:
        return Ignored(None, name, number, entry, "not an address: not carried over")
    if slash and (not _digits(bits) or int(bits) > base.max_prefixlen):
        return Ignored(
            None,
            name,
            number,
            entry,
            f"/{bits} is not a netmask for "
            f"{address}: PortSentry ignored the entry: not carried over",
        )
    if own:
        return Ignored(
            None,
            name,
            number,
            entry,
            "one of this host's addresses when Debian "
            "built the file; porttrap never bans the host's own addresses, followed "
            "live: not carried over",
        )
    return _ignored_network(name, number, entry, base, int(bits) if slash else None)


def _ignored_network(
    name: str,
    number: int,
    entry: str,
    base: ipaddress.IPv4Address | ipaddress.IPv6Address,
    bits: int | None,
) -> Ignored:
    if base.is_unspecified:
        return Ignored(None, name, number, entry, f"{base} is never a packet's source: not needed")
    if base.is_loopback:
        return Ignored(None, name, number, entry, "loopback: porttrap never bans it anyway")
    if bits == 0 and base.version == 4:
        return Ignored(
            ipaddress.ip_network(base),
            name,
            number,
            entry,
            "PortSentry computed the /0 mask with a 32-bit shift, which x86 ignores: it "
            f"ignored {base} alone, and so does porttrap",
        )
    network = ipaddress.ip_network(
        f"{base}/{base.max_prefixlen if bits is None else bits}", strict=False
    )
    if network.network_address != base:
        return Ignored(
            network,
            name,
            number,
            entry,
            f"host bits set: PortSentry compared "
            f"the network part only, so it ignored the network {network}",
        )
    return Ignored(network, name, number, entry)
