"""The store seam: where hits and bans are kept so that they survive restarts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from porttrap.model import Ban, Hit, IPNetwork, Outcome, StoredBan, Unban
from porttrap.report.figures import Period, ReportFigures

__all__ = ["HistoryEntry", "Store", "StoredBan"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of `porttrap history`: a hit or a ban, newest first."""

    at: float
    what: str  # "hit" | "ban" | "unban"
    hit: Hit | None = None
    outcome: Outcome | None = None
    ban: Ban | None = None
    unban_reason: str | None = None


class Store(Protocol):
    """Persistent hits and bans. A write that returned survives a crash of porttrap (SQLite
    WAL, synchronous=NORMAL); a power cut may lose the last few, as it loses the kernel's bans."""

    def add_hits(self, hits: Sequence[tuple[Hit, Outcome]]) -> None: ...

    def add_bans(self, bans: Sequence[Ban]) -> None: ...

    def lift(self, unbans: Sequence[Unban]) -> None:
        """Mark every active ban on each target as lifted at `unban.at`."""
        ...

    def record(self, bans: Sequence[Ban], unbans: Sequence[Unban]) -> None:
        """`add_bans(bans)` then `lift(unbans)`, in one transaction: when it raises, neither
        happened, so that a retried write never records a ban twice (escalation counts each)."""
        ...

    def active_bans(self, now: float) -> list[Ban]:
        """Bans not lifted and not expired at `now` (permanent ones included)."""
        ...

    def bans_to_restore(self, now: float, since: float) -> list[StoredBan]:
        """What the daemon needs on start, in one read, oldest first: every ban made since
        `since` (lifted ones too: escalation) and every ban still active at `now`."""
        ...

    def bans_since(self, since: float) -> list[StoredBan]:
        """Every ban with banned_at >= since, oldest first, lifted ones too (with when and why
        they were lifted, so that escalation can leave them out)."""
        ...

    def history(self, target: IPNetwork | None = None, limit: int = 100) -> list[HistoryEntry]: ...

    def prune_hits(self, before: float, keep: int | None = None) -> int:
        """Delete hits older than `before`, then the oldest stored beyond the newest `keep`
        (when given); returns how many."""
        ...

    def counts(self, now: float) -> tuple[int, int]:
        """(active bans, of which permanent)."""
        ...

    def report_figures(self, period: Period, top: int) -> ReportFigures:
        """What `porttrap report` shows for `period`: the timeline, the `top` most hit ports
        and busiest sources, the scan classes and the bans, from one snapshot; only reads.
        The store aggregates (90 days may hold millions of hits): only figures come back."""
        ...

    @property
    def bad_rows(self) -> int:
        """Rows read so far that could not be read as what they hold, and were skipped (each
        counted once): damage, a hand edit, or a value out of bounds (`porttrap.store.rows`)."""
        ...

    def close(self) -> None: ...
