"""An in-memory `Store` that behaves like the SQLite one (the contract suite runs on both)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from porttrap.errors import StoreError
from porttrap.model import Ban, Hit, IPNetwork, Outcome, Unban
from porttrap.report.figures import Period, ReportFigures
from porttrap.store import history
from porttrap.store.base import HistoryEntry, StoredBan
from porttrap.testing import memory_report


@dataclass(slots=True)
class _BanRecord:
    id: int
    ban: Ban
    lifted_at: float | None = None
    lifted_reason: str | None = None

    def active(self, now: float) -> bool:
        return self.lifted_at is None and self.ban.active(now)

    def stored(self) -> StoredBan:
        return StoredBan(self.ban, self.lifted_at, self.lifted_reason)


class MemoryStore:
    """A `Store` in lists, for unit tests. `closed` is set by `close()`, after which every
    call raises `StoreError` as a closed database would."""

    def __init__(self) -> None:
        self._hits: list[tuple[int, Hit, Outcome]] = []
        self._bans: list[_BanRecord] = []
        self._next_hit = 1
        self._next_ban = 1
        self.closed = False
        self.bad_rows = 0  # every row here is a value checked as it came in

    def add_hits(self, hits: Sequence[tuple[Hit, Outcome]]) -> None:
        self._check_open()
        for hit, outcome in hits:
            self._hits.append((self._next_hit, hit, outcome))
            self._next_hit += 1

    def add_bans(self, bans: Sequence[Ban]) -> None:
        self._check_open()
        for ban in bans:
            self._bans.append(_BanRecord(self._next_ban, ban))
            self._next_ban += 1

    def lift(self, unbans: Sequence[Unban]) -> None:
        """Mark each ban on `unban.target` that is active at `unban.at` as lifted then."""
        self._check_open()
        for unban in unbans:
            for record in self._bans:
                if (
                    record.ban.target == unban.target
                    and record.ban.banned_at <= unban.at
                    and record.active(unban.at)
                ):
                    record.lifted_at, record.lifted_reason = unban.at, unban.reason

    def record(self, bans: Sequence[Ban], unbans: Sequence[Unban]) -> None:
        """All or nothing, as the SQLite store's transaction: the only error, a closed store,
        is raised before anything is changed."""
        self._check_open()
        self.add_bans(bans)
        self.lift(unbans)

    def prune_hits(self, before: float, keep: int | None = None) -> int:
        self._check_open()
        kept = [row for row in self._hits if row[1].at >= before]
        if keep is not None:
            kept = kept[max(0, len(kept) - keep) :]
        pruned, self._hits = len(self._hits) - len(kept), kept
        return pruned

    def active_bans(self, now: float) -> list[Ban]:
        """The newest ban of each target that is neither lifted nor over at `now`: a newer
        ban replaces an older one, as in the kernel, even when the newer one is shorter."""
        self._check_open()
        newest: dict[IPNetwork, _BanRecord] = {}
        for record in self._oldest_first():
            if record.lifted_at is None:
                newest.pop(record.ban.target, None)
                newest[record.ban.target] = record
        return [record.ban for record in newest.values() if record.active(now)]

    def bans_to_restore(self, now: float, since: float) -> list[StoredBan]:
        self._check_open()
        return [
            r.stored() for r in self._oldest_first() if r.ban.banned_at >= since or r.active(now)
        ]

    def bans_since(self, since: float) -> list[StoredBan]:
        self._check_open()
        return [r.stored() for r in self._oldest_first() if r.ban.banned_at >= since]

    def counts(self, now: float) -> tuple[int, int]:
        """(active bans, of which permanent), counted as `active_bans` lists them."""
        active = self.active_bans(now)
        return len(active), sum(1 for ban in active if ban.permanent)

    def history(self, target: IPNetwork | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Hits, bans and lifts within `target` (None: all), newest first."""
        self._check_open()
        hits = (history.hit_entry(seq, hit, outcome) for seq, hit, outcome in self._hits)
        bans = (history.ban_entry(r.id, r.ban) for r in self._bans)
        lifts = (
            history.unban_entry(r.id, r.stored()) for r in self._bans if r.lifted_at is not None
        )
        streams = [_newest_first(target, stream) for stream in (hits, bans, lifts)]
        return history.newest_first(streams, limit)

    def report_figures(self, period: Period, top: int) -> ReportFigures:
        """The report's figures, counted in Python as SQLite counts them (memory_report)."""
        self._check_open()
        hits = [hit for _seq, hit, _outcome in self._hits]
        bans = [record.stored() for record in self._oldest_first()]
        return memory_report.figures(hits, bans, period, top)

    def close(self) -> None:
        self.closed = True

    def _oldest_first(self) -> list[_BanRecord]:
        return sorted(self._bans, key=lambda record: (record.ban.banned_at, record.id))

    def _check_open(self) -> None:
        if self.closed:
            raise StoreError("cannot use the memory store: it is closed")


def _newest_first(scope: IPNetwork | None, stream: Iterator[history.Keyed]) -> list[history.Keyed]:
    return sorted(
        (keyed for keyed in stream if history.within(scope, keyed[1])),
        key=lambda keyed: keyed[0],
        reverse=True,
    )
