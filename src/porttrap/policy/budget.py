"""How many bans forgeable evidence may make: a token bucket for the whole host and one per
network of the banned sources (/24 for IPv4, /48 for IPv6), each allowing bursts of
`BURST_SECONDS` worth. A forger who names thousands of innocent addresses gets a few bans a
second through; a real scanner is rarely held back, and where the kernel sensor runs it is
blocked at its first packet anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from ipaddress import IPv4Address

from porttrap.model import IPAddress

BURST_SECONDS = 5.0
MAX_PREFIXES = 65_536  # networks with a bucket of their own; the least recently used go first
PREFIX_V4, PREFIX_V6 = 24, 48


class Bucket:
    """`rate` tokens a second, at most `burst` saved up; `take` spends one if there is one."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * BURST_SECONDS)
        self.tokens = self.burst
        self.last = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.last)  # a clock that stepped back adds nothing
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def prefix_of(address: IPAddress) -> tuple[int, int]:
    """The network a source belongs to for the per-network budget, as (version, bits)."""
    if isinstance(address, IPv4Address):
        return 4, int(address) >> (32 - PREFIX_V4)
    return 6, int(address) >> (128 - PREFIX_V6)


class Budget:
    """Host-wide and per-network budgets of bans on unverified evidence."""

    def __init__(self, rate: float, prefix_rate: float, now: float = 0.0) -> None:
        self.rate = rate
        self.prefix_rate = prefix_rate
        self.held = 0  # bans held back, over a budget
        self._all = Bucket(rate, now)
        self._prefixes: OrderedDict[tuple[int, int], Bucket] = OrderedDict()

    def take(self, source: IPAddress, now: float) -> bool:
        """Whether a ban of `source` on unverified evidence fits both budgets now (it spends
        from both only when it does)."""
        prefix = prefix_of(source)
        bucket = self._prefixes.get(prefix)
        if bucket is None:
            if len(self._prefixes) >= MAX_PREFIXES:
                self._prefixes.popitem(last=False)
            bucket = self._prefixes[prefix] = Bucket(self.prefix_rate, now)
        else:
            self._prefixes.move_to_end(prefix)
        if _would_take(bucket, now) and _would_take(self._all, now):
            bucket.take(now)
            self._all.take(now)
            return True
        self.held += 1
        return False


def _would_take(bucket: Bucket, now: float) -> bool:
    elapsed = max(0.0, now - bucket.last)
    return min(bucket.burst, bucket.tokens + elapsed * bucket.rate) >= 1.0
