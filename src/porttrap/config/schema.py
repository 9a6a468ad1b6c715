"""The validated configuration: what the rest of porttrap reads. Built by `config.loader.load`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from porttrap.model import IPAddress, IPNetwork, Proto

DEFAULT_CONFIG_PATH = Path("/etc/porttrap/porttrap.toml")
DEFAULT_STATE_DIR = Path("/var/lib/porttrap")

# The classic trap lists (PortSentry's defaults), less every port a service may want: a service
# always wins over a trap, and a trap on its port bans its clients. Left out: those a Debian
# package serves (79 finger, 111 rpcbind, 119 nntp, 143 imap, 540 uucp, 1080 socks,
# 2000 sieve/sccp, 6667 ircd; UDP 7 echo and 9 discard (also Wake-on-LAN), 69 tftp,
# 161-162 snmp, 513 rwho) and those in Linux's ip_local_port_range (32768-60999), where the
# host's own connections take their source ports (32770-32774, 34555, 37444, 40421, 49724,
# 54320, 54321). What is left: ports of old backdoors and retired services.
DEFAULT_TCP_TRAPS = (
    "1", "11", "15", "635", "1524", "5742", "12345", "12346", "20034", "27665", "31337",
)  # fmt: skip
DEFAULT_UDP_TRAPS = (
    "1", "635", "640", "641", "700", "31335", "31337",)  # fmt: skip


class TrapMode(enum.StrEnum):
    """How a protocol's traps are watched."""

    CONNECT = "connect"  # sockets bound on the trap ports (full TCP handshakes, UDP datagrams)
    STEALTH = "stealth"  # nftables rules on the trap ports: every probe seen, none answered
    ADVANCED = "advanced"  # nftables rules on every port in a range that nothing serves


class Respond(enum.StrEnum):
    """What a hit that reaches the trigger does (PortSentry's BLOCK_TCP / BLOCK_UDP 1, 0, 2)."""

    BAN = "ban"  # kernel ban, and the ban actions
    LOG = "log"  # hits stored and logged; nothing banned, no ban actions
    COMMAND = "command"  # the ban is decided and recorded and its actions run; no kernel ban


class Escalation(enum.StrEnum):
    QUADRATIC = "quadratic"  # n-th ban lasts time * n**2  (port_trap)
    EXPONENTIAL = "exponential"  # n-th ban lasts time * 2**(n-1)
    NONE = "none"  # every ban lasts time


ADVANCED_HOLD = 0.005  # [kernel] hold in advanced mode, unless set (docs/hold.md)


@dataclass(frozen=True, slots=True)
class Trap:
    """One trap port. `address` None: every local address of the protocol's families."""

    proto: Proto
    port: int
    address: IPAddress | None = None
    ban: float | None = None  # this trap's first-ban time in seconds; None: [ban] time


@dataclass(frozen=True, slots=True)
class PrefixPolicy:
    """The `[ban.prefix]` section: when a network is banned rather than its addresses one by
    one (`porttrap.policy.prefix`). Off by default: both change who a ban cuts off."""

    # IPv6 hits count, and IPv6 sources are banned, per prefix of this length (64: the unit a
    # scanner gets for free); 128: per address, as IPv4.
    v6_source: int = 128
    # The prefix lengths a spread may ban, longest first; lengths of IPv6 not shorter than
    # `v6_source` are never used (one source fills them).
    v4: tuple[int, ...] = (24,)
    v6: tuple[int, ...] = (64, 56, 48)
    # Distinct banned sources inside a prefix (within [ban] window) that ban it; 0: never.
    spread: int = 0
    # A prefix ban that would cover a protected address covers the prefix minus it, in at
    # most this many CIDRs; more, and it is refused.
    max_pieces: int = 64

    @property
    def on(self) -> bool:
        """Whether anything here changes a ban from what it is without the section."""
        return self.spread > 0 or self.v6_source < 128

    def lengths(self, version: int) -> tuple[int, ...]:
        """The lengths a spread may ban in `version`, longest first."""
        if version == 4:
            return self.v4
        return tuple(length for length in self.v6 if length < self.v6_source)


@dataclass(frozen=True, slots=True)
class BanPolicy:
    time: float = 3600.0
    escalation: Escalation = Escalation.QUADRATIC
    max_time: float = 30 * 86400.0
    permanent_after: int = 3  # the n-th ban is permanent; 0 = never
    trigger: int = 1  # distinct trap ports hit within `window` needed to ban
    window: float = 600.0
    forget_after: float = 90 * 86400.0  # bans older than this no longer count toward escalation
    # Hits from a source before a hit that cannot prove its source (a stealth probe, a UDP
    # datagram: both can be forged) may ban it. A TCP handshake (connect mode) proves it.
    confirm: int = 2
    respond_tcp: Respond = Respond.BAN
    respond_udp: Respond = Respond.BAN
    # A ban resting only on forgeable evidence (probes, datagrams) lasts at most this long and
    # is never permanent: long enough to outlast a scan, short enough that a forger who names
    # an innocent address costs it minutes, not hours.
    unverified_max_time: float = 600.0
    # Such bans per second, host-wide and per /24 (IPv4) or /48 (IPv6) of the banned sources;
    # bursts of five seconds' worth. A flood of forged sources cannot ban thousands.
    unverified_rate: float = 10.0
    unverified_prefix_rate: float = 1.0
    # Distinct trap ports a recent client must complete a handshake to before it is banned: a
    # load balancer's health check of a service that just stopped touches one.
    client_trigger: int = 2
    prefix: PrefixPolicy = field(default_factory=PrefixPolicy)

    def respond(self, proto: Proto) -> Respond:
        return self.respond_tcp if proto is Proto.TCP else self.respond_udp


@dataclass(frozen=True, slots=True)
class Modes:
    """The trap mode of each protocol, and what advanced mode watches."""

    tcp: TrapMode = TrapMode.CONNECT
    udp: TrapMode = TrapMode.CONNECT
    # Advanced mode: the ports watched, minus the excluded ones (and whatever is served).
    advanced_tcp: frozenset[int] = frozenset(range(1, 65536))
    advanced_udp: frozenset[int] = frozenset(range(1, 65536))
    # Left alone even when nothing serves them (PortSentry's defaults): ident (113), NetBIOS
    # (139, and broadcasts to 137, 138), DHCP (67) and RIP (520).
    exclude_tcp: frozenset[int] = frozenset({113, 139})
    exclude_udp: frozenset[int] = frozenset({67, 137, 138, 520})

    def of(self, proto: Proto) -> TrapMode:
        return self.tcp if proto is Proto.TCP else self.udp

    def watched(self, proto: Proto) -> frozenset[int]:
        """The ports advanced mode watches for `proto`."""
        return self.advanced_tcp if proto is Proto.TCP else self.advanced_udp

    def excluded(self, proto: Proto) -> frozenset[int]:
        return self.exclude_tcp if proto is Proto.TCP else self.exclude_udp

    @property
    def kernel(self) -> bool:
        """Whether any protocol is watched by the kernel sensor (stealth or advanced)."""
        return TrapMode.CONNECT is not self.tcp or TrapMode.CONNECT is not self.udp


@dataclass(frozen=True, slots=True)
class KernelSensor:
    """The `[kernel]` section: the nftables sensor of stealth and advanced modes, and the watch
    of every mode with either kernel backend (`client_time`, `client_size`)."""

    nflog_group: int = 7022  # NFLOG group the kernel reports trap packets to
    block: bool = True  # first-packet block: a trap packet drops its source at once
    block_time: float = 60.0  # how long a first-packet block lasts
    block_size: int = 65536  # sources per block set (two generations per IP family)
    # Sources that completed a flow (TCP, UDP ...) to this host this recently, and those the
    # host sent to this recently (its peers) ... are exempt from blocks, and their datagrams to
    # connect-mode UDP traps are marked (never banned); this many per IP family
    client_time: float = 3600.0
    client_size: int = 65536
    # Where a recent client's SYN to a TCP trap is redirected (stealth, advanced): the daemon
    # listens there, so the handshake proves the client's address. 0: no redirect. 65023: in
    # the dynamic range (49152-65535, assigned to no service) yet above Linux's ephemeral ports
    # (32768-60999), so no outgoing connection of the host takes it as its source port.
    client_trap_port: int = 65023
    quiet: bool = True  # non-SYN TCP probes to ports nothing serves: dropped, no RST
    event_rate: int = 250  # trap packets per second the kernel reports, per path (new/repeat)
    source_rate: int = 10  # ... and per source
    queue: int = 10_000  # reported packets the daemon holds before it drops (and counts)
    # Hold the first probe (docs/hold.md): a TCP SYN to a served port from a source the kernel
    # does not know waits this long (seconds) in NFQUEUE `hold_queue` for the daemon's verdict,
    # at most `hold_rate` a second (more pass unheld); a released source is not held again for
    # `hold_memory`. 0: off. A configuration that does not set it, with TCP in advanced mode,
    # gets ADVANCED_HOLD (the loader's `_default_hold`).
    hold: float = 0.0
    hold_memory: float = 3600.0
    hold_queue: int = 7022
    hold_rate: int = 1000


@dataclass(frozen=True, slots=True)
class AllowList:
    """Who is never banned: networks, and regular expressions matched against the whole text
    of an address (port_trap's whitelist.txt patterns that are not exact networks)."""

    networks: tuple[IPNetwork, ...] = ()
    patterns: tuple[str, ...] = ()


class Event(enum.StrEnum):
    """What actions can be run on."""

    HIT = "hit"
    BAN = "ban"
    PERMANENT_BAN = "permanent-ban"
    UNBAN = "unban"


BAN_EVENTS = frozenset({Event.BAN, Event.PERMANENT_BAN})


@dataclass(frozen=True, slots=True)
class CommandAction:
    """`[[actions.command]]`: run a program (PortSentry's KILL_RUN_CMD)."""

    run: tuple[str, ...]  # argv; with shell, one item: the shell command
    on: frozenset[Event] = BAN_EVENTS
    shell: bool = False
    first: bool = False  # KILL_RUN_CMD_FIRST: started just before the kernel ban
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class HostsDenyAction:
    """`[actions.hosts_deny]`: a TCP wrappers line per ban (PortSentry's KILL_HOSTS_DENY)."""

    file: Path = Path("/etc/hosts.deny")
    line: str = "ALL: $TARGET$"
    keep: bool = False  # keep the line after the ban ends (PortSentry never removed it)


@dataclass(frozen=True, slots=True)
class WebhookAction:
    """`[[actions.webhook]]`: an HTTP POST of the event as JSON."""

    url: str
    on: frozenset[Event] = BAN_EVENTS
    timeout: float = 5.0
    retries: int = 3
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NotifyAction:
    """`[[actions.notify]]`: chat and mail messages through Apprise, one per burst. The
    first event after a quiet spell waits `group` seconds for the rest of its burst; then at
    most one message every `every` seconds, each with all the events since the last."""

    urls: tuple[str, ...]
    on: frozenset[Event] = BAN_EVENTS
    group: float = 10.0
    every: float = 300.0
    title: str = "porttrap on $HOST$"


@dataclass(frozen=True, slots=True)
class Actions:
    commands: tuple[CommandAction, ...] = ()
    hosts_deny: HostsDenyAction | None = None
    webhooks: tuple[WebhookAction, ...] = ()
    notify: tuple[NotifyAction, ...] = ()
    max_running: int = 4  # commands and webhooks running at once
    queue: int = 1000  # actions waiting beyond this are dropped (and counted)


class LogFormat(enum.StrEnum):
    PORTTRAP = "porttrap"  # event=... key=value lines
    JSON = "json"  # one JSON object per line
    PORTSENTRY = "portsentry"  # PortSentry's attackalert lines (fail2ban filters match them)
    PORTSENTRY_HISTORY = "portsentry-history"  # portsentry.history lines (fail2ban's own filter)
    NET_BOUNCER = "net-bouncer"  # net-bouncer's "Connection from <ip>" lines


@dataclass(frozen=True, slots=True)
class LogOutput:
    to: str = "stderr"  # "stderr", "syslog" or an absolute file path
    format: LogFormat = LogFormat.PORTTRAP
    facility: str = "daemon"  # syslog only


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    outputs: tuple[LogOutput, ...] = (LogOutput(),)


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    backend: str = "nftables"  # "nftables" | "ipset" | "auto" | "dry-run"
    table: str = "porttrap"  # nftables table name in family inet


@dataclass(frozen=True, slots=True)
class StoreConfig:
    hit_retention: float = 90 * 86400.0  # hits older than this are pruned
    hit_rate: float = 500.0  # hits stored per second at most; the rest counted (bans: all)
    hit_rows: int = 5_000_000  # hits kept at most (about 0.7 GB): the oldest go first


@dataclass(frozen=True, slots=True)
class Protect:
    """The `[protect]` section: who is never banned besides the allow list."""

    # Peers of live SSH sessions to these ports are never banned by a trap hit. Empty: the
    # ports sshd listens on (when porttrap can tell), else 22.
    ssh_ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Listen:
    """An address and TCP port to listen on (an IP address: never a host name)."""

    host: IPAddress
    port: int

    def __str__(self) -> str:
        return (
            f"[{self.host}]:{self.port}" if self.host.version == 6 else f"{self.host}:{self.port}"
        )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Listen | None = None  # the Prometheus endpoint's address; None: no endpoint

    @property
    def url(self) -> str | None:
        return None if self.listen is None else f"http://{self.listen}/metrics"


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The `[fleet]` section: hosts that share bans through PostgreSQL (`porttrap.fleet`)."""

    url: str  # a libpq URL, without a password
    password_file: Path | None = None  # root's alone; None: libpq finds it (~/.pgpass, none)
    name: str | None = None  # this host in the fleet; None: the host name up to its first dot
    publish: bool = True  # share this host's bans
    accept: bool = True  # apply the fleet's bans here


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path = DEFAULT_STATE_DIR
    traps: tuple[Trap, ...] = ()
    banner: bytes = b""  # PORT_BANNER: sent on connect-mode TCP traps before closing
    modes: Modes = field(default_factory=Modes)
    kernel: KernelSensor = field(default_factory=KernelSensor)
    ban: BanPolicy = field(default_factory=BanPolicy)
    allow: AllowList = field(default_factory=AllowList)
    actions: Actions = field(default_factory=Actions)
    log: LogConfig = field(default_factory=LogConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    protect: Protect = field(default_factory=Protect)
    fleet: FleetConfig | None = None  # None: this host alone
    source: Path | None = None  # the file this was read from; None: built-in defaults

    @property
    def database(self) -> Path:
        return self.state_dir / "porttrap.db"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"
