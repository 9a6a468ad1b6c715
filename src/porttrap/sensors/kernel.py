"""The kernel sensor's reports: trap packets the kernel logged to porttrap's NFLOG group
become hits. It only reports; the rules are the firewall's (`porttrap.firewall.sensor_rules`)
and the decisions the core's (which ports are served, when the block sets rotate).

Each reported packet is classified (`sensors.classify`) into a `Hit` whose `client` says
whether the kernel knew the source as a recent client (the report's NFLOG prefix).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from porttrap.clock import Clock
from porttrap.config.schema import KernelSensor
from porttrap.model import Hit, unmap
from porttrap.sensors.classify import OTHER, classify
from porttrap.sensors.nflog import LoggedPacket, NflogReceiver
from porttrap.sensorspec import CLIENT_PREFIX, PEER_PREFIX, PREFIX

HitHandler = Callable[[Hit], None]


def hit_of(packet: LoggedPacket, at: float) -> Hit | None:
    """The hit a reported packet makes; None when it is not a TCP/UDP packet we can read."""
    probe = classify(packet.payload, packet.family)
    if probe is None:
        return None
    kind = probe.kind
    if kind == OTHER and probe.flags:
        kind = f"{OTHER} {probe.flags}"
    return Hit(
        at=packet.timestamp if packet.timestamp is not None else at,
        source=unmap(probe.source),
        source_port=probe.source_port,
        local=unmap(probe.destination),
        port=probe.destination_port,
        proto=probe.proto,
        kind=kind,
        client=packet.prefix == CLIENT_PREFIX,
        peer=packet.prefix == PEER_PREFIX,
    )


class KernelReports:
    """NFLOG reports in, hits out, from the daemon's event loop."""

    def __init__(self, settings: KernelSensor, on_hit: HitHandler, clock: Clock) -> None:
        self.unreadable = 0  # reported packets that were not TCP/UDP we could read
        self.foreign = 0  # packets logged to our group by a rule that is not porttrap's
        self._on_hit = on_hit
        self._clock = clock
        self.receiver = NflogReceiver(settings.nflog_group, self._on_packet, settings.queue)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the NFLOG group. OSError when another program holds it or netlink is
        unavailable."""
        self.receiver.start(loop)

    def close(self) -> None:
        self.receiver.close()

    def _on_packet(self, packet: LoggedPacket) -> None:
        if not packet.prefix.startswith(PREFIX):
            self.foreign += 1
            return
        hit = hit_of(packet, self._clock.now())
        if hit is None:
            self.unreadable += 1
            return
        self._on_hit(hit)
