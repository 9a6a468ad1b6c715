"""Real packets against the ipset backend: a TCP listener in a "protected" namespace, a client
in an "outside" namespace, joined by a veth; ipset and iptables run inside the protected one.
A ban must make the client's connect time out even where the host's own rules accept
everything; an unban or an expired timeout must let it through again; teardown must remove
porttrap's sets and chain and nothing else."""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from netns import Netns
from porttrap.firewall.exec import Exec
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.ipset_rules import MAX_TIMEOUT
from porttrap.model import Ban, Unban, show
from porttrap.testing import FakeClock

pytestmark = pytest.mark.kernel

PORT = 8080
CONNECT_TIMEOUT = 1.0
DAY = 86400.0
PROTECTED = ("192.0.2.1", "2001:db8::1")
OUTSIDE = ("192.0.2.2", "2001:db8::2")
IPTABLES = ("iptables", "ip6tables")

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
    backend: IpsetBackend
    clock: FakeClock

    def connects(self, address: str) -> bool:
        """Whether a TCP connect from outside to `address` succeeds (False on a timeout)."""
        with self.outside.inside():
            try:
                socket.create_connection((address, PORT), timeout=CONNECT_TIMEOUT).close()
            except TimeoutError:
                return False
        return True

    def reconnects(self, address: str, attempts: int = 8) -> bool:
        """Whether a connect succeeds within `attempts` tries: after a drop of every packet
        from a source, IPv6 neighbour discovery towards it takes a moment to recover."""
        return any(self.connects(address) for _ in range(attempts))

    def ban(self, address: str, seconds: float | None) -> Ban:
        now = self.clock.now()
        expires = None if seconds is None else now + seconds
        return Ban(ipaddress.ip_network(address), now, expires, 1, "trap:tcp/23")

    def unban(self, address: str) -> Unban:
        return Unban(ipaddress.ip_network(address), self.clock.now(), "test")

    def run(self, *argv: str) -> str:
        return self.protected.run(list(argv))

    def raw(self, iptables: str = "iptables") -> list[str]:
        return self.run(iptables, "-t", "raw", "-S").splitlines()

    def sets(self) -> list[str]:
        return self.run("ipset", "list", "-n").split()

    def timeout(self, set_name: str, element: str) -> int | None:
        """The timeout `ipset save` shows on `element`, or None when it is not in the set."""
        for line in self.run("ipset", "save", set_name).splitlines():
            words = line.split()
            if words[:3] == ["add", set_name, element]:
                return int(words[words.index("timeout") + 1])
        return None


@pytest.fixture
def lab(netns_factory: Callable[[], Netns]) -> Lab:
    protected, outside = netns_factory(), netns_factory()
    protected.veth(outside, [f"{PROTECTED[0]}/24", f"{PROTECTED[1]}/64"],
                   [f"{OUTSIDE[0]}/24", f"{OUTSIDE[1]}/64"])  # fmt: skip
    listener = protected.start([sys.executable, "-c", LISTENER])
    assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
    clock = FakeClock()
    return Lab(protected, outside, IpsetBackend(clock=clock, runner=Exec(protected.name)), clock)


@pytest.mark.parametrize("family", [0, 1], ids=["ipv4", "ipv6"])
def test_ban_beats_accept_rules_and_unban_lets_through(lab: Lab, family: int) -> None:
    target, source, iptables = PROTECTED[family], OUTSIDE[family], IPTABLES[family]
    lab.run(iptables, "-I", "INPUT", "1", "-j", "ACCEPT")  # the host accepts everything
    lab.run(iptables, "-t", "mangle", "-I", "PREROUTING", "1", "-j", "ACCEPT")
    lab.backend.setup([], lab.clock.now())
    assert lab.connects(target)
    lab.backend.apply([lab.ban(source, 3600)], lab.clock.now())
    assert not lab.connects(target)
    other = PROTECTED[1 - family]  # the other family is not touched by this ban
    assert lab.connects(other)
    lab.backend.apply([lab.unban(source)], lab.clock.now())
    assert lab.reconnects(target)


@pytest.mark.parametrize("family", [0, 1], ids=["ipv4", "ipv6"])
def test_an_accept_put_before_the_jump_is_undone_by_setup(lab: Lab, family: int) -> None:
    target, source, iptables = PROTECTED[family], OUTSIDE[family], IPTABLES[family]
    lab.backend.setup([lab.ban(source, None)], lab.clock.now())
    assert lab.backend.present() and not lab.connects(target)
    lab.run(iptables, "-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT")
    assert lab.reconnects(target)  # the accept comes first: the ban is bypassed...
    assert not lab.backend.present()  # ...which the daemon's 5 s check sees...
    lab.backend.setup([lab.ban(source, None)], lab.clock.now())  # ...and reconciles
    assert lab.backend.present() and not lab.connects(target)
    rules = [line for line in lab.raw(iptables) if line.startswith("-A PREROUTING")]
    assert rules == ["-A PREROUTING -j porttrap", "-A PREROUTING -j ACCEPT"]


@pytest.mark.parametrize("network", ["192.0.2.0/28", "2001:db8::/120"])
def test_permanent_network_ban_drops(lab: Lab, network: str) -> None:
    lab.backend.setup([lab.ban(network, None)], lab.clock.now())
    target = PROTECTED[0] if "." in network else PROTECTED[1]
    assert not lab.connects(target)
    set_name = "porttrap_v4" if "." in network else "porttrap_v6"
    assert lab.timeout(set_name, network) == 0


def test_temporary_ban_expires_in_the_kernel(lab: Lab) -> None:
    lab.backend.setup([lab.ban(OUTSIDE[0], 2)], lab.clock.now())
    assert not lab.connects(PROTECTED[0])
    assert lab.reconnects(PROTECTED[0]), "the 2 s ban still drops after 8 connect attempts"
    assert lab.backend.entries() == []


def test_a_long_ban_is_re_armed_on_the_fake_clock(lab: Lab) -> None:
    lab.backend.setup([lab.ban(OUTSIDE[0], 40 * DAY)], lab.clock.now())
    held = lab.timeout("porttrap_v4", OUTSIDE[0])
    assert held is not None and MAX_TIMEOUT - 5 <= held <= MAX_TIMEOUT
    lab.clock.advance(20 * DAY)  # 20 days left: now it fits in ipset's timeout
    lab.backend.maintain(lab.clock.now())  # the daemon's upkeep, every 5 s
    held = lab.timeout("porttrap_v4", OUTSIDE[0])
    assert held is not None and 20 * DAY - 5 <= held <= 20 * DAY
    (entry,) = lab.backend.entries()
    assert entry.remaining is not None and abs(entry.remaining - 20 * DAY) <= 5
    assert not lab.connects(PROTECTED[0])


def test_teardown_removes_what_it_made_and_nothing_else(lab: Lab) -> None:
    lab.run("ipset", "create", "other", "hash:ip", "family", "inet")
    lab.run("ipset", "add", "other", "198.51.100.9")
    for iptables in IPTABLES:
        lab.run(iptables, "-t", "raw", "-N", "mine")
        lab.run(iptables, "-t", "raw", "-A", "PREROUTING", "-j", "mine")
        lab.run(iptables, "-I", "INPUT", "1", "-j", "ACCEPT")
    before = {iptables: lab.raw(iptables) for iptables in IPTABLES}
    filters = {iptables: lab.run(iptables, "-S") for iptables in IPTABLES}

    lab.backend.setup([lab.ban(OUTSIDE[0], None), lab.ban(OUTSIDE[1], 60)], lab.clock.now())
    assert lab.sets() == ["other", "porttrap_v4", "porttrap_v6"]
    assert lab.raw()[-3:] == [
        "-A PREROUTING -j porttrap",
        "-A PREROUTING -j mine",
        "-A porttrap -m set --match-set porttrap_v4 src -j DROP",
    ]
    assert not lab.connects(PROTECTED[0]) and not lab.connects(PROTECTED[1])

    lab.backend.teardown()
    assert lab.sets() == ["other"]
    assert lab.run("ipset", "list", "other").rstrip().endswith("198.51.100.9")
    for iptables in IPTABLES:
        assert lab.raw(iptables) == before[iptables]
        assert lab.run(iptables, "-S") == filters[iptables]
    assert lab.reconnects(PROTECTED[0]) and lab.reconnects(PROTECTED[1])
    assert not lab.backend.present() and lab.backend.entries() == []
    lab.backend.teardown()  # nothing of porttrap's left: still fine
    assert lab.sets() == ["other"]


def test_setup_replaces_the_contents_in_place(lab: Lab) -> None:
    lab.backend.setup([lab.ban(OUTSIDE[0], None)], lab.clock.now())
    lab.run("ipset", "add", "porttrap_v4", "198.51.100.99")  # a stray element
    lab.backend.setup([lab.ban("198.51.100.7", 3600)], lab.clock.now())
    assert [show(e.target) for e in lab.backend.entries()] == ["198.51.100.7"]
    assert lab.sets() == ["porttrap_v4", "porttrap_v6"]  # the temporary sets are gone
    assert lab.connects(PROTECTED[0])
