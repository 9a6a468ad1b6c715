"""port_trap (github.com/simon-project/port_trap) to porttrap: `list_of_ports.txt`,
`for_permanent_ban.txt` and `whitelist.txt` as a porttrap config.

How port_trap behaves, from its scripts, and what porttrap does with it:
- start_traps.sh starts one `port_trap.py PORT TIMEOUT [6]` per word of list_of_ports.txt (lines
  starting with # skipped): `[IP:]PORT#TIMEOUT[#6]`, `#6` for an IPv6 socket (IPV6_V6ONLY), the
  address split from the port at the last colon. A word port_trap.py refused (a timeout that is
  not 1-5 digits, a port that is not a number) started no trap: such words are left out here too.
  porttrap traps a port on both IP families unless an address is given.
- Every connection bans its source (trigger 1) for TIMEOUT x n^2, n counting every ban of that
  address ever recorded (escalation quadratic, no cap, nothing forgotten); ban.sh, run from cron,
  makes an address with `for_permanent_ban.txt` bans permanent.
- whitelist.txt: regular expressions matched with re.match (see `whitelist`).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from porttrap.config.fields import MAX_COUNT, NESTED_REPEAT, nested_repeat
from porttrap.config.legacy import reading, tomlout, whitelist
from porttrap.config.legacy.notes import UNVERIFIED_NOTE, Conversion, Note, SourceFile, summary
from porttrap.model import IPAddress, IPNetwork
from porttrap.units import MAX_BAN, brief, format_duration

PORTS_FILE = "list_of_ports.txt"
PERMANENT_FILE = "for_permanent_ban.txt"
WHITELIST_FILE = "whitelist.txt"
# Bans count forever in port_trap: further back than the Unix epoch, so every ban counts.
FORGET_NEVER = "5200w"
# With no permanent ban, port_trap's bans grow without end; porttrap needs a cap.
MAX_TIME_NEVER_PERMANENT = "520w"
_ADDRESS_PORT = re.compile(r"[0-9:.a-zA-Z]{1,38}")  # port_trap.py's check of its first argument
_TIMEOUT = re.compile(r"[0-9]{1,5}")  # ... and of its second
_BASH_NUMBER = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|[0-9]+)")
_BASH_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Why port_trap.py set no trap for a word that is not one: said with line numbers, never its text.
_NOT_A_WORD = (
    "not [IP:]PORT#TIMEOUT[#6] with a timeout of 1 to 5 digits: port_trap.py refused it and set "
    "no trap: not carried over"
)
_NOT_A_PORT = (
    "the port is not a number: port_trap.py stopped at it and set no trap: not carried over"
)
_NOT_AN_ADDRESS = "not an IP address porttrap can trap on: not carried over"
_UNREAD = (_NOT_A_WORD, _NOT_A_PORT, _NOT_AN_ADDRESS)
_NOT_A_PATTERN = (
    "not a valid regular expression; port_trap skipped it too (logging an error each time): "
    "not carried over"
)


@dataclass(frozen=True, slots=True)
class PortTrapFiles:
    """port_trap's configuration files as read; None for a file that is not there."""

    ports: SourceFile
    permanent: SourceFile | None
    whitelist: SourceFile | None


@dataclass(slots=True)
class _Trap:
    """One porttrap trap from one or two port_trap words (IPv4 and IPv6)."""

    port: int
    address: IPAddress | None
    timeout: int
    families: set[int]
    sources: list[tuple[int, str]] = field(default_factory=list)  # (line, word)

    def where(self, index: int = 0) -> str:
        line, word = self.sources[index]
        return f"line {line} ({word})"


def read(directory: Path) -> PortTrapFiles:
    """port_trap's files in `directory` (its install directory, e.g. /opt/port_trap), and
    only those (see `reading`). Raises FileNotFoundError when list_of_ports.txt is missing:
    nothing to import; PorttrapError for a file refused."""
    ports = directory / PORTS_FILE
    if not ports.exists():
        raise FileNotFoundError(
            f"{ports} not found: give port_trap's directory (the one holding {PORTS_FILE})"
        )
    return PortTrapFiles(
        ports=reading.read_inside(ports, directory),
        permanent=_source(directory / PERMANENT_FILE, directory),
        whitelist=_source(directory / WHITELIST_FILE, directory),
    )


def _source(path: Path, directory: Path) -> SourceFile | None:
    if not path.exists():
        return None
    return reading.read_inside(path, directory)


def convert(files: PortTrapFiles) -> Conversion:
    """The porttrap config that does what port_trap did, and notes on what differs."""
    notes: list[Note] = []
    traps = _traps(files.ports, notes)
    permanent = _permanent(files.permanent, files.ports.name, notes)
    allowed = _whitelist(files.whitelist, notes) if files.whitelist else _Allowed()
    lines = _header(files)
    lines += _traps_toml(traps, files.ports)
    lines += _ban_toml(traps, permanent, files)
    lines += allowed.toml()
    notes.append(
        Note(
            files.ports.name,
            None,
            "",
            "port_trap logged to syslog as port_trap.py; "
            "porttrap logs to stderr, which journald keeps (journalctl -u porttrap)",
        )
    )
    order = [files.ports.name, PERMANENT_FILE, WHITELIST_FILE]
    notes.sort(key=lambda n: (_rank(n.file, order), n.order()))
    return Conversion("\n".join(lines) + "\n", tuple(notes))


def _rank(name: str, order: list[str]) -> int:
    return next((i for i, end in enumerate(order) if name.endswith(end)), len(order))


def _header(files: PortTrapFiles) -> list[str]:
    lines = tomlout.comment(
        "porttrap configuration imported from port_trap by 'porttrap import port-trap'. Each "
        "value says where it came from; 'porttrap check-config -c FILE' checks it. Read:"
    )
    read = [files.ports, files.permanent, files.whitelist]
    return lines + [f"#   {source.name}" for source in read if source is not None]


# -- list_of_ports.txt -------------------------------------------------------------------------


def _traps(source: SourceFile, notes: list[Note]) -> list[_Trap]:
    traps: dict[tuple[int, IPAddress | None], _Trap] = {}
    unread: dict[str, list[int]] = {}
    for number, line in source.lines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        for word in words:
            if word.startswith("#"):
                break  # the rest of the line is a comment (port_trap tried, and failed, to
                # start a trap for each of these words)
            note = _add_word(traps, word, number)
            if note in _UNREAD:
                unread.setdefault(note, []).append(number)
            elif note:
                notes.append(Note(source.name, number, word, note))
    notes += [summary(source.name, "", lines, why) for why, lines in unread.items()]
    found = _drop_clashes(list(traps.values()), source.name, notes)
    for trap in found:
        _family_note(trap, source.name, notes)
    return found


def _add_word(traps: dict[tuple[int, IPAddress | None], _Trap], word: str, line: int) -> str:
    """Add one `[IP:]PORT#TIMEOUT[#6]` word; returns a note ("" when there is nothing to say)."""
    parsed = _word(word)
    if isinstance(parsed, str):
        return parsed
    port, address, timeout, family = parsed
    trap = traps.get((port, address))
    if trap is None:
        traps[port, address] = _Trap(port, address, timeout, {family}, [(line, word)])
        if timeout == 0:
            return "timeout 0 (port_trap unbanned at ban.sh's next run): carried over as 1s"
        return ""
    if family in trap.families:
        return (
            f"port {port} is already trapped by {trap.where()}: left out (port_trap's second "
            "trap could not bind it)"
        )
    trap.families.add(family)
    trap.sources.append((line, word))
    if timeout != trap.timeout:
        return (
            f"IPv{family} timeout {_duration(timeout)} differs from {trap.where()}; porttrap "
            f"has one trap for both families: {_duration(trap.timeout)} kept"
        )
    return ""


def _word(word: str) -> tuple[int, IPAddress | None, int, int] | str:
    """(port, address, timeout, family) as port_trap.py read the word, or a note why it set
    no trap."""
    fields = word.split("#")
    spot, timeout_text = fields[0], fields[1] if len(fields) > 1 else ""
    family = 6 if len(fields) > 2 and fields[2] == "6" else 4
    if not _ADDRESS_PORT.fullmatch(spot) or not _TIMEOUT.fullmatch(timeout_text):
        return _NOT_A_WORD
    parsed = _spot(spot, family)
    if isinstance(parsed, str):
        return parsed
    return parsed[0], parsed[1], int(timeout_text), family


def _spot(spot: str, family: int) -> tuple[int, IPAddress | None] | str:
    """(port, address) from `[IP:]PORT` as port_trap.py read it, or a note why it set no trap."""
    address_text, _, port_text = spot.rpartition(":")
    if not port_text.isdigit() or len(port_text) > 5:
        return _NOT_A_PORT
    port = int(port_text)
    if not 1 <= port <= 65535:
        return f"port {port} is not a port porttrap can trap (1-65535): not carried over"
    if not address_text:
        return port, None
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        return _NOT_AN_ADDRESS
    if address.version != family:
        return (
            f"an IPv{address.version} address on an IPv{family} socket: port_trap.py could not "
            "bind it and set no trap: not carried over"
        )
    return port, address


def _drop_clashes(traps: list[_Trap], name: str, notes: list[Note]) -> list[_Trap]:
    """porttrap cannot trap a port on every address and on one address too; the trap on every
    address already covers the other's address."""
    everywhere = {t.port: t for t in traps if t.address is None}
    kept = []
    for trap in traps:
        wide = everywhere.get(trap.port)
        if trap.address is None or wide is None:
            kept.append(trap)
            continue
        line, word = trap.sources[0]
        notes.append(
            Note(
                name,
                line,
                word,
                f"{wide.where()} traps port {trap.port} on every address, which covers "
                f"{trap.address}: left out (ban time {max(wide.timeout, 1)}s applies)",
            )
        )
    return kept


def _family_note(trap: _Trap, name: str, notes: list[Note]) -> None:
    if trap.address is not None or len(trap.families) == 2:
        return
    (family,) = trap.families
    other = 6 if family == 4 else 4
    line, word = trap.sources[0]
    notes.append(
        Note(
            name,
            line,
            word,
            f"listed for IPv{family} only; porttrap traps port {trap.port} on IPv{other} too "
            "(give [[traps.port]] an address to limit it to one)",
        )
    )


def _traps_toml(traps: list[_Trap], source: SourceFile) -> list[str]:
    lines = [
        "",
        "[traps]",
        "# port_trap's traps were TCP sockets that accept a connection and close it.",
        'mode = "connect"',
        "tcp = []  # every trap is a [[traps.port]] below, with its own ban time",
        "udp = []  # port_trap had no UDP traps",
    ]
    for trap in sorted(traps, key=lambda t: (t.port, str(t.address or ""))):
        shown = Path(source.name).name
        where = [tomlout.quiet(f"# {shown}:{n}: {word}") for n, word in trap.sources]
        lines += ["", *where, "[[traps.port]]"]
        lines += [f'port = "{trap.port}"', 'proto = "tcp"']
        if trap.address is not None:
            lines.append(f'address = "{trap.address}"')
        lines.append(f'ban = "{_duration(trap.timeout)}"')
    return lines


def _duration(seconds: int) -> str:
    return format_duration(max(seconds, 1))


# -- for_permanent_ban.txt and [ban] ---------------------------------------------------------


def _permanent(source: SourceFile | None, ports: str, notes: list[Note]) -> int:
    """permanent_after as ban.sh applied it: `[[ count -ge FIRST_LINE ]]` in bash."""
    if source is None:
        name = str(Path(ports).with_name(PERMANENT_FILE))
        notes.append(
            Note(
                name,
                None,
                "",
                "missing: ban.sh compared ban counts with an empty "
                "number, which bash reads as 0, so every banned address became "
                f"permanent at its next run: permanent_after = 1 ({UNVERIFIED_NOTE})",
            )
        )
        return 1
    first = source.text.splitlines()[0].strip() if source.text.strip() else ""
    value, why = _bash_number(first)
    shown = first if _BASH_NUMBER.fullmatch(first) else ""  # a word is never shown
    if value is None:
        notes.append(
            Note(
                source.name,
                1,
                shown,
                f"{why}: ban.sh's comparison always failed, "
                "so no ban became permanent: permanent_after = 0 (never)",
            )
        )
        return 0
    if value < 2:
        if why or value < 1:
            notes.append(
                Note(
                    source.name,
                    1,
                    shown,
                    f"{why or f'{value}'}: every ban count is "
                    "at least that, so every banned address became permanent at "
                    f"ban.sh's next run: permanent_after = 1 ({UNVERIFIED_NOTE})",
                )
            )
        return 1
    if value > MAX_COUNT:
        notes.append(
            Note(
                source.name,
                1,
                brief(first),
                f"no address is banned more than {MAX_COUNT} times, so no ban became "
                "permanent: permanent_after = 0 (never)",
            )
        )
        return 0
    return value


def _bash_number(text: str) -> tuple[int | None, str]:
    """`text` as bash's [[ -ge ]] reads it: (value, "") for a number, (0, why) for an empty
    string or a variable name (both 0), (None, why) for what bash refuses."""
    if not text:
        return 0, "empty, which bash reads as 0"
    if _BASH_NAME.fullmatch(text):
        return 0, "a word, which bash reads as an unset variable, 0"
    match = _BASH_NUMBER.fullmatch(text)
    if match is None:
        return None, "not a number bash can compare"
    sign, digits = match.groups()
    try:
        if digits[:2].lower() == "0x":
            value = int(digits, 16)
        else:
            value = int(digits, 8 if len(digits) > 1 and digits.startswith("0") else 10)
    except ValueError:
        return None, f"{text} is not a number bash can compare (a leading 0 means octal)"
    return (-value if sign == "-" else value), ""


def _ban_toml(traps: list[_Trap], permanent: int, files: PortTrapFiles) -> list[str]:
    timeouts = [max(t.timeout, 1) for t in traps] or [3600]
    time = Counter(timeouts).most_common(1)[0][0]
    lines = ["", "[ban]"]
    lines += tomlout.comment(
        "port_trap banned at the first connection, for the trap's TIMEOUT x n^2 (n: the "
        "address's ban count), counting every ban it ever recorded."
    )
    lines.append(f'time = "{_duration(time)}"  # the most common TIMEOUT; traps set their own')
    lines.append('escalation = "quadratic"')
    lines += _max_time(max(timeouts), permanent)
    source = files.permanent.name if files.permanent else PERMANENT_FILE
    lines.append(f"permanent_after = {permanent}  # {source}")
    lines.append("trigger = 1  # every connection to a trap bans")
    lines.append(
        f'forget_after = "{FORGET_NEVER}"  # port_trap never forgot a ban: further back than 1970'
    )
    return lines


def _max_time(longest: int, permanent: int) -> list[str]:
    """port_trap had no cap: the longest temporary ban is the last one before the permanent
    one, TIMEOUT x (permanent_after - 1)^2, so that is the cap that changes nothing."""
    if permanent == 0:
        return [
            f'max_time = "{MAX_TIME_NEVER_PERMANENT}"  # port_trap had no cap and no '
            "permanent ban; porttrap needs a cap: 10 years"
        ]
    last = longest * max(permanent - 1, 1) ** 2
    if last > MAX_BAN.seconds:
        return [
            f'max_time = "{_duration(int(MAX_BAN.seconds))}"  # no cap in port_trap: its '
            f"longest temporary ban, {_duration(last)}, is longer than porttrap's longest"
        ]
    return [f'max_time = "{_duration(last)}"  # no cap in port_trap: its longest temporary ban']


# -- whitelist.txt ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Allowed:
    addresses: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)

    def toml(self) -> list[str]:
        if not self.addresses and not self.patterns:
            return []
        lines = ["", "[allow]"]
        if self.addresses:
            lines += ["addresses = [", *self.addresses, "]"]
        if self.patterns:
            lines += tomlout.comment(
                "Kept as regular expressions (matched against the whole address text): "
                "'(?:P).*' matches what port_trap's re.match(P) matched."
            )
            lines += ["patterns = [", *self.patterns, "]"]
        return lines


# Pattern tests for a whole whitelist.txt (about 10 s): past it, entries stay patterns, so that
# a huge or hostile file cannot keep the import busy for half an hour (4 us a test, 2,600 tests
# for a plain address).
IMPORT_BUDGET = 2_500_000
_BUDGET_SPENT = (
    "kept as patterns ([allow] patterns, as '(?:P).*'), unconverted: the import's pattern "
    "tests were spent on earlier entries"
)


def _whitelist(source: SourceFile, notes: list[Note]) -> _Allowed:
    allowed = _Allowed()
    invalid: list[int] = []
    budget = [IMPORT_BUDGET]
    spent: list[int] = []
    for number, line in source.lines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            warned = whitelist.check(entry)
        except ValueError:
            invalid.append(number)
            continue
        if nested_repeat(entry):  # testing it would hang the import, and matching it the daemon
            notes.append(Note(source.name, number, entry, f"{NESTED_REPEAT}: not carried over"))
            continue
        if budget[0] <= 0:
            spent.append(number)
            allowed.patterns += [f"    {tomlout.literal(whitelist.fullmatch_form(entry))},"]
            continue
        _entry(allowed, entry, warned, Note(source.name, number, entry, ""), notes, budget=budget)
    if spent:
        notes.append(summary(source.name, "", spent, _BUDGET_SPENT))
    if invalid:
        notes.append(summary(source.name, "", invalid, _NOT_A_PATTERN))
    return allowed


def _entry(
    allowed: _Allowed,
    entry: str,
    warned: list[str],
    where: Note,
    notes: list[Note],
    *,
    budget: list[int],
) -> None:
    """One valid pattern: networks or the pattern kept (its text goes into the config).
    `budget` holds the pattern tests left for the file; this entry's are taken from it."""

    def note(message: str) -> None:  # one note about this entry
        notes.append(Note(where.file, where.line, where.key, message))

    for warning in warned:
        note(f"Python warns about it: {warning}")
    result = _convert(entry, budget)
    label = "    # " + tomlout.quiet(f"{where.file.rsplit('/', 1)[-1]}:{where.line}: {entry}")
    if result.pattern is not None:
        allowed.patterns += [label, f"    {tomlout.literal(result.pattern)},"]
        note(
            f"kept as the pattern {result.pattern} ([allow] patterns): no exact list of "
            f"networks, since {result.why}; the kernel's first-packet block cannot use it"
        )
        return
    if not result.networks:
        note(
            "matches no address port_trap could see (IPv6 text is lower case, IPv4 has "
            "no leading zeros): not carried over"
        )
        return
    allowed.addresses += [label, *(f'    "{n}",' for n in result.networks)]
    _surprise(entry, result, note)


def _convert(entry: str, budget: list[int]) -> whitelist.Converted:
    result = whitelist.convert(entry, min(whitelist.BUDGET, budget[0]))
    budget[0] -= result.tests
    return result


def _surprise(entry: str, result: whitelist.Converted, note: Callable[[str], None]) -> None:
    """Say so when port_trap's matching let through more than the entry seems to name: a plain
    address that is not alone, several networks, IPv6 texts below 2000:: left out."""
    shown = ", ".join(str(n) for n in result.networks)
    try:
        meant: IPNetwork | None = ipaddress.ip_network(entry)
    except ValueError:
        meant = None
    said = []
    if meant is not None and result.networks != (meant,):
        said.append(
            f"port_trap matched the start of the address text only, and '.' matches any "
            f"character, so it allowed {shown}; carried over exactly: keep just {meant} if "
            "that was meant"
        )
    elif len(result.networks) > 1:
        said.append(
            f"port_trap's re.match allowed {shown} (anchored at the start only): "
            "carried over exactly"
        )
    if result.below_2000:
        said.append(
            ("carried over as " + shown + "; it " if not said else "it ")
            + "also matched IPv6 texts below 2000:: ('.' matches ':', as in 1:2:3::4 for "
            "'1.2.3.*'): loopback, IPv4-mapped and reserved space, where no trap hit comes "
            "from: left out"
        )
    if said:
        note("; ".join(said))
