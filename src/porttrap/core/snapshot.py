"""One typed view of the running daemon, made by the core on request: `porttrap status`,
`porttrap top` and the metrics endpoint read this and nothing else.

A snapshot refers to the core's own tables instead of copying them (a scrape with 100,000 bans
must stay cheap), so it is read at once, on the event loop, before the next event changes them.
Half of it is what only the shell can measure (`IoFigures`): it hands those figures to the core,
which puts them beside its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from porttrap.config.schema import KernelSensor, Modes, TrapMode
from porttrap.core.hold import HoldFigures
from porttrap.core.stats import Histogram, Stats
from porttrap.model import Ban, Proto, TrapReport
from porttrap.sensorspec import Ports


@dataclass(frozen=True, slots=True)
class ReportFigures:
    """What the kernel sensor's receiver counted: NFLOG reports received, lost to buffer
    overruns, malformed, not TCP/UDP we can read, and logged to our group by a foreign rule."""

    received: int = 0
    overruns: int = 0
    malformed: int = 0
    unreadable: int = 0
    foreign: int = 0


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """What the hold's queue reader counted (`porttrap.sensors.nfqueue.NfqueueReader`)."""

    queue: int
    received: int = 0  # SYNs the kernel handed to the daemon
    refused: int = 0  # verdicts the kernel refused or that could not be sent
    overruns: int = 0  # times the socket's buffer overflowed (the kernel let SYNs through)
    malformed: int = 0


@dataclass(frozen=True, slots=True)
class FleetFigures:
    """The link to the fleet's database, as the shell measures it (`porttrap.fleet.link`)."""

    connected: bool
    position: int  # the last row of the shared log applied here
    behind: int  # rows of the log not yet read
    outbox: int  # rows waiting to be published
    published: int
    received: int
    refused_rows: int  # hostile or malformed rows, never applied
    publish_lag: float | None  # seconds the last published rows waited in the outbox
    receive_lag: float | None  # seconds from the last row's insert to its read here


@dataclass(frozen=True, slots=True)
class IoFigures:
    """What the shell measures: its I/O parts' counters and the latency histograms."""

    backend: str
    traps: TrapReport
    actions: Mapping[str, Any]  # `Dispatcher.status()`
    actions_enabled: bool = False
    store_backlog: int = 0
    store_failures: int = 0
    restore_skipped: int = 0  # database rows the start could not read, and skipped
    reports: ReportFigures | None = None
    decision: Histogram | None = None  # a hit's arrival to its decision
    to_kernel: Histogram | None = None  # a banning hit's arrival to its ban in the kernel
    fleet: FleetFigures | None = None  # None: this host is in no fleet
    queue: QueueFigures | None = None  # None: the hold is off


@dataclass(frozen=True, slots=True)
class KernelView:
    """The kernel sensor (stealth and advanced modes) as the core keeps it."""

    modes: Mapping[Proto, TrapMode]
    served: Ports
    settings: KernelSensor
    generation: str
    fill: Mapping[str, int]
    rotations: int
    counters: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    started_at: float
    source: Path | None  # the configuration file; None: built-in defaults
    modes: Modes
    active: Sequence[Ban]
    enforced: Callable[[Ban], bool]  # whether a ban belongs in the kernel (`[ban] respond`)
    stats: Stats
    hits_not_stored: int
    hits_sampled: int  # not stored: over [store] hit_rate
    sources_evicted: int  # watched sources forgotten to make room (a flood of new sources)
    past_evicted: int  # addresses whose unverified ban history was forgotten to make room
    bans_held: int  # bans on forgeable evidence held back, over the budgets
    watched: int  # sources whose recent hits the policy remembers
    kernel: KernelView | None
    io: IoFigures
    store_error: str | None = None  # why store writes fail now (None: they succeed)
    store_failing_since: float | None = None
    clock_skew: float = 0.0  # how far the wall clock jumped since the start, in all
    hold: HoldFigures | None = None  # None: the hold is off

    @property
    def permanent(self) -> int:
        return sum(1 for ban in self.active if ban.permanent)
