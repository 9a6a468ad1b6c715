"""The lines each log format writes for one event: pure functions of the event's data.

porttrap's events are structured (a name and fields, see `porttrap.log.event`); each format
renders them from that data, never by re-reading another format's text:

- "json": one JSON object per event (ts, level, event, fields).
- "portsentry": PortSentry's syslog messages (`attackalert: Connect from host: ...`), so that the
  greps and fail2ban filters people wrote for PortSentry keep matching.
- "portsentry-history": the lines of PortSentry's portsentry.history file, which fail2ban's own
  `filter.d/portsentry.conf` reads.
- "net-bouncer": net-bouncer's `Connection from <ip>` lines, for its fail2ban filter.

The three compatible formats write only the events their program had a line for (trap hits
and bans) and nothing for the rest. They never write a line for a source porttrap would not
ban (allow list, the host's own addresses, broadcasts, a recent client's probes): fail2ban
would ban it. The daemon writes forgeable hits (stealth probes, UDP) at debug level unless they
ban, and compatible outputs never take debug events, so a forged flood cannot flood them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from porttrap.config.schema import BanPolicy, LogFormat, Modes, Respond, TrapMode
from porttrap.model import Outcome, Proto, trapped_by

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Hits from sources porttrap would ban (the rest are spared: allowed, own address, client ...).
SCAN_OUTCOMES = frozenset({Outcome.BANNED, Outcome.COUNTED, Outcome.ALREADY_BANNED, Outcome.LOGGED})
# PortSentry alerted once a source reached SCAN_TRIGGER (every hit from then on), and wrote
# portsentry.history when it acted, also with BLOCK_x = 0 (log only): that history is what
# fail2ban reads when it does the banning.
ALERT_OUTCOMES = frozenset({Outcome.BANNED, Outcome.ALREADY_BANNED, Outcome.LOGGED})
HISTORY_OUTCOMES = frozenset({Outcome.BANNED, Outcome.LOGGED})
# The TCP flags of each probe class (porttrap.sensors.classify), as flag letters.
_KIND_FLAGS = {"syn": "S", "fin": "F", "null": "", "xmas": "FPU", "ack": "A", "maimon": "FA"}
_OTHER = "other "
_TCP_FLAGS = frozenset("SFAPRU")  # the six PortSentry looks at (not ECE, CWR)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event as the formats see it: `at` in seconds since the epoch, `level` a logging
    level number, `fields` as given to `log.event` (None values are left out when written)."""

    name: str
    level: int
    at: float
    fields: Mapping[str, Any] = field(default_factory=dict)
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What a format needs beyond the event: how each protocol is watched and answered (which
    PortSentry line a hit gets), the time zone of local timestamps (None: the host's), and the
    host name and pid of a syslog-style line header."""

    modes: Modes = field(default_factory=Modes)
    ban: BanPolicy = field(default_factory=BanPolicy)
    tz: tzinfo | None = None
    hostname: str = "localhost"
    pid: int = 0


Render = Callable[[LogEvent, Context], list[str]]


# -- json -------------------------------------------------------------------------------------


def json_line(event: LogEvent, level_name: str) -> str:
    """`{"ts": "...Z", "level": "info", "event": "ban", "fields": {...}}` on one line."""
    record: dict[str, Any] = {
        "ts": iso_ms(event.at),
        "level": level_name,
        "event": event.name,
        "fields": {key: _json_value(v) for key, v in event.fields.items() if v is not None},
    }
    if event.traceback:
        record["traceback"] = event.traceback
    return json.dumps(record, separators=(",", ":"))


def _json_value(value: object) -> object:
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def iso_ms(at: float) -> str:
    """'2026-11-22T05:00:00.123Z'."""
    moment = datetime.fromtimestamp(at, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- portsentry: the syslog messages ---------------------------------------------------------


def portsentry_lines(event: LogEvent, context: Context) -> list[str]:
    """PortSentry's attackalert messages for a hit or a trap ban; [] for any other event."""
    if event.name == "hit":
        return _alerts(event.fields, context)
    if event.name in ("ban", "permanent-ban"):
        return _blocked(event, context)
    return []


def _alerts(fields: Mapping[str, Any], context: Context) -> list[str]:
    outcome, source = fields.get("outcome"), fields.get("src")
    if outcome not in ALERT_OUTCOMES or source is None:
        return []
    proto, port, kind = _proto(fields), fields.get("port"), str(fields.get("kind", ""))
    if proto is None or port is None:
        return []
    host = f"{source}/{source}"  # PortSentry's "resolved/address", not resolving (RESOLVE_HOST=0)
    socket_hit = _socket_hit(kind, proto, context)
    scan = _scan(kind, proto, socket_hit)
    lines = [f"attackalert: {scan} from host: {host} to {_up(proto)} port: {port}"]
    if outcome == Outcome.LOGGED:
        lines.append(f"attackalert: Ignoring {_up(proto)} response per configuration file setting.")
    elif outcome == Outcome.ALREADY_BANNED:
        # PortSentry's connect and stealth modes wrote this differently; both kept as written.
        lines.append(
            f"attackalert: Host: {source} is already blocked. Ignoring"
            if socket_hit
            else f"attackalert: Host: {host} is already blocked Ignoring"
        )
    return lines


def _socket_hit(kind: str, proto: Proto, context: Context) -> bool:
    """Whether a trap socket saw the hit (PortSentry's tcp/udp modes), not the kernel sensor."""
    if proto is Proto.TCP:
        return kind == "connect"
    return context.modes.of(Proto.UDP) is TrapMode.CONNECT


def _scan(kind: str, proto: Proto, socket_hit: bool) -> str:
    if socket_hit:
        return "Connect"
    if proto is Proto.UDP:
        return "UDP scan"
    return packet_type(kind)


def packet_type(kind: str) -> str:
    """PortSentry's name for a TCP probe (its ReportPacketType), from porttrap's probe class."""
    letters = _KIND_FLAGS.get(kind)
    if letters is None and kind.startswith(_OTHER):
        letters = kind[len(_OTHER) :]
    if letters is None:
        return f"Unknown Type: TCP Packet Flags: {kind}"
    flags = set(letters) & _TCP_FLAGS
    if not flags:
        return "TCP NULL scan"
    if {"F", "P", "U"} <= flags:
        return "TCP XMAS scan"
    if flags == {"F"}:
        return "TCP FIN scan"
    if flags == {"S"}:
        return "TCP SYN/Normal scan"
    bits = " ".join(f"{name}: {int(letter in flags)}" for name, letter in _FLAG_NAMES)
    return f"Unknown Type: TCP Packet Flags: {bits}"


_FLAG_NAMES = (("SYN", "S"), ("FIN", "F"), ("ACK", "A"), ("PSH", "P"), ("URG", "U"), ("RST", "R"))


def _blocked(event: LogEvent, context: Context) -> list[str]:
    """PortSentry's KILL_ROUTE line, for a trap's ban that reaches the kernel. The "command" is
    the porttrap command that does the same (the escalation decides the time)."""
    address, trap = event.fields.get("address"), trapped_by(str(event.fields.get("reason", "")))
    if address is None or trap is None or context.ban.respond(trap[0]) is not Respond.BAN:
        return []
    command = f"porttrap ban {address}" + (" --permanent" if event.name == "permanent-ban" else "")
    return [
        f'attackalert: Host {address} has been blocked via dropped route using command: "{command}"'
    ]


# -- portsentry.history ----------------------------------------------------------------------


def history_lines(event: LogEvent, context: Context) -> list[str]:
    """`1403884279 - 06/27/2014 17:51:19 Host: 192.0.2.7/192.0.2.7 Port: 23 TCP Blocked`, for
    a hit that bans (or, with respond = "log", would have: PortSentry's BLOCK_x = 0 wrote it)."""
    fields = event.fields
    source, port, proto = fields.get("src"), fields.get("port"), _proto(fields)
    if event.name != "hit" or fields.get("outcome") not in HISTORY_OUTCOMES:
        return []
    if source is None or port is None or proto is None:
        return []
    moment = _local(event.at, context)
    return [
        f"{int(event.at)} - {moment:%m/%d/%Y %H:%M:%S} Host: {source}/{source} "
        f"Port: {port} {_up(proto)} Blocked"
    ]


# -- net-bouncer -----------------------------------------------------------------------------


def net_bouncer_lines(event: LogEvent, context: Context) -> list[str]:
    """`2024-07-08 21:26:48.474 [INFO] Connection from 192.0.2.7`, for every trap hit from a
    source porttrap would ban (net-bouncer logged every connection; fail2ban counts them)."""
    source = event.fields.get("src")
    if event.name != "hit" or event.fields.get("outcome") not in SCAN_OUTCOMES or source is None:
        return []
    moment = _local(event.at, context)
    millis = int(event.at * 1000) % 1000
    return [f"{moment:%Y-%m-%d %H:%M:%S}.{millis:03d} [INFO] Connection from {source}"]


# -- shared ----------------------------------------------------------------------------------


def syslog_header(at: float, context: Context) -> str:
    """'Nov 22 06:00:00 host porttrap[1234]: ', as syslog writes a line to /var/log/syslog:
    the prefix fail2ban's `__prefix_line` and people's greps expect before a message."""
    moment = _local(at, context)
    month = _MONTHS[moment.month - 1]
    return f"{month} {moment.day:>2} {moment:%H:%M:%S} {context.hostname} porttrap[{context.pid}]: "


def _local(at: float, context: Context) -> datetime:
    return datetime.fromtimestamp(at, UTC).astimezone(context.tz)


def _proto(fields: Mapping[str, Any]) -> Proto | None:
    value = fields.get("proto")
    return Proto(value) if value in ("tcp", "udp") else None


def _up(proto: Proto) -> str:
    return proto.value.upper()


RENDERERS: dict[LogFormat, Render] = {
    LogFormat.PORTSENTRY: portsentry_lines,
    LogFormat.PORTSENTRY_HISTORY: history_lines,
    LogFormat.NET_BOUNCER: net_bouncer_lines,
}
# Formats whose lines carry no date of their own: written to a file, each gets a syslog header.
HEADERLESS = frozenset({LogFormat.PORTSENTRY})
