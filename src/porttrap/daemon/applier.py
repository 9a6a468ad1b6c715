"""Applies decisions: kernel first, then the store (on the writer thread), then the log.

Decisions made within one turn of the event loop go to the kernel as one batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from porttrap import log
from porttrap.clock import Clock
from porttrap.errors import FirewallError
from porttrap.firewall.base import FirewallBackend
from porttrap.model import Ban, Change, Unban, show
from porttrap.store.base import Store

RECONCILE_DELAY = 5.0
BULK = 1000  # more changes than this in one batch are logged as a summary
Job = Callable[[], None]


class ChangeListener(Protocol):
    """Told of each batch around its kernel apply (the actions: `actions.Dispatcher`). Both
    calls must return at once: a ban never waits for an action."""

    def before_kernel(self, batch: Sequence[Change]) -> None: ...

    def after_kernel(self, batch: Sequence[Change]) -> None: ...


class Listeners:
    """Several listeners told in order (the actions, then the daemon's counters)."""

    def __init__(self, *listeners: ChangeListener) -> None:
        self.listeners = listeners

    def before_kernel(self, batch: Sequence[Change]) -> None:
        for listener in self.listeners:
            listener.before_kernel(batch)

    def after_kernel(self, batch: Sequence[Change]) -> None:
        for listener in self.listeners:
            listener.after_kernel(batch)


def run_now(job: Job) -> None:
    job()


def always(_ban: Ban) -> bool:
    return True


def log_change(change: Change, level: int = logging.INFO) -> None:
    if isinstance(change, Unban):
        log.event("unban", level, address=show(change.target), reason=change.reason)
        return
    name = "permanent-ban" if change.permanent else "ban"
    log.event(
        name,
        level,
        address=show(change.target),
        until=log.iso(change.expires_at),
        ban_count=change.ban_count,
        reason=change.reason,
    )


class Applier:
    """Batches changes per loop turn; on a kernel error, rebuilds the kernel state later."""

    def __init__(
        self,
        firewall: FirewallBackend,
        store: Store,
        clock: Clock,
        active: Callable[[float], list[Ban]],
        *,
        write: Callable[[Job], None] = run_now,
        enforced: Callable[[Ban], bool] = always,
        listener: ChangeListener | None = None,
    ) -> None:
        """`enforced`: whether a ban goes to the kernel (`Policy.enforced`: a protocol that
        responds with "command" leaves banning to its command); every ban is recorded."""
        self.firewall = firewall
        self.enforced = enforced
        self.listener = listener  # actions: `first` commands before the kernel, others after
        self.store = store
        self.write = write  # where store writes run: StoreWriter.submit in the daemon
        self.clock = clock
        self.active = active
        self._pending: list[Change] = []
        self._scheduled = False
        self._reconcile: asyncio.TimerHandle | None = None

    def submit(self, changes: Sequence[Change]) -> None:
        """Queue changes; they reach the kernel at the end of this loop turn."""
        if not changes:
            return
        self._pending.extend(changes)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def apply_now(self, changes: Sequence[Change]) -> None:
        """Apply at once, with anything already queued (for admin requests that want the
        result)."""
        self._pending.extend(changes)
        self.flush()

    def flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        if self.listener is not None:
            self.listener.before_kernel(batch)
        started = self.clock.monotonic()
        kernel = [c for c in batch if isinstance(c, Unban) or self.enforced(c)]
        try:
            if kernel:
                self.firewall.apply(kernel, self.clock.now())
        except FirewallError as err:
            log.event("firewall-error", logging.ERROR, error=str(err), retry_in=RECONCILE_DELAY)
            self._schedule_reconcile()
        kernel_ms = round((self.clock.monotonic() - started) * 1000, 1)
        self._record(batch)
        self._log(batch)
        if self.listener is not None:
            self.listener.after_kernel(batch)
        level = logging.INFO if len(batch) > BULK else logging.DEBUG
        log.event("applied", level, changes=len(batch), kernel_ms=kernel_ms)

    def _record(self, batch: Sequence[Change]) -> None:
        bans = [c for c in batch if isinstance(c, Ban)]
        unbans = [c for c in batch if isinstance(c, Unban)]

        def job() -> None:
            if bans:
                self.store.add_bans(bans)
            if unbans:
                self.store.lift(unbans)

        self.write(job)

    def _log(self, batch: Sequence[Change]) -> None:
        """One line per change; a bulk request (an admin's ban list) is summed up in one line
        per kind at info level, with the per-address lines at debug level."""
        bulk = len(batch) > BULK
        if not bulk or log.LOGGER.isEnabledFor(logging.DEBUG):
            for change in batch:
                log_change(change, logging.DEBUG if bulk else logging.INFO)
        if bulk:
            kinds = Counter(
                "unban" if isinstance(c, Unban) else "permanent-ban" if c.permanent else "ban"
                for c in batch
            )
            for kind, count in sorted(kinds.items()):
                log.event(f"bulk-{kind}", count=count)

    def _schedule_reconcile(self) -> None:
        if self._reconcile is None:
            loop = asyncio.get_running_loop()
            self._reconcile = loop.call_later(RECONCILE_DELAY, self.reconcile)

    def kernel_bans(self, now: float) -> list[Ban]:
        """The active bans that belong in the kernel."""
        return [ban for ban in self.active(now) if self.enforced(ban)]

    def reconcile(self) -> None:
        """Make the kernel hold exactly the active bans (one transaction)."""
        self._reconcile = None
        now = self.clock.now()
        try:
            bans = self.kernel_bans(now)
            self.firewall.setup(bans, now)
            log.event("reconciled", bans=len(bans))
        except FirewallError as err:
            log.event("firewall-error", logging.ERROR, error=str(err), retry_in=RECONCILE_DELAY)
            self._schedule_reconcile()
