"""A Linux bridge in a namespace of its own, and namespaces plugged into it: the fleet tests'
network, one segment where every host (and the database) reaches every other.

Host number N gets 198.51.100.N/24 and 2001:db8:f::N/64 (IPv6 without duplicate address
detection, so both work at once). The database's namespace is host 100 (`DB_HOST`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from netns import Netns

BRIDGE = "br0"
DB_HOST = 100
V4_PREFIX = "198.51.100."
V6_PREFIX = "2001:db8:f::"


@dataclass(frozen=True)
class Plugged:
    """A namespace on the bridge, with its addresses."""

    netns: Netns
    v4: IPv4Address
    v6: IPv6Address


def addresses(host: int) -> tuple[IPv4Address, IPv6Address]:
    """Host number `host`'s two addresses (1 to 254)."""
    assert 1 <= host <= 254, "a host number is 1 to 254"
    # 2001:db8:f::100 for host 100: the same digits as in IPv4, for people reading logs
    return IPv4Address(f"{V4_PREFIX}{host}"), IPv6Address(f"{V6_PREFIX}{host}")


class Bridge:
    """`br0`, up, in a namespace that holds nothing else; `plug` joins another namespace."""

    def __init__(self, netns: Netns) -> None:
        self.netns = netns
        netns.run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        netns.run(["ip", "link", "set", BRIDGE, "up"])

    @classmethod
    def create(cls, make_netns: Callable[[], Netns]) -> Bridge:
        """A bridge in a fresh namespace from `make_netns` (which deletes it after the test)."""
        return cls(make_netns())

    def plug(self, netns: Netns, host: int) -> Plugged:
        """A veth from the bridge to `netns`, which gets host number `host`'s addresses."""
        v4, v6 = addresses(host)
        port, _ = self.netns.veth(netns, [], [f"{v4}/24", f"{v6}/64"])
        self.netns.run(["ip", "link", "set", port, "master", BRIDGE])
        return Plugged(netns, v4, v6)
