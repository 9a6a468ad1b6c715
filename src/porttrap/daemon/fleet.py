"""The shell's part of the fleet: the outbox and the link to the database, between the core's
`Publish` commands and its `FleetReceived` / `FleetLinkChanged` events.

Made at start, after the state directory is checked and before the kernel is touched: a
password file that others can read, or a host name the fleet cannot take, refuses the
start with the fix. The link then runs as one task on the loop until the daemon stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from porttrap import heap, log
from porttrap.clock import Clock
from porttrap.config.fleet import tls_warning
from porttrap.config.schema import Config, FleetConfig
from porttrap.core import commands as c
from porttrap.core import events as e
from porttrap.core.snapshot import FleetFigures
from porttrap.daemon.writer import StoreWriter
from porttrap.fleet.credentials import read_password
from porttrap.fleet.link import FleetLink, LinkFigures
from porttrap.fleet.outbox import Outbox, outgoing
from porttrap.model import FleetEntry, IPAddress
from porttrap.sensors import sessions

BULK = 1000  # rows in one delivery from which the bans go out at once, as a bulk operation


class FleetShell:
    """The outbox, the link and its task; `feed` gives the core its events."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        feed: Callable[[e.Event], None],
        writer: StoreWriter | None = None,
    ) -> None:
        fleet = config.fleet
        assert fleet is not None and fleet.name is not None
        self.config: FleetConfig = fleet
        self._feed = feed
        password = None if fleet.password_file is None else read_password(fleet.password_file)
        self.outbox = Outbox(config.state_dir)
        self.link = FleetLink(
            fleet,
            password,
            self.outbox,
            clock=clock,
            on_entries=self._entries,
            on_link=lambda up, error: self._feed(e.FleetLinkChanged(up, error)),
            forget_after=config.ban.forget_after,
            bulk=lambda: _bulk(writer),
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def figures(self) -> LinkFigures:
        return self.link.figures

    async def start(self) -> None:
        if warning := tls_warning(self.config.url):
            log.event("fleet-insecure", logging.WARNING, warning=warning)
        await self.link.open()
        self._task = asyncio.get_running_loop().create_task(self.link.run())

    def publish(self, command: c.Publish) -> None:
        self.link.publish(outgoing(command.changes, command.fleet_wide))

    def _entries(self, entries: list[FleetEntry]) -> None:
        event = e.FleetReceived(tuple(entries), _clients())
        if len(entries) < BULK:
            self._feed(event)
            return
        self._feed(event)
        self._feed(e.TurnEnded())  # into the kernel now (a snapshot's page: the link paused
        # the cycle collector for the whole snapshot, see porttrap.heap)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.link.close()

    def snapshot(self) -> FleetFigures:
        f = self.figures
        return FleetFigures(
            connected=f.connected,
            position=f.position,
            behind=max(0, f.end - f.position),
            outbox=f.outbox,
            published=f.published,
            received=f.received,
            refused_rows=f.refused_rows,
            publish_lag=f.publish_lag,
            receive_lag=f.receive_lag,
        )

    def status(self) -> dict[str, Any]:
        f = self.figures
        return {
            "name": self.config.name,
            "url": self.config.url,
            "publish": self.config.publish,
            "accept": self.config.accept,
            "connected": f.connected,
            "error": f.error,
            "position": f.position,
            "end": f.end,
            "behind": max(0, f.end - f.position),
            "receive_lag": f.receive_lag,
            "publish_lag": f.publish_lag,
            "outbox": f.outbox,
            "published": f.published,
            "received": f.received,
            "refused_rows": f.refused_rows,
        }


@contextlib.contextmanager
def _bulk(writer: StoreWriter | None) -> Iterator[None]:
    """Around a snapshot: the cycle collector paused (see porttrap.heap), and the history's
    writes wait until the bans are in the kernel."""
    with heap.bulk(), writer.held() if writer is not None else contextlib.nullcontext():
        yield


def _clients() -> frozenset[IPAddress]:
    """The peers of this host's established TCP connections: no fleet ban cuts them off. A
    failed read protects none, and says so."""
    try:
        return sessions.established()
    except OSError as err:
        log.event("fleet-clients-unread", logging.WARNING, error=str(err))
        return frozenset()
