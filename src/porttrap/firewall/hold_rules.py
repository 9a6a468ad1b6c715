"""The hold of the first probe (`[kernel] hold`, docs/hold.md), as nft commands in porttrap's
table: the kernel half. Pure, like `porttrap.firewall.sensor_rules`, whose input chain sends
here and whose table these objects join (one transaction; `porttrap flush` removes them).

    input, priority -150 (the sensor's chain, after its blocked and trap rules):
      a TCP SYN to a served port (@hold_tcp)         -> `hold`
    hold:
      the host's own addresses, the allow list,      -> leave it (never held: 0 added latency)
        a recent client (@clients), a source released
        within [kernel] hold_memory (@released)
      the daemon not ready (@hold_ready empty)        -> leave it, counted `hold_idle`
      over [kernel] hold_rate a second                -> leave it, counted `hold_over`
      anyone else                                     -> counted `held`, NFQUEUE hold_queue,
                                                         `bypass`: accepted while no program
                                                         listens on the queue

Fail open at every step: the queue's `bypass` lets a SYN through when no program is bound to
the queue (porttrap stopped or killed); the heartbeat set `hold_ready` (an element the daemon's
reader refreshes, HOLD_READY_TIME seconds each) stops the holding within that time when the
daemon stalls (SIGSTOP: bound but silent, where bypass does not help); the named limit keeps
the queue's load bounded under a flood of forged sources (the rest pass unheld, counted). A
full queue drops unless the reader asks the kernel to fail open (NFQA_CFG_F_FAIL_OPEN): the
daemon's side.

The queue verdict is a rule of its own, last in `hold`, written apart from the table's batch
(`queue_rule`): kernels built without nft_queue (CONFIG_NFT_QUEUE) refuse it, and the backend
then writes the same verdict as xtables' NFQUEUE target through nft_compat
(`porttrap.firewall.objects.NftObjects.add_queue_rule`). Until it is written the chain holds
nothing: the gap fails open too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from porttrap.firewall.nftsets import FAMILIES, dynamic_set, elements_command
from porttrap.firewall.watch_rules import WatchRules
from porttrap.model import IPAddress
from porttrap.sensorspec import HOLD_READY_TIME, SensorSpec

CHAIN = "hold"
SERVED = "hold_tcp"  # TCP ports served now: where a SYN may be held
READY = "hold_ready"  # the daemon's heartbeat: element `tcp` while its reader works
OVER = "hold_over"  # the named limit: packets over [kernel] hold_rate
# A source that sent what only a scanner's discovery sends (below) is suspect this long: a SYN
# of it is dropped at the hold, or at its end (NF_REPEAT), instead of let through
SUSPECT_TIME = 1
_SYN = "tcp flags & (fin | syn | rst | ack) == syn"
_NOT_SYN = "tcp flags & (fin | syn | rst | ack) != syn"


class HoldRules:
    """The hold's nft commands for table `table` (family inet); none when the spec holds
    nothing (`SensorSpec.hold`)."""

    def __init__(self, table: str, spec: SensorSpec, watch: WatchRules) -> None:
        self.spec = spec
        self._where = f"inet {table}"
        self._watch = watch
        self.on = spec.hold

    def create(self, served: frozenset[int]) -> list[str]:
        """The limit, the sets and the chain with every rule but the verdict (`queue_rule`).
        The chain comes before the sensor's input rules, which refer to it."""
        if not self.on:
            return []
        rate, where = self.spec.kernel.hold_rate, self._where
        commands = [
            f"add limit {where} {OVER} {{ rate over {rate}/second burst {rate} packets; }}",
            f"add set {where} {SERVED} {{ type inet_service; }}",
            f"add set {where} {READY} {{ type inet_proto; flags timeout; }}",
        ]
        if served:
            commands.append(elements_command("add", where, SERVED, _ports(served)))
        memory, size = math.ceil(self.spec.kernel.hold_memory), self.spec.kernel.client_size
        for version, _, kind in FAMILIES:
            commands.append(dynamic_set(where, f"released_v{version}", kind, memory, size))
            commands.append(dynamic_set(where, f"suspect_v{version}", kind, SUSPECT_TIME, size))
        commands.append(f"add chain {where} {CHAIN}")
        return commands + self._rules()

    def input_rules(self) -> list[str]:
        """For the sensor's input chain: a SYN to a served port goes to `hold`."""
        if not self.on:
            return []
        match = f"meta l4proto tcp fib daddr type local {_SYN} tcp dport @{SERVED}"
        return [*self._suspect_rules(), self._rule("input", f"{match} goto {CHAIN}")]

    def _suspect_rules(self) -> list[str]:
        """Last in the input chain (what reaches them is no trap packet, and not part of a
        connection): a TCP segment that is not a SYN, to this host, that conntrack knows no
        connection of (nmap's discovery sends an ACK to port 80 beside its SYN to 443), or an
        ICMP timestamp request (the other probe of that discovery) makes its source suspect.
        Only the hold chain reads the set: no other packet is touched by it."""
        rules = []
        for version, protocol, _ in FAMILIES:
            update = f"update @suspect_v{version} {{ {protocol} saddr }}"
            family = f"meta nfproto ipv{version}"
            rules.append(self._rule("input", f"{family} meta l4proto tcp fib daddr type local "
                                    f"{_NOT_SYN} ct state new,invalid {update}"))  # fmt: skip
        rules.append(
            self._rule("input", "icmp type timestamp-request update @suspect_v4 { ip saddr }")
        )
        return rules

    def queue_rule(self) -> list[str]:
        """The verdict, last in the chain, in a batch of its own (see the module doc)."""
        if not self.on:
            return []
        return [self._rule(CHAIN, f"queue num {self.spec.kernel.hold_queue} bypass")]

    def _rules(self) -> list[str]:
        known = ["fib saddr type local"]
        known += [f"{protocol} saddr @allow_v{v}" for v, protocol, _ in FAMILIES]
        known += self._watch.client_matches()
        rules = [self._rule(CHAIN, f"{match} return") for match in known]
        rules += [
            self._rule(CHAIN, f'{protocol} saddr @suspect_v{v} counter name "hold_suspect" drop')
            for v, protocol, _ in FAMILIES
        ]
        released = [f"{protocol} saddr @released_v{v}" for v, protocol, _ in FAMILIES]
        rules += [self._rule(CHAIN, f"{match} return") for match in released]
        return [
            *rules,
            self._rule(CHAIN, f'meta l4proto != @{READY} counter name "hold_idle" return'),
            self._rule(CHAIN, f'limit name "{OVER}" counter name "hold_over" return'),
            self._rule(CHAIN, 'counter name "held"'),
        ]

    def _rule(self, chain: str, text: str) -> str:
        return f"add rule {self._where} {chain} {text}"

    # -- changes while running ----------------------------------------------------------

    def set_served(self, before: frozenset[int], now: frozenset[int]) -> list[str]:
        """The served TCP ports were `before` and are `now`: the difference, added and deleted."""
        if not self.on:
            return []
        commands = []
        if opened := now - before:
            commands.append(elements_command("add", self._where, SERVED, _ports(opened)))
        if closed := before - now:
            commands.append(elements_command("delete", self._where, SERVED, _ports(closed)))
        return commands

    def release(self, addresses: Iterable[IPAddress]) -> list[str]:
        """Sources whose held SYN was let through: not held again for [kernel] hold_memory
        (the set's timeout; an address already there keeps its older one)."""
        by_version: dict[int, list[str]] = {4: [], 6: []}
        for address in sorted(set(addresses), key=lambda a: (a.version, int(a))):
            by_version[address.version].append(address.compressed)
        return [
            elements_command("add", self._where, f"released_v{v}", keys)
            for v, keys in by_version.items()
            if keys
        ]

    def ready(self) -> list[str]:
        """The heartbeat: element `tcp` of `hold_ready`, for HOLD_READY_TIME seconds from now.
        Added with a short timeout, deleted, added again: older kernels (Debian 12's 6.1) keep
        an element's timeout on `add`, and deleting one that is absent fails."""
        set_of = f"element {self._where} {READY}"
        return [
            f"add {set_of} {{ tcp timeout 1s }}",
            f"delete {set_of} {{ tcp }}",
            f"add {set_of} {{ tcp timeout {HOLD_READY_TIME}s }}",
        ]


def _ports(ports: Iterable[int]) -> list[str]:
    return [str(port) for port in sorted(ports)]
