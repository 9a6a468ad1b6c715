"""The hold's I/O (docs/hold.md): the NFQUEUE reader whose SYNs the core holds, the verdicts
and releases the core decides, and the heartbeat that lets the kernel hold SYNs only while
this reader reads. Nothing here decides anything: `porttrap.core.hold` does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from porttrap import log
from porttrap.clock import Clock
from porttrap.config.schema import Config
from porttrap.core import commands as c
from porttrap.core import events as e
from porttrap.core.snapshot import QueueFigures
from porttrap.errors import FirewallError, PorttrapError
from porttrap.firewall.base import SensorBackend
from porttrap.model import IPAddress
from porttrap.sensors.nfqueue import NfqueueReader, QueuedPacket, syn_of
from porttrap.sensorspec import spec_from_config

MAXLEN = 1024  # SYNs the kernel queues at most; with the fail-open flag, more pass unheld


def holds(config: Config) -> bool:
    """Whether `config` holds new sources' first SYNs (TCP in stealth or advanced mode)."""
    return spec_from_config(config).hold


class HoldQueue:
    """The queue reader while the hold is on. `feed` takes the core's events (`SynHeld`)."""

    def __init__(
        self, clock: Clock, sensor: SensorBackend, feed: Callable[[e.Event], None]
    ) -> None:
        self.clock = clock
        self.sensor = sensor
        self._feed = feed
        self.reader: NfqueueReader | None = None
        self._released: list[tuple[IPAddress, int]] = []  # (source, its held SYN)
        self._beat_failed = False
        self._release_failed = False

    def open(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        """Bind `[kernel] hold_queue`; PorttrapError when the kernel refuses, with why."""
        queue = config.kernel.hold_queue
        reader = NfqueueReader(queue, self._on_packet, maxlen=MAXLEN, fail_open=True)
        try:
            reader.start(loop)
        except OSError as err:
            raise PorttrapError(
                f"[kernel] hold cannot receive the held SYNs on NFQUEUE {queue}: {err} (set "
                'another [kernel] hold_queue, or hold = "0")'
            ) from err
        self.reader = reader

    def close(self) -> None:
        """Unbind: the kernel then drops what is still queued, so the core answers first."""
        self._send_released()
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def _on_packet(self, packet: QueuedPacket) -> None:
        found = syn_of(packet)
        if found is None:  # not a SYN we can read: not ours to hold
            assert self.reader is not None
            self.reader.verdict(packet.packet_id, accept=True)
            return
        now = self.clock.now()
        at = now if packet.timestamp is None else min(packet.timestamp, now)
        self._feed(e.SynHeld(found[0], found[1], packet.packet_id, at))

    # -- the core's commands -------------------------------------------------------------

    def verdict(self, command: c.Verdict) -> None:
        if self.reader is not None:
            self.reader.verdict(command.packet_id, command.accept)

    def release(self, command: c.Release) -> None:
        """Released sources go to the kernel together, once the loop turn is over; then
        their SYNs go through the kernel's rules once more (NF_REPEAT: a source it blocked
        meanwhile is dropped there). Refused, the SYNs are let through as they are: sent
        through the rules again, they would only be held once more."""
        if not self._released:
            asyncio.get_running_loop().call_soon(self._send_released)
        self._released.append((command.source, command.packet_id))

    def _send_released(self) -> None:
        batch, self._released = self._released, []
        if not batch:
            return
        released = self._release([source for source, _ in batch])
        if self.reader is not None:
            for _, packet_id in batch:
                self.reader.verdict(packet_id, accept=True, repeat=released)

    def _release(self, sources: list[IPAddress]) -> bool:
        try:
            self.sensor.release(sources)
        except FirewallError as err:  # held once more next time: nothing worse
            if not self._release_failed:  # once until it works again: a flood fills the set
                log.event("hold-release-failed", logging.WARNING, sources=len(sources),
                          error=str(err))  # fmt: skip
            self._release_failed = True
            return False
        self._release_failed = False
        return True

    def heartbeat(self) -> None:
        """Tell the kernel the reader reads (the `hold_ready` element, 2 s): from the loop
        that reads the queue, and only while it does, so a stalled daemon stops holding."""
        if self.reader is None or not self.reader.reading:
            return
        try:
            self.sensor.hold_ready()
        except FirewallError as err:  # the table is being rebuilt: nothing is held meanwhile
            if not self._beat_failed:
                log.event("hold-heartbeat-failed", logging.WARNING, error=str(err))
            self._beat_failed = True
            return
        self._beat_failed = False

    def figures(self) -> QueueFigures | None:
        reader = self.reader
        if reader is None:
            return None
        return QueueFigures(
            reader.queue, reader.received, reader.refused, reader.overruns, reader.malformed
        )
