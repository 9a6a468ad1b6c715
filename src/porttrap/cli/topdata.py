"""What `porttrap top` knows, without a terminal: the daemon's answers parsed into a
`Snapshot`, hits per second computed from successive readings (`Rates`), and whether the
daemon still answers (`Watch`), all summed up in a `View` for `topview.render`. Pure: every
time is a parameter (the reader's monotonic clock).
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

WINDOW = 60.0  # seconds of hits per second kept for the sparkline and the average


@dataclass(frozen=True, slots=True)
class PortRow:
    proto: str
    port: int | None  # None: the ports past the daemon's table, summed
    hits: int


@dataclass(frozen=True, slots=True)
class BanInfo:
    address: str
    banned_at: float
    expires_at: float | None  # None: permanent
    ban_count: int
    reason: str


@dataclass(frozen=True, slots=True)
class SourceRow:
    address: str
    hits: int
    last_seen: float
    last_port: int
    last_proto: str
    ban: BanInfo | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One reading of the daemon: the answers to `status` and `top`, with times as epoch
    seconds (the daemon's clock)."""

    version: str
    pid: int
    backend: str
    trap_ports: int  # (protocol, port) pairs with a trap socket, on any address
    skipped_ports: int  # ... that could not be bound on some address
    modes: tuple[str, ...]  # the kernel sensor's modes other than connect: "tcp advanced"
    started_at: float
    now: float
    hits: int
    bans_active: int
    bans_permanent: int
    bans_made: int
    ports: tuple[PortRow, ...]
    sources: tuple[SourceRow, ...]
    recent_bans: tuple[BanInfo, ...]


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _ban(item: Mapping[str, Any]) -> BanInfo:
    expires = item["expires_at"]
    return BanInfo(
        address=str(item["address"]),
        banned_at=_epoch(item["banned_at"]),
        expires_at=None if expires is None or item.get("permanent") else _epoch(expires),
        ban_count=int(item["ban_count"]),
        reason=str(item["reason"]),
    )


def _port(item: Mapping[str, Any]) -> PortRow:
    port = item["port"]
    return PortRow(str(item["proto"]), None if port is None else int(port), int(item["hits"]))


def _ports_of(traps: Iterable[Mapping[str, Any]]) -> int:
    return len({(t["proto"], t["port"]) for t in traps})


def _modes(kernel: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not kernel:
        return ()
    return tuple(f"{p} {m}" for p, m in sorted(kernel["modes"].items()) if m != "connect")


def parse(status: Mapping[str, Any], top: Mapping[str, Any]) -> Snapshot:
    """The two answers as a `Snapshot`; ValueError (with what is wrong) when either is not
    what this version of porttrap sends."""
    try:
        return Snapshot(
            version=str(status["version"]),
            pid=int(status["pid"]),
            backend=str(status["backend"]),
            trap_ports=_ports_of(status["traps"]["set"]),
            skipped_ports=_ports_of(status["traps"]["skipped"]),
            modes=_modes(status.get("kernel")),
            started_at=_epoch(top["started_at"]),
            now=_epoch(top["now"]),
            hits=int(top["hits"]["total"]),
            bans_active=int(top["bans"]["active"]),
            bans_permanent=int(top["bans"]["permanent"]),
            bans_made=sum(int(n) for n in top["bans"]["made"].values()),
            ports=tuple(_port(p) for p in top["ports"]),
            sources=tuple(
                SourceRow(
                    address=str(s["address"]),
                    hits=int(s["hits"]),
                    last_seen=_epoch(s["last_seen"]),
                    last_port=int(s["last_port"]),
                    last_proto=str(s["last_proto"]),
                    ban=None if s["banned"] is None else _ban(s["banned"]),
                )
                for s in top["sources"]
            ),
            recent_bans=tuple(_ban(b) for b in top["recent_bans"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"unexpected answer from the daemon ({type(err).__name__}: {err})"
        ) from err


# -- rates -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # the reader's monotonic clock
    hits: int


@dataclass
class Rates:
    """Hits per second from successive readings of the daemon's total, over the last
    `window` seconds. Readings need not be evenly spaced: a busy daemon answers late."""

    window: float = WINDOW
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, at: float, hits: int) -> None:
        if self.samples and (hits < self.samples[-1].hits or at <= self.samples[-1].at):
            self.samples.clear()  # the daemon restarted (its counts start again at 0)
        self.samples.append(Sample(at, hits))
        while len(self.samples) > 2 and at - self.samples[1].at >= self.window:
            self.samples.popleft()

    def current(self, step: float) -> float | None:
        """Over the last `step` seconds before the newest reading: readings that come late,
        and then one soon after the other, do not make it jump."""
        return self.series(step, 1)[0]

    def series(self, step: float, count: int) -> list[float | None]:
        """Hits per second in each of the last `count` slots of `step` seconds that end at
        the newest reading, oldest first; None before the first reading. Between two
        readings the hits are taken as evenly spread."""
        if len(self.samples) < 2:
            return [None] * count
        end = self.samples[-1].at
        totals = [self._total_at(end - step * k) for k in range(count, -1, -1)]
        return [
            None if a is None or b is None else (b - a) / step
            for a, b in itertools.pairwise(totals)
        ]

    def _total_at(self, at: float) -> float | None:
        """The total at time `at`, interpolated between the readings around it."""
        times = [s.at for s in self.samples]
        if at < times[0]:
            return None
        i = bisect.bisect_right(times, at)
        if i == len(times):
            return float(self.samples[-1].hits)
        a, b = self.samples[i - 1], self.samples[i]
        return a.hits + (b.hits - a.hits) * (at - a.at) / (b.at - a.at)

    def average(self) -> float | None:
        """Over the whole window (or what there is of it)."""
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        return (last.hits - first.hits) / (last.at - first.at)


@dataclass
class Watch:
    """What the view knows: the newest snapshot, the rates, and whether the daemon answers."""

    rates: Rates = field(default_factory=Rates)
    snapshot: Snapshot | None = None
    failing_since: float | None = None  # monotonic time of the first unanswered reading
    trouble: str = ""

    def answered(self, at: float, snapshot: Snapshot) -> None:
        if self.snapshot is not None and snapshot.started_at != self.snapshot.started_at:
            self.rates.samples.clear()  # another daemon: its counts are not comparable
        self.snapshot = snapshot
        self.rates.add(at, snapshot.hits)
        self.failing_since, self.trouble = None, ""

    def failed(self, at: float, reason: str) -> None:
        if self.failing_since is None:
            self.failing_since = at
        self.trouble = reason

    def view(self, at: float, interval: float) -> View:
        """What to show at time `at` (the reader's monotonic clock), reading every
        `interval` seconds."""
        slots = tuple(self.rates.series(interval, max(1, round(WINDOW / interval))))
        failing_for = None if self.failing_since is None else at - self.failing_since
        return View(self.snapshot, slots, slots[-1], self.rates.average(), interval,
                    failing_for, self.trouble)  # fmt: skip


@dataclass(frozen=True, slots=True)
class View:
    snapshot: Snapshot | None
    history: tuple[float | None, ...]  # hits per second in each `interval` of the last minute
    now: float | None  # hits per second over the last interval
    average: float | None  # hits per second over the last minute
    interval: float
    failing_for: float | None = None  # seconds since the daemon stopped answering
    trouble: str = ""  # why the last reading failed
