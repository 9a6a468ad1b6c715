"""What the policy remembers of each source's recent trap hits, bounded whatever the traffic.

A source is watched from its first hit until its window closes or it is banned. A flood of
forged sources would make a new one per packet: at most `MAX_WATCHED` are kept, and the one
hit least recently gives way (counted in `evicted`). A real scanner hits again within moments,
so it stays; a forged source sends one or two packets and is gone.
"""

from __future__ import annotations

from collections import OrderedDict

from porttrap.model import IPAddress, Proto

MAX_WATCHED = 65_536  # sources with recent hits held at once (about 40 MB: 600 bytes each)

TrapKey = tuple[Proto, int]


class Recent:
    """What the window holds of one source: each trap port it touched, with the time of the
    latest hit there; the times of its latest `confirm` hits of any kind (oldest first); and
    when it last completed a handshake to a trap (which proves its address). All stay small: a
    source is banned once it has touched enough ports, and `hits` holds `confirm` times."""

    __slots__ = ("hits", "keep", "ports", "verified_at")

    def __init__(self, confirm: int) -> None:
        self.ports: dict[TrapKey, float] = {}
        # A list, not a deque(maxlen=...): 88 bytes against 760 for two floats, per source.
        self.hits: list[float] = []
        self.keep = max(confirm, 1)
        self.verified_at: float | None = None

    def add(self, key: TrapKey, now: float, horizon: float, verified: bool) -> int:
        """Note a hit on `key`; returns the distinct ports touched after `horizon`."""
        ports = self.ports
        ports[key] = now
        hits = self.hits
        hits.append(now)
        if len(hits) > self.keep:
            del hits[: len(hits) - self.keep]
        if verified:
            self.verified_at = now
        for stale in [k for k, at in ports.items() if at <= horizon]:
            del ports[stale]
        return len(ports)

    def confirmed(self, horizon: float) -> bool:
        """Whether the latest `confirm` hits all came after `horizon`: at least `confirm`
        hits within the window."""
        hits = self.hits
        return len(hits) == self.keep and hits[0] > horizon

    def proven(self, horizon: float) -> bool:
        """Whether the source completed a handshake to a trap within the window: its other
        hits then come from the address they name, and a ban rests on verified evidence."""
        return self.verified_at is not None and self.verified_at > horizon

    @property
    def last(self) -> float:
        """When the source last hit a trap (once it has gone a window, it is forgotten)."""
        return self.hits[-1]


class Watch:
    """The sources with recent hits, least recently hit first."""

    def __init__(self, confirm: int, limit: int = MAX_WATCHED) -> None:
        self.confirm = confirm
        self.limit = limit
        self.evicted = 0  # sources forgotten to make room (a flood of new sources)
        self._sources: OrderedDict[IPAddress, Recent] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sources)

    def of(self, source: IPAddress) -> Recent:
        """The source's recent hits, made when it has none; it becomes the most recent."""
        sources = self._sources
        recent = sources.get(source)
        if recent is not None:
            sources.move_to_end(source)
            return recent
        if len(sources) >= self.limit:
            sources.popitem(last=False)
            self.evicted += 1
        recent = sources[source] = Recent(self.confirm)
        return recent

    def pop(self, source: IPAddress) -> Recent | None:
        return self._sources.pop(source, None)

    def resize(self, confirm: int) -> None:
        """A reloaded `confirm`: each source's hit times, kept to the new size."""
        if confirm != self.confirm:
            self.confirm = confirm
            keep = max(confirm, 1)
            for recent in self._sources.values():
                recent.keep = keep
                del recent.hits[: max(0, len(recent.hits) - keep)]

    def forget_quiet(self, horizon: float) -> int:
        """Forget the sources whose last hit is at or before `horizon`; returns how many
        are still watched."""
        sources = self._sources
        for source in [s for s, recent in sources.items() if recent.last <= horizon]:
            del sources[source]
        return len(sources)
