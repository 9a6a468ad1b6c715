"""PortSentry (1.2, as Debian ships it, and 2.x) to porttrap.

What PortSentry did, from its code, and what the import makes of it:
- Modes (Debian's /etc/default/portsentry, TCP_MODE and UDP_MODE): tcp/udp bind the ports of
  TCP_PORTS/UDP_PORTS (porttrap's "connect"), stcp/sudp watch them with a raw socket ("stealth"),
  atcp/audp watch every port below ADVANCED_PORTS_x that nothing serves, less ADVANCED_EXCLUDE_x
  ("advanced"). An empty mode watches nothing of that protocol.
- BLOCK_x: 0 logs only ([ban] respond "log"), 1 blocks ("ban": porttrap's firewall replaces
  KILL_ROUTE; KILL_HOSTS_DENY and KILL_RUN_CMD run too), 2 runs KILL_RUN_CMD only ("command").
- SCAN_TRIGGER: its state engine reacts at the N-th hit of a host (0 and 1: the first), in 1.2
  and 2.x alike (CheckStateEngine), whatever the port; the README's "N grace hits" is off by one.
- A block is never lifted: routes and rules stay until reboot, hosts.deny lines for good. So every
  porttrap ban is permanent (`permanent_after = 1`); deleting that line gives porttrap's escalation.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from porttrap.config.fields import MAX_COUNT
from porttrap.config.legacy import reading, tomlout
from porttrap.config.legacy.notes import UNVERIFIED_NOTE, Conversion, Note, SourceFile, summary
from porttrap.config.legacy.portsentry_actions import Context, number
from porttrap.config.legacy.portsentry_files import (
    NOT_AN_ADDRESS,
    Conf,
    Ignored,
    Modes,
    parse_conf,
    parse_defaults,
    parse_ignore,
    ports,
)

DEFAULT_DIR = Path("/etc/portsentry")
DEFAULT_DEFAULTS = Path("/etc/default/portsentry")
CONF_FILE = "portsentry.conf"
STATIC_IGNORE = "portsentry.ignore.static"  # Debian merges it into IGNORE_FILE at each start
BANNER_BYTES = 1024
_MODE = {"": "", "tcp": "connect", "udp": "connect", "stcp": "stealth", "sudp": "stealth",
         "atcp": "advanced", "audp": "advanced"}  # fmt: skip
_RESPOND = {0: "log", 1: "ban", 2: "command"}


@dataclass(frozen=True, slots=True)
class PortSentryFiles:
    """PortSentry's files as read. `defaults` None: no mode file was read, and
    `defaults_note` says why. `problems`: files the config names that were not read."""

    conf: SourceFile
    defaults: SourceFile | None
    defaults_name: str
    ignore: tuple[SourceFile, ...] = ()
    problems: tuple[Note, ...] = ()
    defaults_note: str = "not found"


def read(
    directory: Path = DEFAULT_DIR, defaults: Path | None = None, ignore: Path | None = None
) -> PortSentryFiles:
    """portsentry.conf and the ignore files in `directory`, and the mode file `defaults`.

    Only files inside `directory` are read, and those named here: `defaults` (None: the host's
    /etc/default/portsentry when `directory` is /etc/portsentry, the host's own setup, else
    none) and `ignore` (read in place of IGNORE_FILE). An IGNORE_FILE elsewhere is not read,
    and a note names it. Raises FileNotFoundError when there is no portsentry.conf, and
    PorttrapError for a file refused (see `reading`)."""
    conf_path = directory / CONF_FILE
    if not conf_path.exists():
        raise FileNotFoundError(
            f"{conf_path} not found: give PortSentry's configuration directory "
            f"(default {DEFAULT_DIR})"
        )
    conf = reading.read_inside(conf_path, directory)
    problems: list[Note] = []
    ignore_files = _ignore_files(directory, parse_conf(conf, []), ignore, problems)
    mode_file, why = _defaults(directory, defaults)
    return PortSentryFiles(
        conf=conf,
        defaults=reading.read(mode_file) if mode_file and mode_file.exists() else None,
        defaults_name=str(mode_file or DEFAULT_DEFAULTS),
        ignore=tuple(_read(path, directory, given=path == ignore) for path in ignore_files),
        problems=tuple(problems),
        defaults_note=why,
    )


def _read(path: Path, directory: Path, given: bool) -> SourceFile:
    return reading.read(path) if given else reading.read_inside(path, directory)


def _defaults(directory: Path, defaults: Path | None) -> tuple[Path | None, str]:
    """The mode file to read, and what to say when it is not there."""
    if defaults is not None:
        return defaults, "not found"
    if directory.resolve() == DEFAULT_DIR.resolve():
        return DEFAULT_DEFAULTS, "not found"
    return None, f"not read: it is this host's, and {directory} may be another setup's"


def _ignore_files(
    directory: Path, conf: Conf, given: Path | None, problems: list[Note]
) -> list[Path]:
    """The ignore files to read: `given` or IGNORE_FILE, and Debian's static file when there
    is one. IGNORE_FILE in PortSentry's default directory is read from `directory`, so that a
    copied directory imports as itself; elsewhere outside `directory`, it is not read."""
    static = directory / STATIC_IGNORE
    paths = [static] if static.exists() else []
    setting = conf.get("IGNORE_FILE")
    if given is not None:
        return [given, *paths]
    if setting is None or not setting.value:
        return paths
    named = _in_directory(Path(posixpath.normpath(setting.value)), directory)
    if not reading.inside(named, directory):
        target = named.resolve()
        shown = "" if str(target) == setting.value else f" (that is {target})"
        problems.append(
            Note(
                conf.name,
                setting.line,
                "IGNORE_FILE",
                f"{setting.value}{shown} is outside {directory}: not read (an import reads "
                "only the files in the directory it is given); to carry over its entries, "
                f"give it: --ignore {target}",
            )
        )
    elif named.exists():
        paths.insert(0, named)
    else:
        instead = "; Debian builds it at start from portsentry.ignore.static, read instead"
        problems.append(
            Note(
                conf.name,
                setting.line,
                "IGNORE_FILE",
                f"{setting.value} not found"
                + (instead if paths else ": no ignore entries to carry over"),
            )
        )
    return list({p.resolve(): p for p in paths}.values())


def _in_directory(named: Path, directory: Path) -> Path:
    """IGNORE_FILE's path (`..` taken lexically), PortSentry's default
    directory read as `directory` (a relative path is taken from `directory` too)."""
    if named.is_relative_to(DEFAULT_DIR):
        return directory / named.relative_to(DEFAULT_DIR)
    return named if named.is_absolute() else directory / named


def convert(files: PortSentryFiles) -> Conversion:
    """The porttrap config that does what PortSentry did, and notes on what differs."""
    notes = list(files.problems)
    conf = parse_conf(files.conf, notes)
    modes = _modes(files, conf, notes)
    work = _Import(conf=conf, notes=notes, modes=modes)
    lines = work.header(files) + work.traps() + work.ban() + work.kernel()
    watched = {work.respond(p) for p in ("tcp", "udp") if work.mode(p)}
    lines += work.allow(files.ignore) + work.actions(watched) + work.log() + work.leftovers()
    ordered = sorted(notes, key=lambda n: (_file_order(n.file, files), n.order()))
    return Conversion("\n".join(lines) + "\n", tuple(ordered))


def _file_order(name: str, files: PortSentryFiles) -> int:
    order = [files.defaults_name, files.conf.name, *(f.name for f in files.ignore)]
    return order.index(name) if name in order else len(order)


def _modes(files: PortSentryFiles, conf: Conf, notes: list[Note]) -> Modes:
    if files.defaults is not None:
        return parse_defaults(files.defaults, notes)
    if conf.version == 2:
        notes.append(
            Note(
                files.defaults_name,
                None,
                "",
                f"{files.defaults_note}: PortSentry 2.x's default "
                "mode assumed, stealth for TCP_PORTS and UDP_PORTS (--stealth); give "
                "the modes with --defaults FILE (TCP_MODE=..., UDP_MODE=...)",
            )
        )
        return Modes("stcp", "sudp")
    notes.append(
        Note(
            files.defaults_name,
            None,
            "",
            f'{files.defaults_note}: TCP_MODE="tcp" and '
            'UDP_MODE="udp" assumed (Debian\'s first install); give the modes with '
            "--defaults FILE",
        )
    )
    return Modes("tcp", "udp")


@dataclass
class _Import(Context):
    """One translation: the parsed files, the notes, and what each section decided."""

    modes: Modes = field(default_factory=lambda: Modes("", ""))
    responds: dict[str, str] = field(default_factory=dict)

    def mode(self, proto: str) -> str:
        """The porttrap mode of `proto`, "" when PortSentry did not watch it."""
        return _MODE[self.modes.tcp if proto == "tcp" else self.modes.udp]

    def respond(self, proto: str) -> str:
        """What a hit of `proto` does ([ban] respond), from BLOCK_TCP / BLOCK_UDP."""
        if proto not in self.responds:
            self.responds[proto] = self._respond(proto)
        return self.responds[proto]

    def _respond(self, proto: str) -> str:
        key = f"BLOCK_{proto.upper()}"
        found = self.setting(key)
        if found is None:
            if self.mode(proto):
                self.note(key, 'not set: PortSentry\'s default, 0 (log only): respond "log"')
            return "log"
        value = number(found.value)
        if value not in _RESPOND:
            self.note(
                key,
                'not 0, 1 or 2: PortSentry treated it as 0 (log only): respond "log"',
                found,
            )
            return "log"
        return _RESPOND[value]

    def header(self, files: PortSentryFiles) -> list[str]:
        version = "2.x" if self.conf.version == 2 else "1.2"
        lines = tomlout.comment(
            f"porttrap configuration imported from PortSentry {version} by 'porttrap import "
            "portsentry'. Each value says where it came from; 'porttrap check-config -c FILE' "
            "checks it. Read:"
        )
        read = [files.conf, *([files.defaults] if files.defaults else []), *files.ignore]
        return lines + [f"#   {source.name}" for source in read]

    # -- [traps] -------------------------------------------------------------------------

    def traps(self) -> list[str]:
        lines = ["", "[traps]"]
        if self.conf.version == 1 and (self.mode("tcp") or self.mode("udp")):
            self.note("", "PortSentry 1.2 watched IPv4 only; porttrap traps IPv4 and IPv6 alike")
        tcp, udp = self.mode("tcp"), self.mode("udp")
        if (tcp or "connect") == (udp or "connect"):
            lines.append(f'mode = "{tcp or "connect"}"  # {self._mode_source()}')
        else:
            lines.append(
                f'mode = {{ tcp = "{tcp or "connect"}", udp = "{udp or "connect"}" }}'
                f"  # {self._mode_source()}"
            )
        lines += self._port_list("tcp") + self._port_list("udp") + self._banner()
        return lines + self._advanced()

    def _mode_source(self) -> str:
        return f'TCP_MODE="{self.modes.tcp}", UDP_MODE="{self.modes.udp}"'

    def _port_list(self, proto: str) -> list[str]:
        key = f"{proto.upper()}_PORTS"
        found = self.setting(key)
        mode = self.mode(proto)
        if not mode:
            return [f"{proto} = []  # {proto.upper()}_MODE is empty: PortSentry did not watch it"]
        if found is None:
            if mode != "advanced":
                self.note(
                    key,
                    f"not set: PortSentry's {proto} mode stopped at start, so "
                    f"nothing of {proto.upper()} was watched: {proto} = []",
                )
            return [f"{proto} = []  # {key} not set"]
        listed = ports(found, self.conf.version, self.conf.name, self.notes)
        used = " (used when the mode is not advanced)" if mode == "advanced" else ""
        return [f"{proto} = {tomlout.strings(listed)}  # {self.where(key)}{used}"]

    def _banner(self) -> list[str]:
        found = self.setting("PORT_BANNER")
        if found is None:
            return []
        if self.mode("tcp") != "connect":
            self.note(
                "PORT_BANNER",
                "only shown in connect mode (tcp), which TCP is not in: not carried over",
                found,
            )
            return []
        text = found.value.encode()[:BANNER_BYTES].decode(errors="ignore")
        if self.mode("udp") == "connect":
            self.note(
                "PORT_BANNER",
                "PortSentry also sent it to UDP senders in udp mode; "
                "porttrap shows it on TCP connections only",
                found,
            )
        return _commented(f"banner = {tomlout.string(text)}", self.where("PORT_BANNER"))

    def _advanced(self) -> list[str]:
        lines: list[str] = []
        for proto in ("tcp", "udp"):
            if self.mode(proto) != "advanced":
                continue
            key, exclude = f"ADVANCED_PORTS_{proto.upper()}", f"ADVANCED_EXCLUDE_{proto.upper()}"
            found = self.setting(key)
            top = number(found.value) if found else 1024
            if found is None:
                self.note(key, "not set: PortSentry assumed 1024, the ports below it")
            watched = f"1-{min(top, 65536) - 1}" if top > 1 else "1-1023"
            if top <= 1 and found is not None:
                self.note(
                    key,
                    "leaves no port below it to watch: the ports "
                    "below 1024 are watched, PortSentry's default",
                    found,
                )
            lines.append(f'{proto} = ["{watched}"]  # {self.where(key)}: the ports below it')
            excluded = self.setting(exclude)
            listed = (
                ports(excluded, self.conf.version, self.conf.name, self.notes) if excluded else []
            )
            lines.append(f"exclude_{proto} = {tomlout.strings(listed)}  # {self.where(exclude)}")
        return ["", "[traps.advanced]", *lines] if lines else []

    # -- [ban] and [kernel] --------------------------------------------------------------

    def ban(self) -> list[str]:
        tcp, udp = self.respond("tcp"), self.respond("udp")
        lines = ["", "[ban]"]
        source = f"{self.where('BLOCK_TCP')}, {self.where('BLOCK_UDP')}"
        value = f'"{tcp}"' if tcp == udp else f'{{ tcp = "{tcp}", udp = "{udp}" }}'
        lines += _commented(f"respond = {value}", source)
        lines += tomlout.comment(
            "PortSentry never lifted a block (routes and rules stayed until reboot, hosts.deny "
            "lines for good): every ban is permanent. Delete this line for porttrap's "
            "escalation instead (1h, then 4h, then permanent at the 3rd ban). Only bans on "
            "verified evidence (a completed handshake, an admin's ban) can be permanent: "
            "stealth probes and UDP datagrams can be forged, so their bans last at most "
            "[ban] unverified_max_time."
        )
        lines.append("permanent_after = 1")
        if not {self.respond(p) for p in ("tcp", "udp") if self.mode(p)} - {"log"}:
            return lines + self._trigger()  # nothing is ever banned
        self.note(
            "",
            "PortSentry's blocks never expired: every porttrap ban on verified evidence (a "
            "completed handshake, an admin's ban) is permanent ([ban] permanent_after = 1); "
            f"{UNVERIFIED_NOTE}; delete that line for porttrap's escalation",
        )
        return lines + self._trigger()

    def _trigger(self) -> list[str]:
        found = self.setting("SCAN_TRIGGER")
        value = max(number(found.value), 0) if found else 0
        trigger = min(max(value, 1), MAX_COUNT)
        if value > MAX_COUNT:  # never reached: PortSentry never reacted; porttrap says so below
            self.note("SCAN_TRIGGER", f"above {MAX_COUNT}, the most porttrap reads", found)
        lines = [
            f"trigger = {trigger}  # {self.where('SCAN_TRIGGER')}: PortSentry reacted at the "
            f"{_nth(trigger)} hit"
        ]
        if trigger > 1:
            lines.append(f"confirm = {trigger}")
            lines.append('window = "1d"  # PortSentry remembered hits with no time limit')
            self.note(
                "SCAN_TRIGGER",
                f"PortSentry reacted at the {_nth(trigger)} hit of a host "
                f"on any port, repeats included; porttrap at {trigger} distinct trap ports "
                "within a day (window)",
                found,
            )
        elif self._unverified():
            lines.append("confirm = 2  # probes and UDP can be forged: ban at the second")
            meanwhile = "" if self.kernel() else "; [kernel] block drops it at its first packet"
            self.note(
                "SCAN_TRIGGER",
                "PortSentry reacted to the first stealth probe or UDP datagram, which anyone "
                "can forge in a third party's name; porttrap bans a source at its second "
                f"(confirm = 2{meanwhile}). Set confirm = 1 to ban at the first",
                found,
            )
        return lines

    def _unverified(self) -> bool:
        """Whether a protocol that acts on its hits has hits that cannot prove their source."""
        udp = self.mode("udp") != "" and self.respond("udp") != "log"
        return udp or (self.mode("tcp") not in ("", "connect") and self.respond("tcp") != "log")

    def kernel(self) -> list[str]:
        need = [
            p
            for p in ("tcp", "udp")
            if self.mode(p) in ("stealth", "advanced") and self.respond(p) != "ban"
        ]
        if not need:
            return []
        which = " and ".join(need)
        return [
            "",
            "[kernel]",
            f"block = false  # {which} in stealth/advanced mode must not ban: "
            "no first-packet block",
        ]

    # -- [allow] -------------------------------------------------------------------------

    def allow(self, files: tuple[SourceFile, ...]) -> list[str]:
        self.used.add("IGNORE_FILE")
        entries: list[str] = []
        seen: set[str] = set()
        for source in files:
            unread: list[int] = []
            for item in parse_ignore(source):
                if item.note == NOT_AN_ADDRESS:
                    unread.append(item.line)
                elif item.text not in seen:  # Debian's built file repeats the static one
                    entries += self._ignored(item, seen)
                seen.add(item.text)
            if unread:
                self.notes.append(summary(source.name, "", unread, NOT_AN_ADDRESS))
        if not entries:
            return []
        return ["", "[allow]", "addresses = [", *entries, "]"]

    def _ignored(self, item: Ignored, seen: set[str]) -> list[str]:
        if item.note:
            self.notes.append(Note(item.file, item.line, item.text, item.note))
        if item.network is None or str(item.network) in seen:
            return []
        seen.add(str(item.network))
        where = tomlout.quiet(f"{Path(item.file).name}:{item.line}: {item.text}")
        return [f"    {tomlout.string(str(item.network))},  # {where}"]

    # -- [log] ---------------------------------------------------------------------------

    def log(self) -> list[str]:
        """PortSentry's attackalert lines went to syslog (facility daemon): they still do, so
        that logcheck and the like keep matching; porttrap's own lines go to stderr. Its history
        file, which fail2ban's own [portsentry] jail reads, is offered commented out: whether
        that jail stays is not in PortSentry's files."""
        lines = ["", "[log]"]
        lines += tomlout.comment(
            "PortSentry wrote its attackalert lines to syslog (facility daemon): the same lines "
            "go there, so that what reads them keeps matching. porttrap's own lines go to stderr."
        )
        lines += ["[[log.output]]", 'to = "stderr"', 'format = "porttrap"']
        lines += ["", "[[log.output]]", 'to = "syslog"', 'format = "portsentry"']
        lines.append('facility = "daemon"')
        history = self.conf.get("HISTORY_FILE")
        if history is not None and history.value.startswith("/"):
            why = tomlout.comment(
                f"fail2ban's own [portsentry] jail reads {self.where('HISTORY_FILE')}: if the "
                "jail stays, uncomment this output, which writes that file's lines."
            )
            lines += ["", *why]
            lines += ["# [[log.output]]", f"# to = {tomlout.string(history.value)}"]
            lines.append('# format = "portsentry-history"')
        return lines

    # -- everything else -----------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Notes for the settings porttrap does otherwise."""
        instead = {
            "HISTORY_FILE": "porttrap keeps every hit and ban in its database (porttrap "
            "history); for a fail2ban [portsentry] jail that reads this file, [log] has an "
            "output that writes it, commented out",
            "BLOCKED_FILE": "porttrap keeps its bans in its database (porttrap bans): not "
            "carried over; the hosts listed there are not imported: 'porttrap ban --permanent "
            "-f FILE' bans them",
            "RESOLVE_HOST": "porttrap never looks up names (a scanner controls its reverse DNS, "
            "and lookups delay bans): not carried over",
        }
        for key, why in instead.items():
            found = self.setting(key)
            if found is not None:
                self.note(key, why, found)
        for proto in ("tcp", "udp"):
            if self.mode(proto) == "advanced":
                continue
            for key in (f"ADVANCED_PORTS_{proto.upper()}", f"ADVANCED_EXCLUDE_{proto.upper()}"):
                found = self.setting(key)
                if found is not None and self.mode(proto):
                    self.note(
                        key,
                        f"{proto.upper()} is not in advanced mode, where this "
                        "applies: not carried over",
                        found,
                    )
        return []


def _nth(count: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(count, f"{count}th")


def _commented(line: str, comment: str) -> list[str]:
    """`line  # comment`, or the comment on the line above when both do not fit on one."""
    comment = tomlout.quiet(comment)
    joined = f"{line}  # {comment}"
    return [joined] if len(joined) <= tomlout.WIDTH else [f"# {comment}", line]
