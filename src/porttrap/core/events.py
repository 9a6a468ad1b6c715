"""What happens to the daemon. Every input of the core is one of these frozen values; the shell
makes them from sensor reports, timers, control requests and the results of its commands.

Nothing here holds a socket, a clock or a callback: an event is data, and a test writes the
events of a scenario as a list (see `porttrap.testing.playbook`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from porttrap.config.schema import Config
from porttrap.model import FleetEntry, Hit, IPAddress, IPNetwork, StoredBan
from porttrap.sensorspec import Ports


@dataclass(frozen=True, slots=True)
class Started:
    """The daemon starts: the host's addresses, the bans read from the store (oldest first, as
    `Store.bans_to_restore` gives them), with the kernel sensor the ports this host serves (read
    before porttrap's table is built, so that no service port is ever a trap), the host's
    gateways and the peers of the live SSH sessions (protected from the first hit on), and
    the bans porttrap's table already holds (target, seconds left; None: permanent): those
    the store lacks are kept."""

    own: frozenset[IPAddress]
    stored: Sequence[StoredBan]
    served: Ports | None = None
    gateways: frozenset[IPAddress] = frozenset()
    sessions: frozenset[IPAddress] = frozenset()
    kernel: tuple[tuple[IPNetwork, float | None], ...] = ()  # bans in the kernel, time left


@dataclass(frozen=True, slots=True)
class HitSeen:
    """A sensor saw a trap touched. `arrived` is the shell's monotonic stamp, carried through
    to the kernel apply so that the shell can measure hit-to-kernel latency; the core never
    reads it."""

    hit: Hit
    arrived: float | None = None


@dataclass(frozen=True, slots=True)
class AddressesChanged:
    """The host's own addresses are now `own` (all interfaces, loopback too)."""

    own: frozenset[IPAddress]


@dataclass(frozen=True, slots=True)
class ServedPortsChanged:
    """The ports this host serves changed (the listeners sensor). `mono`: monotonic seconds,
    for how long a port that stopped being served stays out of the traps."""

    ports: Ports
    mono: float


@dataclass(frozen=True, slots=True)
class CountersRead:
    """The kernel sensor's named counters, read at monotonic time `mono` (None: the read
    failed; what does not need them goes on, such as the end of a served port's linger)."""

    counters: dict[str, int] | None
    mono: float


@dataclass(frozen=True, slots=True)
class ServeFailed:
    """The kernel refused `ServePorts`; the core sends them again at the next reading."""


@dataclass(frozen=True, slots=True)
class BlocksRotated:
    """The firewall emptied block generation `emptied` and made it current (`RotateBlocks`)."""

    emptied: str
    mono: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Twice a second. `store_backlog`: store jobs not yet written (the disk's lag); `mono`:
    monotonic seconds, against which the core tells a jump of the wall clock (None: no check)."""

    store_backlog: int = 0
    mono: float | None = None


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """A store write failed (the writer tries it again until it succeeds)."""

    error: str


@dataclass(frozen=True, slots=True)
class StoreRecovered:
    """The failing store write succeeded, after `retries` more tries."""

    retries: int


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The event loop finished the turn in which the core asked for it (`FlushSoon`): the
    changes decided during the turn go to the kernel as one batch."""


@dataclass(frozen=True, slots=True)
class FirewallFailed:
    """The kernel refused an `Apply` or a `Setup` (other than a reload's)."""

    error: str


@dataclass(frozen=True, slots=True)
class FirewallMissing:
    """`CheckFirewall` found porttrap's ruleset gone (a firewall reload flushed it)."""


@dataclass(frozen=True, slots=True)
class FirewallChecked:
    """`CheckFirewall` found porttrap's ruleset present. `damaged`: what differs from what
    porttrap wrote (None: whole); `held`: the targets of the bans the kernel holds, when they
    were listed (None: not this time); `count`: how many, when they were counted."""

    damaged: str | None = None
    held: frozenset[IPNetwork] | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Time to make the kernel hold exactly the active bans again (after a refusal)."""


@dataclass(frozen=True, slots=True)
class AdminBan:
    """`porttrap ban`: without `duration` or `permanent` the escalation decides; `reason`:
    the admin's words (`--reason`), kept with the ban as "manual: REASON"."""

    targets: tuple[IPNetwork, ...]
    duration: float | None = None
    permanent: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AdminUnban:
    """`porttrap unban`; `fleet`: on every host of the fleet (`--fleet`), local bans too;
    `everything`: every active ban (`--all`), with no targets."""

    targets: tuple[IPNetwork, ...]
    fleet: bool = False
    everything: bool = False


@dataclass(frozen=True, slots=True)
class FleetReceived:
    """Rows of the fleet's shared log, read in order (`porttrap.fleet`). `clients`: the peers
    of this host's established connections now, whom no fleet ban may cut off."""

    entries: tuple[FleetEntry, ...]
    clients: frozenset[IPAddress] = frozenset()


@dataclass(frozen=True, slots=True)
class FleetLinkChanged:
    """The link to the fleet's database came up (`up`) or went down; `error`: why it went."""

    up: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SessionsChanged:
    """The peers of the live SSH sessions to this host are now `peers` (the admin's): no trap
    hit ever bans them."""

    peers: frozenset[IPAddress]


@dataclass(frozen=True, slots=True)
class ClientsChanged:
    """The peers of the host's established TCP connections are now `peers` (read every few
    seconds while prefix bans are on): a prefix ban leaves them out."""

    peers: frozenset[IPAddress]


@dataclass(frozen=True, slots=True)
class GatewaysChanged:
    """The host's gateways and next hops (its routes) are now `gateways`: evidence that can
    be forged never bans them."""

    gateways: frozenset[IPAddress]


@dataclass(frozen=True, slots=True)
class ReloadRequested:
    """A valid configuration was read again (SIGHUP, `porttrap reload`)."""

    config: Config


@dataclass(frozen=True, slots=True)
class ReloadInvalid:
    """The configuration read again is invalid: every problem, as text."""

    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReloadPrepared:
    """The shell opened what the new configuration needs (log outputs, metrics listener)."""


@dataclass(frozen=True, slots=True)
class ReloadCommitted:
    """The kernel took the reload's new table, or it needed none: the reload can finish."""


@dataclass(frozen=True, slots=True)
class ReloadFailed:
    """Preparing the reload failed; the shell put back what it had opened."""

    error: str


@dataclass(frozen=True, slots=True)
class ActionsReplaced:
    """The actions of the old settings have finished; the new ones are ready (a reload)."""


@dataclass(frozen=True, slots=True)
class SynHeld:
    """The kernel holds a new source's first SYN to served `port` (NFQUEUE) until porttrap
    answers `packet_id`; `at`: when it was queued (seconds since the epoch)."""

    source: IPAddress
    port: int
    packet_id: int
    at: float


@dataclass(frozen=True, slots=True)
class HoldEnded:
    """The hold of the SYN queued at `at` as `packet_id` is over (`at` tells it from a later
    packet that got the same id after the queue was bound again)."""

    packet_id: int
    at: float


@dataclass(frozen=True, slots=True)
class Stopping:
    """The daemon stops: whatever is pending is applied and recorded."""


Event = (
    Started
    | HitSeen
    | AddressesChanged
    | ServedPortsChanged
    | CountersRead
    | ServeFailed
    | BlocksRotated
    | Tick
    | TurnEnded
    | FirewallFailed
    | FirewallMissing
    | FirewallChecked
    | StoreFailed
    | StoreRecovered
    | Reconcile
    | AdminBan
    | AdminUnban
    | FleetReceived
    | FleetLinkChanged
    | SessionsChanged
    | ClientsChanged
    | GatewaysChanged
    | ReloadRequested
    | ReloadInvalid
    | ReloadPrepared
    | ReloadCommitted
    | ReloadFailed
    | ActionsReplaced
    | SynHeld
    | HoldEnded
    | Stopping
)
