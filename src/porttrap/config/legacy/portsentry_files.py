"""Reading PortSentry's files as PortSentry itself reads them.

- portsentry.conf: `KEY="value"` lines (spaces around `=` allowed), the value ending at the next
  double quote (no escapes, no variables: `$TARGET$`, `$PORT$`, `$MODE$` are PortSentry's own
  macros), `#` at the start of a line for comments. PortSentry 1.2 takes the first line of a
  key and skips a value without quotes; 2.x takes the last and allows port ranges ("1-1024").
  A value in typographic quotes (`TCP_PORTS=“22,23″`, as a web page shows a config) is read as
  if its quotes were plain, with a note: PortSentry did not read it, but its author meant it.
- /etc/default/portsentry (Debian's init script sources it): TCP_MODE and UDP_MODE, shell
  assignments; an empty or missing one means that protocol is not watched.
- the ignore file(s): one `address[/bits]` per line, `#` comments.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass

from porttrap.config.legacy.notes import Note, SourceFile, summary
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
# Typographic double and single quotes, guillemets and primes: what a web page or a word
# processor shows for `"` (the PortSentry wiki page in the seeds shows TCP_PORTS=“22,23″).
# Double: U+201C-201F, the double primes U+2033, 2036, 301D, 301E, fullwidth ", U+00AB and 00BB;
# single: U+2018-201B, the prime U+2032, U+2039 and 203A. A value opened by one kind ends at the
# next quote of that kind (or a plain "), so that an apostrophe (U+2019) inside “…” stays.
_DOUBLE = "\u201c\u201d\u201e\u201f\u2033\u2036\u301d\u301e\uff02\u00ab\u00bb"
_SINGLE = "\u2018\u2019\u201a\u201b\u2032\u2039\u203a"
TYPOGRAPHIC = _DOUBLE + _SINGLE
_END = {**dict.fromkeys(_DOUBLE, re.compile(f'["{_DOUBLE}]')),
        **dict.fromkeys(_SINGLE, re.compile(f'["{_SINGLE}]'))}  # fmt: skip
_PORT = re.compile(r"[0-9]{1,5}")
_NETMASK = re.compile(r"[0-9]{1,3}")
# Why a line or an item was not read: said with line numbers and counts, never its text.
NOT_AN_ENTRY = (
    'not KEY="value": PortSentry ignored it (1.2) or refused to start (2.x): not carried over'
)
NOT_A_SETTING = "not a PortSentry setting: ignored, not carried over"
IN_TYPOGRAPHIC_QUOTES = (
    "the value is in typographic quotes (“…” and the like, as a web page shows a config), which "
    "PortSentry does not read as quotes: it skipped the setting (1.2) or refused to start "
    '(2.x); read here as plain double quotes, as meant (retype them as " where PortSentry '
    "still runs)"
)
IN_TYPOGRAPHIC_SHELL = (
    "in typographic quotes (“…”), which the shell keeps as part of the value, so Debian's init "
    "script did not start this mode; read here as plain quotes, as meant"
)
NOT_AN_ADDRESS = "not an address: not carried over"


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    value: str
    line: int
    typographic: bool = False  # its quotes were typographic: read as plain ones


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
        if value is not None and "-" in value[0]:
            return 2
    return 1


def _quoted(rest: str) -> tuple[str, bool] | None:
    """The value after `KEY=`, from the first double quote to the next (or the end), and
    whether its quotes were typographic (then it ends at any quote, and spaces around it go)."""
    if rest.startswith('"'):
        value, typographic = rest[1:].split('"', 1)[0], False
    elif rest[:1] and rest[0] in TYPOGRAPHIC:
        value, typographic = _END[rest[0]].split(rest[1:], maxsplit=1)[0].strip(), True
    else:
        return None
    return "".join(c for c in value if c.isprintable()), typographic


def parse_conf(source: SourceFile, notes: list[Note]) -> Conf:
    version = version_of(source)
    settings: dict[str, Setting] = {}
    by_reason: dict[str, list[int]] = {}
    for number, line in source.lines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        setting = _setting(source.name, number, line, notes)
        if isinstance(setting, str):
            by_reason.setdefault(setting, []).append(number)
            continue
        if setting is None:
            continue
        if setting.typographic:
            by_reason.setdefault(IN_TYPOGRAPHIC_QUOTES, []).append(number)
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
    notes += [summary(source.name, "", lines, why) for why, lines in by_reason.items()]
    return Conf(source.name, settings, version)


def _setting(name: str, number: int, line: str, notes: list[Note]) -> Setting | str | None:
    """The setting on a line; or why it was not read, to be summarised (`str`: its text is not
    a setting's, and is never shown); or None when a note about it was added."""
    match = _ENTRY.match(line)
    if match is None:
        return NOT_AN_ENTRY
    key, rest = match.groups()
    if key not in KEYS:
        if key.upper() not in KEYS:
            return NOT_A_SETTING
        why = f"PortSentry reads {key.upper()} in upper case only"
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
    return Setting(key, value[0], number, typographic=value[1])


def ports(setting: Setting, version: int, name: str, notes: list[Note]) -> list[str]:
    """A comma-separated port list as porttrap port strings ("23", "5900-5910")."""
    found: list[str] = []
    unread: list[int] = []
    for position, item in enumerate(setting.value.split(","), start=1):
        text = item.strip()
        if not text:
            continue
        parsed, problem = _port_item(text, version)
        if parsed is None and not problem:
            unread.append(position)
        elif parsed is None:
            notes.append(Note(name, setting.line, setting.key, f"{text}: {problem}"))
        elif parsed not in found:
            found.append(parsed)
    if unread:
        what = "not a port or a range of ports: left out"
        notes.append(summary(name, setting.key, unread, what, unit="item", at=setting.line))
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
    """("23" or "5900-5910", "") when valid; (None, why it is left out) for numbers that
    are no port; (None, "") for text that is not a port at all (never shown)."""
    low, dash, high = text.partition("-")
    if not _PORT.fullmatch(low) or (dash and not _PORT.fullmatch(high)):
        return None, ""
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
        word = words[0] if words else ""
        if word.strip(TYPOGRAPHIC) != word:
            word = word.strip(TYPOGRAPHIC)
            notes.append(Note(source.name, number, match.group(1), IN_TYPOGRAPHIC_SHELL))
        found[match.group(1)] = (word, number)
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
                    f"not one of {', '.join(valid)}"
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


def _ignored(name: str, number: int, entry: str, own: bool) -> Ignored:
    address, slash, bits = entry.partition("/")
    try:
        base = ipaddress.ip_address(address)
    except ValueError:
        base = None
    if base is None or (isinstance(base, ipaddress.IPv6Address) and base.scope_id):
        return Ignored(None, name, number, "", NOT_AN_ADDRESS)  # its text is never shown
    if slash and (not _NETMASK.fullmatch(bits) or int(bits) > base.max_prefixlen):
        return Ignored(
            None,
            name,
            number,
            str(base),
            f"the netmask after / is not a number from 0 to {base.max_prefixlen}: PortSentry "
            "ignored the entry: not carried over",
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
