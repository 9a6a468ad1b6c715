"""Real packets against the nftables backend: a TCP listener in a "protected" namespace, a
client in an "outside" namespace, joined by a veth. A ban must make the client's connect time
out; an unban or an expired timeout must let it through again."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from netns import Netns, in_host_netns
from porttrap.firewall.nftables import NftablesBackend
from porttrap.model import Ban, Unban
from porttrap.testing import FakeClock

pytestmark = pytest.mark.kernel

PORT = 8080
CONNECT_TIMEOUT = 1.0
PROTECTED = ("192.0.2.1", "2001:db8::1")
OUTSIDE = ("192.0.2.2", "2001:db8::2")

LISTENER = f"""
import socket
server = socket.create_server(("::", {PORT}), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
while True:
    connection, _ = server.accept()
    connection.close()
"""


@dataclass
class Lab:
    protected: Netns
    outside: Netns
    backend: NftablesBackend
    clock: FakeClock

    def connects(self, address: str) -> bool:
        """Whether a TCP connect from outside to `address` succeeds (False on a timeout)."""
        with self.outside.inside():
            try:
                socket.create_connection((address, PORT), timeout=CONNECT_TIMEOUT).close()
            except TimeoutError:
                return False
        return True

    def ban(self, address: str, seconds: float | None) -> Ban:
        now = self.clock.now()
        expires = None if seconds is None else now + seconds
        return Ban(ipaddress.ip_network(address), now, expires, 1, "trap:tcp/23")

    def unban(self, address: str) -> Unban:
        return Unban(ipaddress.ip_network(address), self.clock.now(), "test")

    def tables(self) -> list[str]:
        return self.protected.run(["nft", "list", "tables"]).splitlines()


@pytest.fixture
def lab(netns_factory: Callable[[], Netns]) -> Lab:
    protected, outside = netns_factory(), netns_factory()
    protected.veth(outside, [f"{PROTECTED[0]}/24", f"{PROTECTED[1]}/64"],
                   [f"{OUTSIDE[0]}/24", f"{OUTSIDE[1]}/64"])  # fmt: skip
    listener = protected.start([sys.executable, "-c", LISTENER])
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    with protected.inside():
        assert not in_host_netns(), "refusing to bind libnftables to the host's namespace"
        backend = NftablesBackend()
    return Lab(protected, outside, backend, FakeClock())


@pytest.mark.parametrize(("target", "source"), [(PROTECTED[0], OUTSIDE[0]),
                                                (PROTECTED[1], OUTSIDE[1])])  # fmt: skip
def test_ban_drops_and_unban_lets_through(lab: Lab, target: str, source: str) -> None:
    lab.backend.setup([], lab.clock.now())
    assert lab.connects(target)
    lab.backend.apply([lab.ban(source, 3600)], lab.clock.now())
    assert not lab.connects(target)
    lab.backend.apply([lab.unban(source)], lab.clock.now())
    assert lab.connects(target)


@pytest.mark.parametrize("network", ["192.0.2.0/28", "2001:db8::/120"])
def test_permanent_network_ban_drops(lab: Lab, network: str) -> None:
    lab.backend.setup([lab.ban(network, None)], lab.clock.now())
    target = PROTECTED[0] if "." in network else PROTECTED[1]
    assert not lab.connects(target)


def test_temporary_ban_expires_in_the_kernel(lab: Lab) -> None:
    lab.backend.setup([lab.ban(OUTSIDE[0], 2)], lab.clock.now())
    assert not lab.connects(PROTECTED[0])
    for _ in range(8):
        if lab.connects(PROTECTED[0]):
            break
    else:
        pytest.fail("the 2 s ban still drops after 8 connect attempts")
    assert lab.backend.entries() == []


def test_only_porttrap_table_and_none_after_teardown(lab: Lab) -> None:
    assert lab.tables() == []
    lab.backend.setup([lab.ban(OUTSIDE[0], None)], lab.clock.now())
    assert lab.tables() == ["table inet porttrap"]
    lab.backend.teardown()
    assert lab.tables() == []
    assert lab.connects(PROTECTED[0])
