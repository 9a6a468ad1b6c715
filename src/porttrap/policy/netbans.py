"""The active network bans, found for an address by prefix length rather than one by one.

An admin makes a few network bans; prefix bans (`porttrap.policy.prefix`) make thousands,
and every hit asks whether a network ban covers its source. Looked up one length at a time
(the lengths present, a handful), the answer costs the same at 2,000 network bans as at 2.
"""

from __future__ import annotations

from collections import Counter
from ipaddress import IPv4Address, IPv4Network, IPv6Network

from porttrap.model import Ban, IPAddress, IPNetwork

SCAN_BELOW = 16  # fewer network bans than this: one pass is faster than the lookups


class NetBans(dict[IPNetwork, Ban]):
    """A dict of network bans that knows which prefix lengths it holds, per IP version. Only
    `[key] = `, `pop` and `del` change it (what the policy uses)."""

    def __init__(self) -> None:
        super().__init__()
        self._lengths: Counter[tuple[int, int]] = Counter()

    def __setitem__(self, target: IPNetwork, ban: Ban) -> None:
        if target not in self:
            self._lengths[target.version, target.prefixlen] += 1
        super().__setitem__(target, ban)

    def __delitem__(self, target: IPNetwork) -> None:
        super().__delitem__(target)
        self._drop(target)

    def pop(self, target: IPNetwork, default: Ban | None = None) -> Ban | None:  # type: ignore[override]
        if target not in self:
            return default
        ban = super().pop(target)
        self._drop(target)
        return ban

    def _drop(self, target: IPNetwork) -> None:
        key = (target.version, target.prefixlen)
        self._lengths[key] -= 1
        if self._lengths[key] <= 0:
            del self._lengths[key]

    def covering(self, address: IPAddress, now: float) -> Ban | None:
        """The active ban of a network holding `address`, if any."""
        if len(self) < SCAN_BELOW:
            return next((b for t, b in self.items() if address in t and b.active(now)), None)
        version, value = address.version, int(address)
        full = 32 if isinstance(address, IPv4Address) else 128
        net = IPv4Network if version == 4 else IPv6Network
        for held_version, length in self._lengths:
            if held_version != version:
                continue
            shift = full - length
            ban = self.get(net((value >> shift << shift, length)))
            if ban is not None and ban.active(now):
                return ban
        return None
