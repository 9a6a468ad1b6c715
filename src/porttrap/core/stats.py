"""What the daemon counts for people: `porttrap top` and the metrics endpoint read it (through
the core's `Snapshot`).

Counters only grow (they start at 0 with the daemon, as Prometheus expects); what a flood of
forged sources could grow without end is bounded: ports past `MAX_PORTS` distinct (protocol,
port) pairs count as port "other", and the per-source table keeps the `MAX_SOURCES` busiest.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from porttrap.model import Ban, Change, Hit, IPAddress, Outcome, Unban

MAX_PORTS = 1024  # (protocol, port) pairs counted one by one; a full-range scan would be 65,536
MAX_SOURCES = 4096  # sources counted one by one; on overflow the quieter half is forgotten
OTHER_PORT = -1
# Seconds. A decision takes microseconds; a ban reaches the kernel within a loop turn.
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5)  # fmt: skip

HitKey = tuple[str, int, str, str]  # protocol, port (OTHER_PORT past MAX_PORTS), kind, outcome


@dataclass
class Histogram:
    """Counts per bucket (not cumulative; the last bucket is +Inf), sum and count."""

    bounds: tuple[float, ...] = LATENCY_BOUNDS
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class Source:
    hits: int = 0
    last_seen: float = 0.0
    last_port: int = 0
    last_proto: str = ""


class Stats:
    """Updated by the daemon on each hit and each applied batch; read by `top` and metrics."""

    def __init__(self) -> None:
        self.hits: Counter[HitKey] = Counter()
        self.sources: dict[IPAddress, Source] = {}
        self.bans: Counter[str] = Counter()  # "temporary" | "permanent": bans made
        self.bans_by: Counter[tuple[str, str]] = Counter()  # (kind, evidence): bans made
        self.unbans: Counter[str] = Counter()  # "lifted" (unban, allow list...) | "expired"
        self._ports: set[tuple[str, int]] = set()
        self.sources_forgotten = 0

    def hit(self, hit: Hit, outcome: Outcome) -> None:
        port = self._port(hit.proto.value, hit.port)
        self.hits[(hit.proto.value, port, hit.kind, outcome.value)] += 1
        source = self.sources.get(hit.source)
        if source is None:
            if len(self.sources) >= MAX_SOURCES:
                self._forget_quiet_sources()
            source = self.sources[hit.source] = Source()
        source.hits += 1
        source.last_seen = hit.at
        source.last_port = hit.port
        source.last_proto = hit.proto.value

    def _port(self, proto: str, port: int) -> int:
        key = (proto, port)
        if key in self._ports:
            return port
        if len(self._ports) < MAX_PORTS:
            self._ports.add(key)
            return port
        return OTHER_PORT

    def _forget_quiet_sources(self) -> None:
        """Keep the busier half: amortised, a forged flood of new sources costs O(log n) each."""
        ranked = sorted(self.sources.items(), key=lambda item: item[1].hits, reverse=True)
        keep = ranked[: MAX_SOURCES // 2]
        self.sources_forgotten += len(ranked) - len(keep)
        self.sources = dict(keep)

    def applied(self, batch: Sequence[Change]) -> None:
        """A batch of bans and unbans went to the kernel."""
        for change in batch:
            if isinstance(change, Ban):
                kind = "permanent" if change.permanent else "temporary"
                self.bans[kind] += 1
                self.bans_by[(kind, change.evidence.value)] += 1
            elif isinstance(change, Unban):
                self.unbans["lifted"] += 1  # reasons are free text: no label

    def expired(self, bans: Sequence[Ban]) -> None:
        self.unbans["expired"] += len(bans)

    def top_ports(self, limit: int) -> list[tuple[str, int, int]]:
        """(protocol, port, hits), most hit first; port OTHER_PORT sums the uncounted ones."""
        per_port: Counter[tuple[str, int]] = Counter()
        for (proto, port, _kind, _outcome), count in self.hits.items():
            per_port[(proto, port)] += count
        return [(proto, port, n) for (proto, port), n in per_port.most_common(limit)]

    def top_sources(self, limit: int) -> list[tuple[IPAddress, Source]]:
        ranked = sorted(self.sources.items(), key=lambda i: (i[1].hits, i[1].last_seen))
        return ranked[::-1][:limit]

    def by_outcome(self) -> dict[str, int]:
        """Hits per outcome ("banned", "counted" ...)."""
        counts: Counter[str] = Counter()
        for (_proto, _port, _kind, outcome), count in self.hits.items():
            counts[outcome] += count
        return dict(counts)

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())
