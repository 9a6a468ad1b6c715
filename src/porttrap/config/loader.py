"""Reading porttrap.toml into a `Config`. Every problem in the file is reported at once, each with
its line and dotted key, because a config that half loads could leave ports unprotected."""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path

from porttrap.config import fields, host, protection
from porttrap.config.actions import build_actions
from porttrap.config.fields import Problems, Section, Table, format_hold
from porttrap.config.fleet import build_fleet
from porttrap.config.logsection import build_log
from porttrap.config.metrics import build_metrics
from porttrap.config.schema import (
    ADVANCED_HOLD,
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    AllowList,
    BanPolicy,
    Config,
    Escalation,
    FirewallConfig,
    KernelSensor,
    Modes,
    PrefixPolicy,
    Protect,
    Respond,
    StoreConfig,
    Trap,
    TrapMode,
)
from porttrap.config.traps import build_banner, build_modes, build_traps
from porttrap.errors import ConfigError, ConfigProblem
from porttrap.firewall import registry
from porttrap.model import Proto
from porttrap.units import format_duration

TOP_KEYS = (
    "state_dir",
    "traps",
    "kernel",
    "ban",
    "allow",
    "actions",
    "firewall",
    "store",
    "log",
    "metrics",
    "protect",
    "fleet",
)
BAN_KEYS = (
    "time",
    "escalation",
    "max_time",
    "permanent_after",
    "trigger",
    "window",
    "forget_after",
    "confirm",
    "respond",
    "unverified_max_time",
    "unverified_rate",
    "unverified_prefix_rate",
    "client_trigger",
    "prefix",
)
PREFIX_KEYS = ("v6_source", "v4", "v6", "spread", "max_pieces")
RATE = fields.between(1, 1_000_000)  # per second: whole numbers, as people write them
KERNEL_KEYS = (
    "nflog_group",
    "block",
    "block_time",
    "block_size",
    "client_time",
    "client_size",
    "client_trap_port",
    "quiet",
    "event_rate",
    "source_rate",
    "queue",
    "hold",
    "hold_memory",
    "hold_queue",
    "hold_rate",
)
_ALLOW_EXAMPLE = '["192.0.2.0/24", "2001:db8::7"]'
_RESPOND_EXAMPLE = '{ tcp = "ban", udp = "log" }'
_PATTERN_EXAMPLE = """['198\\.51\\.100\\.[0-9]+']"""
_TOO_DEEP = (
    "arrays or tables nested too deeply for the TOML reader (hundreds of levels), where no "
    "porttrap key nests more than a few: remove the nesting"
)
# A key of many dotted parts: tomllib's memory grows with the square of their number
# ('x.' * 20,000 took 1.6 GB, 100,000 was killed at 23 GB), and no porttrap key has more than 3.
MAX_KEY_PARTS = 64
_LONG_KEY = re.compile(  # where a key starts: a line, a [table], an inline table's { or ,
    r"""(?:^|[\[{,])[ \t]*(?:(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')[ \t]*\.[ \t]*)"""
    + f"{{{MAX_KEY_PARTS},}}",
    re.MULTILINE,
)
_TOO_LONG_KEY = (
    f"a dotted key of more than {MAX_KEY_PARTS} parts, where no porttrap key has more than 3 "
    "(the TOML reader's memory grows with the square of their number): shorten it"
)
_SYNTAX_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_SYNTAX_AT_END = re.compile(r"\s*\(at end of document\)$")


def load(path: Path | None) -> Config:
    """The config in `path`; with None, DEFAULT_CONFIG_PATH if it exists, else the defaults.
    Checked against this host's limits too (`config.host`): check-config, run and reload all
    come here."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return load_text("", None, host.read())
        path = DEFAULT_CONFIG_PATH
    return load_text(_read(path), path, host.read())


def load_text(text: str, path: Path | None, on: host.Host | None = None) -> Config:
    """The config in `text`, read from `path` (None: not from a file), checked against the
    limits of host `on` (None: not checked). Raises ConfigError."""
    if (long_key := _LONG_KEY.search(text)) is not None:
        line = text.count("\n", 0, long_key.start()) + 1
        raise ConfigError([ConfigProblem(path, line, "", _TOO_LONG_KEY)])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(exc, text, path)]) from None
    except RecursionError:  # tomllib reads nested arrays and tables by recursion
        raise ConfigError([ConfigProblem(path, None, "", _TOO_DEEP)]) from None
    problems = Problems(path, text)
    config = _config(data, problems, path)
    _check_protects(data, problems, config, on)
    if len(problems):
        raise ConfigError(problems.sorted())
    return config


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        message = "no such file; create it or give another file"
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
    except OSError as exc:
        message = f"cannot read it: {exc.strerror or exc}"
    raise ConfigError([ConfigProblem(path, None, "", message)])


def _syntax_problem(exc: tomllib.TOMLDecodeError, text: str, path: Path | None) -> ConfigProblem:
    """tomllib puts the place at the end of its message: "... (at line 3, column 8)"."""
    message = str(exc)
    if match := _SYNTAX_AT.search(message):
        found = f"{message[: match.start()]} (column {match.group(2)})"
        return ConfigProblem(path, int(match.group(1)), "", f"not valid TOML: {found}")
    if match := _SYNTAX_AT_END.search(message):
        last_line = text.count("\n") + (0 if text.endswith("\n") else 1)
        found = f"{message[: match.start()]} at the end of the file"
        return ConfigProblem(path, last_line, "", f"not valid TOML: {found}")
    return ConfigProblem(path, None, "", f"not valid TOML: {message}")


def _config(data: Table, problems: Problems, path: Path | None) -> Config:
    top = Section(data, "", problems)
    top.check_keys(TOP_KEYS)
    traps = top.sub("traps")
    backend = top.table.get("firewall", {})
    backend = backend.get("backend", "nftables") if isinstance(backend, dict) else None
    kernel, ban = _kernel(top.sub("kernel")), _ban(top.sub("ban"))
    modes = build_modes(traps, backend, all(ban.respond(p) is Respond.BAN for p in Proto))
    kernel = _default_hold(top, modes, kernel)
    _check_respond(top, modes, kernel, ban)
    trap_list = build_traps(traps)
    _check_catch_all(top, modes, kernel, trap_list)
    _check_hold(top, modes, kernel)
    return Config(
        state_dir=top.get("state_dir", fields.absolute_path, DEFAULT_STATE_DIR),
        traps=trap_list,
        banner=build_banner(traps),
        modes=modes,
        kernel=kernel,
        ban=ban,
        allow=_allow(top.sub("allow")),
        actions=build_actions(top.sub("actions")),
        firewall=_firewall(top.sub("firewall")),
        store=_store(top.sub("store")),
        log=build_log(top.sub("log")),
        metrics=build_metrics(top.sub("metrics"), trap_list),
        protect=_protect(top.sub("protect")),
        fleet=build_fleet(top.sub("fleet")) if "fleet" in top.table else None,
        source=path,
    )


def _check_protects(data: Table, problems: Problems, config: Config, on: host.Host | None) -> None:
    """A config that cannot ban anyone, or that this host cannot run without harm, is an
    error; checked once the sections these checks read are valid."""
    if not problems.under(protection.SECTIONS):
        protection.check(problems, data, config)
    if on is not None and not problems.under(("traps", "kernel")):
        host.check(problems, data, config, on)


def _protect(section: Section) -> Protect:
    section.check_keys(("ssh_ports",))
    ports = section.items("ssh_ports", fields.between(1, 65535), "[22, 2222]")
    return Protect(ssh_ports=tuple(dict.fromkeys(ports)))


def _allow(section: Section) -> AllowList:
    section.check_keys(("addresses", "patterns"))
    return AllowList(
        networks=tuple(section.items("addresses", fields.network, _ALLOW_EXAMPLE)),
        patterns=tuple(section.items("patterns", fields.pattern, _PATTERN_EXAMPLE)),
    )


def _ban(section: Section) -> BanPolicy:
    section.check_keys(BAN_KEYS)
    default, before = BanPolicy(), len(section.problems)
    time = section.get("time", fields.duration, default.time)
    max_time = section.get("max_time", fields.duration, default.max_time)
    respond = fields.per_protocol(section, "respond", Respond, Respond.BAN, _RESPOND_EXAMPLE)
    if max_time < time and len(section.problems) == before:
        section.problems.add("ban.max_time", _max_time_message(section, time, max_time))
    return BanPolicy(
        time=time,
        escalation=section.get("escalation", fields.one_of(Escalation), default.escalation),
        max_time=max_time,
        permanent_after=section.get("permanent_after", fields.at_least(0), default.permanent_after),
        trigger=section.get("trigger", fields.at_least(1), default.trigger),
        window=section.get("window", fields.duration, default.window),
        forget_after=section.get("forget_after", fields.lookback, default.forget_after),
        confirm=section.get("confirm", fields.at_least(1), default.confirm),
        respond_tcp=respond[Proto.TCP],
        respond_udp=respond[Proto.UDP],
        unverified_max_time=section.get(
            "unverified_max_time", fields.duration, default.unverified_max_time
        ),
        unverified_rate=float(section.get("unverified_rate", RATE, int(default.unverified_rate))),
        unverified_prefix_rate=float(
            section.get("unverified_prefix_rate", RATE, int(default.unverified_prefix_rate))
        ),
        client_trigger=section.get("client_trigger", fields.at_least(1), default.client_trigger),
        prefix=_prefix(section.sub("prefix")),
    )


def _prefix(section: Section) -> PrefixPolicy:
    """`[ban.prefix]`: lengths as people write them, kept longest first and once each."""
    section.check_keys(PREFIX_KEYS)
    default = PrefixPolicy()
    v4 = section.items("v4", fields.between(8, 31), "[24]") if "v4" in section.table else None
    v6 = section.items("v6", fields.between(16, 127), "[64, 56, 48]")
    return PrefixPolicy(
        v6_source=section.get("v6_source", fields.between(32, 128), default.v6_source),
        v4=default.v4 if v4 is None else tuple(sorted(set(v4), reverse=True)),
        v6=tuple(sorted(set(v6), reverse=True)) if "v6" in section.table else default.v6,
        spread=section.get("spread", _spread, default.spread),
        max_pieces=section.get("max_pieces", fields.between(1, 1024), default.max_pieces),
    )


def _spread(value: object) -> int:
    if value == 1 and not isinstance(value, bool):
        raise ValueError(
            "spread = 1 would ban a whole prefix for a single source; write 2 or more "
            "(3 is usual), or 0 for no spread bans"
        )
    if value == 0 and not isinstance(value, bool):
        return 0
    return fields.between(2, 1000)(value)


def _check_respond(top: Section, modes: Modes, kernel: KernelSensor, ban: BanPolicy) -> None:
    """The kernel sensor's first-packet block is a ban of its own: a protocol that must not
    ban (respond "log", or "command": bans are the command's job) cannot have it."""
    if not kernel.block:
        return
    for proto in Proto:
        respond = ban.respond(proto)
        if respond is Respond.BAN or modes.of(proto) is TrapMode.CONNECT:
            continue
        top.problems.add(
            "ban.respond",
            f'{proto.value} responds with "{respond}" but is in "{modes.of(proto)}" mode, whose '
            "kernel sensor drops a trap packet's source at once (first-packet block): set "
            '[kernel] block = false, respond = "ban", or [traps] mode = "connect"',
        )


def _check_catch_all(
    top: Section, modes: Modes, kernel: KernelSensor, traps: tuple[Trap, ...]
) -> None:
    """The catch-all port, where the daemon takes a recent client's handshakes to TCP traps
    (stealth, advanced), cannot be a trap itself. Advanced mode leaves it out by itself."""
    port = kernel.client_trap_port
    if modes.tcp is not TrapMode.STEALTH or port == 0:
        return
    if any(trap.proto is Proto.TCP and trap.port == port for trap in traps):
        top.problems.add(
            "kernel.client_trap_port",
            f"TCP port {port} is a trap, but it is also [kernel] client_trap_port, where "
            "porttrap takes the handshakes of recent clients to TCP traps: remove the trap, "
            "or set client_trap_port to a port nothing else uses (0 turns the redirect off)",
        )


def _default_hold(top: Section, modes: Modes, kernel: KernelSensor) -> KernelSensor:
    """The hold is on by default in advanced mode, where every port nothing serves is a trap:
    there a scanner's next probes, within the hold, all but surely touch one (docs/hold.md)."""
    kernel_table = top.table.get("kernel")
    unset = not isinstance(kernel_table, dict) or "hold" not in kernel_table
    return (
        replace(kernel, hold=ADVANCED_HOLD) if unset and modes.tcp is TrapMode.ADVANCED else kernel
    )


def _check_hold(top: Section, modes: Modes, kernel: KernelSensor) -> None:
    """The hold's rules are part of the kernel sensor, which watches TCP in stealth and
    advanced modes only."""
    if kernel.hold and modes.tcp is TrapMode.CONNECT:
        top.problems.add(
            "kernel.hold",
            f'hold = "{format_hold(kernel.hold)}" needs TCP in stealth or advanced mode (the '
            'kernel sensor holds the SYNs), but TCP is in "connect" mode: set [traps] mode = '
            '"advanced" (or "stealth", which needs the nftables backend), or hold = "0"',
        )


def _max_time_message(section: Section, time: float, max_time: float) -> str:
    which = "" if "max_time" in section.table else ", the default"
    return (
        f"max_time ({_human(max_time)}{which}) is shorter than time ({_human(time)}); "
        f"set max_time to at least {_human(time)}"
    )


def _human(seconds: float) -> str:
    """In the largest unit that divides it, as people write it: 30d rather than 4w2d."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return format_duration(seconds)


def _kernel(section: Section) -> KernelSensor:
    section.check_keys(KERNEL_KEYS)
    default, set_size = KernelSensor(), fields.between(1024, 16_777_216)
    return KernelSensor(
        nflog_group=section.get("nflog_group", fields.between(0, 65535), default.nflog_group),
        block=section.get("block", fields.boolean, default.block),
        block_time=section.get("block_time", fields.duration, default.block_time),
        block_size=section.get("block_size", set_size, default.block_size),
        client_time=section.get("client_time", fields.duration_or_zero, default.client_time),
        client_size=section.get("client_size", set_size, default.client_size),
        client_trap_port=section.get(
            "client_trap_port", fields.between(0, 65535), default.client_trap_port
        ),
        quiet=section.get("quiet", fields.boolean, default.quiet),
        event_rate=section.get("event_rate", fields.at_least(1), default.event_rate),
        source_rate=section.get("source_rate", fields.at_least(1), default.source_rate),
        queue=section.get("queue", fields.at_least(100), default.queue),
        hold=section.get("hold", fields.hold_time, default.hold),
        hold_memory=section.get("hold_memory", fields.duration, default.hold_memory),
        hold_queue=section.get("hold_queue", fields.between(0, 65535), default.hold_queue),
        hold_rate=section.get("hold_rate", RATE, default.hold_rate),
    )


def _firewall(section: Section) -> FirewallConfig:
    section.check_keys(("backend", "table"))
    default = FirewallConfig()
    return FirewallConfig(
        backend=section.get("backend", _backend, default.backend),
        table=section.get("table", fields.table_name, default.table),
    )


def _backend(value: object) -> str:
    choices = registry.names()
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError(fields.choice_message(value, choices))


def _store(section: Section) -> StoreConfig:
    section.check_keys(("hit_retention", "hit_rate", "hit_rows"))
    default = StoreConfig()
    return StoreConfig(
        hit_retention=section.get("hit_retention", fields.lookback, default.hit_retention),
        hit_rate=float(section.get("hit_rate", RATE, int(default.hit_rate))),
        hit_rows=section.get("hit_rows", fields.at_least(1000), default.hit_rows),
    )
