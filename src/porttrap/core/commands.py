"""What the core wants done. Every output of the core is one of these frozen values; the shell
(`porttrap.daemon.shell`) carries them out, in order, against the firewall, the store, the
sensors, the actions and the log. Nothing here does anything.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from porttrap.config.schema import Config, Trap
from porttrap.core.events import Event
from porttrap.model import Ban, Change, Hit, IPAddress, IPNetwork, Outcome
from porttrap.sensorspec import Ports, SensorState


class SetupReason(enum.StrEnum):
    START = "start"
    RECONCILE = "reconcile"  # after a refusal, or a ruleset that vanished
    RELOAD = "reload"  # the table's rules changed; a refusal refuses the reload


# -- asking the shell for events ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlushSoon:
    """Feed `TurnEnded` once the loop has finished its current turn: the changes of a turn go
    to the kernel as one batch."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """Feed `event` after `delay` seconds."""

    delay: float
    event: Event


# -- the firewall --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """Replace porttrap's ruleset in one transaction: exactly `bans`, and the kernel sensor as
    `sensor` says (None: no sensor). On refusal the shell feeds `FirewallFailed`, or
    `ReloadFailed` for a reload's."""

    bans: Sequence[Ban]
    now: float
    reason: SetupReason
    sensor: SensorState | None = None


@dataclass(frozen=True, slots=True)
class Apply:
    """Bans and unbans in one kernel transaction. `arrivals`: the shell's stamps of the hits
    that caused these bans (for its latency histogram)."""

    changes: Sequence[Change]
    now: float
    arrivals: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Expire:
    """These bans ran out: a backend without kernel timeouts removes them now."""

    bans: Sequence[Ban]
    now: float


@dataclass(frozen=True, slots=True)
class CheckFirewall:
    """Is porttrap's ruleset still in the kernel, and whole? The shell feeds `FirewallMissing`
    when it is gone, else `FirewallChecked` (with the bans it holds when `entries`, their
    number when `count`). Reads only: a repair is a `Setup` the core then returns."""

    entries: bool = False
    count: bool = False


@dataclass(frozen=True, slots=True)
class Maintain:
    """The backend's periodic upkeep (ipset re-arms bans longer than its timeouts hold)."""

    now: float


@dataclass(frozen=True, slots=True)
class ServePorts:
    """The kernel sensor must never trap these ports (served now, or lately)."""

    ports: Ports


@dataclass(frozen=True, slots=True)
class SetGateways:
    """The host's gateways changed: the kernel's peer set holds these (a forged probe in their
    name must never block them)."""

    gateways: frozenset[IPAddress]


@dataclass(frozen=True, slots=True)
class RotateBlocks:
    """Empty block generation `empty` and make it current; the shell feeds `BlocksRotated`."""

    empty: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Answer the held SYN `packet_id`: let it through (`accept`) or drop it."""

    packet_id: int
    accept: bool


@dataclass(frozen=True, slots=True)
class Release:
    """`source` waited out a hold: the kernel adds it to its released set, so that its next
    connections are not held (for `[kernel] hold_memory`); then its held SYN `packet_id` goes
    through the kernel's rules once more (NF_REPEAT), where a block the kernel put on the
    source meanwhile drops it, whether the daemon heard of the trap touch or not. Should the
    kernel refuse the release, the SYN is let through as it is (it would be held again)."""

    source: IPAddress
    packet_id: int


@dataclass(frozen=True, slots=True)
class StopHolding:
    """A reload turned the hold off: unbind the queue (every held SYN was answered first)."""


# -- the store -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordHits:
    hits: Sequence[tuple[Hit, Outcome]]


@dataclass(frozen=True, slots=True)
class RecordChanges:
    """Bans to add and unbans to mark as lifted, as one write."""

    changes: Sequence[Change]


@dataclass(frozen=True, slots=True)
class RecordHidden:
    """A hidden probe for `history`: the SYN `source` sent to served `port` at `at` was held
    and dropped, because the source touched a trap (a hit of class `kind`) meanwhile."""

    source: IPAddress
    port: int
    kind: str
    at: float


@dataclass(frozen=True, slots=True)
class PruneHits:
    """Delete the hits older than `before`, then the oldest beyond the newest `keep`."""

    before: float
    keep: int


# -- the fleet -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """Share these bans and unbans with the fleet: they go to the outbox on disk, then to the
    shared log. `fleet_wide`: the targets of unbans an admin lifted on every host."""

    changes: Sequence[Change]
    fleet_wide: frozenset[IPNetwork] = frozenset()


# -- the actions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActionsStart:
    """The active bans at start: hosts.deny is made to hold exactly their lines."""

    active: Sequence[Ban]


@dataclass(frozen=True, slots=True)
class ActionsHit:
    hit: Hit
    outcome: Outcome
    ban: Ban | None


@dataclass(frozen=True, slots=True)
class ActionsBefore:
    """The `first = true` commands of these changes, started before the kernel batch."""

    changes: Sequence[Change]


@dataclass(frozen=True, slots=True)
class ActionsAfter:
    """Every other action of these changes, now that the kernel has them."""

    changes: Sequence[Change]


@dataclass(frozen=True, slots=True)
class ActionsExpired:
    bans: Sequence[Ban]


@dataclass(frozen=True, slots=True)
class ReplaceActions:
    """New action settings (a reload): the running actions finish first, then the shell feeds
    `ActionsReplaced` (the bans active by then go to the new actions)."""

    config: Config


# -- sensors and reload ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateTraps:
    """The connect-mode trap sockets are now these (kept, bound or closed as needed)."""

    traps: tuple[Trap, ...]
    banner: bytes


@dataclass(frozen=True, slots=True)
class UpdateSessions:
    """The SSH ports whose live sessions are the admin's are now these (empty: sshd's, or
    22): the sessions sensor follows them."""

    ssh_ports: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UpdateCatchAll:
    """The catch-all listener for clients' redirected SYNs is now on `port` (0: none)."""

    port: int
    banner: bytes


@dataclass(frozen=True, slots=True)
class PrepareReload:
    """Open what the new configuration needs and can fail to open (log outputs, the metrics
    listener), then feed `ReloadPrepared`, or undo and feed `ReloadFailed`."""

    config: Config
    changed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Reloaded:
    """The reload is done (or there was nothing to do): the shell answers and logs it."""

    changed: tuple[str, ...]


# -- logs and answers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Log:
    """One log event (`porttrap.log.event`)."""

    name: str
    level: int
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LogChanges:
    """A line per ban and unban; a batch of more than `BULK` is summed up in a line per kind,
    the lines per change then at debug level."""

    changes: Sequence[Change]


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to the control request being handled; `after_store`: send it once the store
    holds what was just decided (`porttrap bans` right after `porttrap ban` must show it)."""

    payload: Mapping[str, object]
    after_store: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """The control request being handled is refused: `message`, and `problems` (a
    configuration's, one each). `usage`: the request itself was wrong (an admin's ban of a
    protected address), rather than refused by the state of things (a reload)."""

    message: str
    problems: tuple[str, ...] = ()
    usage: bool = False


Command = (
    FlushSoon
    | Schedule
    | Setup
    | Apply
    | Expire
    | CheckFirewall
    | Maintain
    | ServePorts
    | SetGateways
    | RotateBlocks
    | Verdict
    | Release
    | StopHolding
    | RecordHits
    | RecordHidden
    | Publish
    | RecordChanges
    | PruneHits
    | ActionsStart
    | ActionsHit
    | ActionsBefore
    | ActionsAfter
    | ActionsExpired
    | ReplaceActions
    | UpdateTraps
    | UpdateSessions
    | UpdateCatchAll
    | PrepareReload
    | Reloaded
    | Log
    | LogChanges
    | Answer
    | Refuse
)
