"""The hold's kernel half (firewall/hold_rules.py) in a real kernel, in namespaces: which SYNs go
to the NFQUEUE, and that every way the daemon can be missing fails open. The daemon's queue
reader is not built yet (docs/hold.md): a bound reader that never answers stands in for one
that is stalled, and the backend's `hold_ready` for its heartbeat."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from crafted import Probe, answers, send
from daemon_env import ATK4, ATK4_B, ATK6, SERVE, SERVICE_PORT, SRV4, SRV6, Env
from hold_env import QUEUE, TABLE, damage, hold_ports

from netns import Netns, in_host_netns
from porttrap import netlink
from porttrap.config.loader import load_text
from porttrap.firewall.kernel import Nft
from porttrap.firewall.nftables import NftablesBackend
from porttrap.firewall.objects import NftObjects
from porttrap.model import Proto
from porttrap.sensors import nflog
from porttrap.sensorspec import SensorState, spec_from_config
from waiting import PATIENCE, holds_for, wait_until

pytestmark = pytest.mark.kernel

NOW = 1_800_000_000.0
# [kernel] last: a test adds keys to it
CONFIG = f'[allow]\naddresses = ["{ATK4_B}"]\n[traps]\nmode = "advanced"\n[kernel]\nhold = "5ms"\n'
SERVED = {Proto.TCP: frozenset({SERVICE_PORT})}
SILENCE = 1.0  # seconds a probe waits for an answer where none is expected
NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG, NFQA_CFG_CMD, NFQNL_CFG_CMD_BIND = 3, 2, 1, 1


@dataclass
class Held:
    """A protected namespace with porttrap's table (hold on, no daemon) and a service on
    SERVICE_PORT; an attacker's namespace linked to it."""

    srv: Netns
    atk: Netns
    backend: NftablesBackend

    def counters(self) -> dict[str, int]:
        found = self.backend.sensor_counters()
        return {name: found[name] for name in ("held", "hold_over", "hold_idle")}

    def syn(self, source: str, timeout: float = PATIENCE) -> str | None:
        target = SRV6 if ":" in source else SRV4
        return answers(self.atk, [Probe(source, target, SERVICE_PORT, "syn")], timeout)[0]

    def ready_elements(self) -> str:
        return self.srv.run(["nft", "list", "set", "inet", TABLE, "hold_ready"])


@pytest.fixture
def held(netns_factory: Callable[[], Netns]) -> Held:
    srv, atk = netns_factory(), netns_factory()
    srv.veth(atk, [f"{SRV4}/24", f"{SRV6}/64"], [f"{ATK4}/24", f"{ATK4_B}/24", f"{ATK6}/64"])
    srv.start([sys.executable, "-c", SERVE, str(SERVICE_PORT)])
    with srv.inside():
        assert not in_host_netns(), "refusing to bind libnftables to the host's namespace"
        backend = NftablesBackend(TABLE, nft=Nft(), objects=NftObjects())
    state = SensorState(spec_from_config(load_text(CONFIG, None)), SERVED)
    backend.setup([], NOW, state)
    return Held(srv, atk, backend)


@pytest.fixture
def silent_reader(held: Held) -> Iterator[socket.socket]:
    """A program bound to the queue that never gives a verdict: a stalled daemon."""
    with held.srv.inside():
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER)
    body = netlink.NFGENMSG.pack(socket.AF_UNSPEC, 0, QUEUE)
    body += netlink.attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0))
    kind = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
    sock.send(netlink.message(kind, netlink.NLM_F_REQUEST | netlink.NLM_F_ACK, 1, body))
    code = netlink.error_code(netlink.split(sock.recv(4096))[0][0][2])
    assert code == 0, f"binding NFQUEUE {QUEUE}: {netlink.errno_text(code or 0)}"
    yield sock
    sock.close()


@pytest.mark.parametrize("source", [ATK4, ATK6])
def test_with_nobody_on_the_queue_a_new_clients_syn_is_held_and_let_through(
    held: Held, source: str
) -> None:
    held.backend.hold_ready()  # the daemon says it is ready, but nothing reads the queue
    assert held.syn(source) == "SA"  # bypass: fail open
    assert held.counters() == {"held": 1, "hold_over": 0, "hold_idle": 0}


def test_stealth_mode_holds_too(held: Held, silent_reader: socket.socket) -> None:
    stealth = CONFIG.replace('mode = "advanced"', 'mode = "stealth"\ntcp = ["23"]')
    held.backend.setup([], NOW, SensorState(spec_from_config(load_text(stealth, None)), SERVED))
    held.backend.hold_ready()
    assert held.syn(ATK4, timeout=SILENCE) is None  # held: the silent reader gives no verdict
    assert held.counters()["held"] == 1


def test_a_bound_reader_holds_the_syn_and_its_end_lets_the_next_through(
    held: Held, silent_reader: socket.socket
) -> None:
    held.backend.hold_ready()
    assert held.syn(ATK4, timeout=SILENCE) is None  # held: no verdict comes
    assert held.counters()["held"] == 1
    silent_reader.close()  # the daemon killed: the kernel drops what it held, then bypasses
    held.backend.hold_ready()
    assert held.syn(ATK6) == "SA"
    assert held.counters()["held"] == 2


def test_a_stalled_reader_stops_holding_when_its_heartbeat_ends(
    held: Held, silent_reader: socket.socket
) -> None:
    held.backend.hold_ready()
    wait_until(lambda: "tcp" not in held.ready_elements(), PATIENCE, "heartbeat expired")
    assert held.syn(ATK4) == "SA"  # bound but silent (SIGSTOP): not held any more
    assert held.counters() == {"held": 0, "hold_over": 0, "hold_idle": 1}


def test_known_sources_are_never_held_even_with_a_stalled_reader(
    held: Held, silent_reader: socket.socket
) -> None:
    """Released, a recent client, allow-listed: their SYNs never reach the queue, whose
    reader would never answer."""
    held.backend.hold_ready()
    held.backend.release([ipaddress.ip_address(ATK4)])
    held.srv.run(["nft", "add", "element", "inet", TABLE, "clients_v6", f"{{ {ATK6} }}"])
    for source in (ATK4, ATK6, ATK4_B):
        assert held.syn(source) == "SA", source
    assert held.counters() == {"held": 0, "hold_over": 0, "hold_idle": 0}


def test_over_the_rate_syns_pass_unheld_and_counted(held: Held) -> None:
    state = SensorState(spec_from_config(load_text(CONFIG + "hold_rate = 1\n", None)), SERVED)
    held.backend.setup([], NOW, state)
    held.backend.hold_ready()
    # 20 new sources at once, one token a second: only a 19 s stall of the sender would let
    # every one of them be held.
    sources = [f"2001:db8:1::{n:x}" for n in range(0x100, 0x114)]
    send(held.atk, [Probe(source, SRV6, SERVICE_PORT, "syn") for source in sources])
    wait_until(lambda: sum(held.counters().values()) == 20, PATIENCE, "every SYN counted")
    counted = held.counters()
    assert counted["hold_over"] >= 1 and counted["hold_idle"] == 0


def test_the_held_ports_follow_the_served_ones(held: Held) -> None:
    held.backend.serve({Proto.TCP: frozenset({SERVICE_PORT + 1})})
    assert _ports(held.srv) == {SERVICE_PORT + 1}
    held.backend.serve({Proto.TCP: frozenset({SERVICE_PORT, SERVICE_PORT + 1})})
    assert _ports(held.srv) == {SERVICE_PORT, SERVICE_PORT + 1}
    held.backend.hold_ready()
    assert held.syn(ATK4) == "SA"
    assert held.counters()["held"] == 1


def test_the_hold_survives_the_daemons_rebuild_after_a_flush(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(CONFIG)
    env.start()
    wait_until(lambda: str(SERVICE_PORT) in hold_ports(env), PATIENCE, "service held")
    env.srv.run(["nft", "flush", "ruleset"])  # what `systemctl restart nftables` does
    wait_until(lambda: str(SERVICE_PORT) in hold_ports(env), PATIENCE, "the hold rebuilt")
    chain = env.srv.run(["nft", "list", "chain", "inet", TABLE, "hold"])
    assert f"queue num {QUEUE} bypass" in chain
    assert "@released_v4 return" in chain
    # The daemon's checks (every 5 s) find the rebuilt table whole, verdict rule included.
    holds_for(lambda: damage(env) == (1, 0), 11, "rebuilt once, found whole since")


def _ports(ns: Netns) -> set[int]:
    listed = json.loads(ns.run(["nft", "-j", "list", "set", "inet", TABLE, "hold_tcp"]))
    found = next(item["set"] for item in listed["nftables"] if "set" in item)
    return set(found.get("elem", []))


@pytest.mark.parametrize(("hold", "sent"), [('"5ms"', True), ('"0"', False)])
def test_with_the_hold_on_a_lone_trap_report_is_sent_at_once(
    held: Held, monkeypatch: pytest.MonkeyPatch, hold: str, sent: bool
) -> None:
    """NFLOG gathers reports (nflog.QTHRESH) and sends a lone one when its flush timer fires
    (porttrap asks for 10 ms; 4 to 8 ms late at HZ=250): longer than a 5 ms hold, whose SYN
    would pass before its source's trap touch is heard of. With the hold on, the report rules
    say `queue-threshold 1`. Here the group's timer is 10 minutes: only that threshold can
    send the report."""
    config = CONFIG.replace('hold = "5ms"', f"hold = {hold}")
    held.backend.setup([], NOW, SensorState(spec_from_config(load_text(config, None)), SERVED))
    monkeypatch.setattr(nflog, "TIMEOUT", 60_000)  # in 1/100 s
    with held.srv.inside():
        sock, early = nflog.open_nflog_socket(load_text(config, None).kernel.nflog_group, 1 << 20)
    with sock:
        assert early == []
        send(held.atk, [Probe(ATK4, SRV4, 23, "syn")])  # a trap port: reported, blocked
        sock.setblocking(True)
        sock.settimeout(PATIENCE if sent else SILENCE)
        try:
            reports = nflog.parse_messages(sock.recv(65536))
        except TimeoutError:
            reports = []
    assert [str(r.prefix) for r in reports] == (["porttrap:new"] if sent else [])
