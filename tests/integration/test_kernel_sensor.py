"""The kernel sensor end to end: the real daemon in stealth and advanced modes, crafted probes
from other namespaces, and what the kernel and the daemon make of them."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crafted import Probe, answers, send
from daemon_env import (
    ALLOWED,
    ATK4,
    ATK4_B,
    ATK6,
    CLIENT,
    SERVICE,
    SERVICE_PORT,
    SRV4,
    SRV6,
    SRV_CLI,
    Env,
    open_socket,
    tcp_works,
)

from netns import Netns
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

TRAP = 2323  # a TCP and UDP trap port in stealth mode
STEALTH = f"""
[traps]
mode = "stealth"
tcp = ["{TRAP}", "2324"]
udp = ["{TRAP}"]
[allow]
addresses = ["{ALLOWED}"]
"""
ADVANCED = f"""
[traps]
mode = "advanced"
[allow]
addresses = ["{ALLOWED}"]
"""
CLASSES = ["syn", "fin", "null", "xmas", "ack", "maimon", "raw:PU", "udp"]
KINDS = {"raw:PU": "other PU"}


@pytest.fixture
def env_factory(netns_factory: Callable[[], Netns], tmp_path: Path) -> Callable[[str], Env]:
    """A started daemon with `config`; the namespaces go when the test ends."""

    def make(config: str) -> Env:
        env = Env(netns_factory, tmp_path, config)
        env.start()
        return env

    return make


def blocked(env: Env, address: str) -> bool:
    """Whether `address` is in one of the first-packet block sets."""
    version = 6 if ":" in address else 4
    return any(env.in_set(f"block_{g}_v{version}", address) for g in "ab")


def hits(env: Env) -> list[Any]:
    """The hits in `porttrap history --json`, oldest first."""
    found = [entry for entry in env.json("history") if entry["what"] == "hit"]
    return sorted(found, key=lambda hit: hit["at"])


def hits_from(env: Env, address: str) -> list[Any]:
    return [h for h in hits(env) if h["address"] == address]


@pytest.mark.parametrize("version", [4, 6])
def test_every_probe_class_is_reported_classified_and_blocked_at_its_first_packet(
    env_factory: Callable[[str], Env], version: int
) -> None:
    env = env_factory(STEALTH)
    target = SRV4 if version == 4 else SRV6
    sources = {
        kind: (f"192.0.2.{10 + n}" if version == 4 else f"2001:db8:1::{10 + n:x}")
        for n, kind in enumerate(CLASSES)
    }
    send(env.atk, [Probe(src, target, TRAP, kind) for kind, src in sources.items()])
    wait_until(
        lambda: all(blocked(env, s) for s in sources.values()), PATIENCE, "every source blocked"
    )
    wait_until(lambda: len(hits(env)) >= len(CLASSES), PATIENCE, "every hit recorded")
    seen = {h["address"]: h for h in hits(env)}
    for kind, source in sources.items():
        assert seen[source]["kind"] == KINDS.get(kind, kind)
        assert seen[source]["port"] == TRAP
        assert seen[source]["outcome"] == "counted"  # a forgeable probe: one is not enough


def test_a_scanner_seen_again_is_banned_by_the_policy_and_its_next_probes_are_reported(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(STEALTH)
    send(env.atk, [Probe(ATK4, SRV4, TRAP, "syn"), Probe(ATK4, SRV4, 2324, "syn")], inter=0.05)
    wait_until(
        lambda: env.in_set("ban_v4", ATK4), PATIENCE, "scanner banned after its second probe"
    )
    assert sorted(h["outcome"] for h in hits_from(env, ATK4)) == ["banned", "counted"]
    assert not env.service_reachable(env.atk, ATK4)


def test_allow_listed_and_own_addresses_are_never_blocked(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(STEALTH)
    send(env.cli, [Probe(ALLOWED, SRV_CLI, TRAP, "syn"), Probe(ALLOWED, SRV_CLI, TRAP, "fin")])
    # Forged with the host's own address. IPv6 only: the kernel itself drops an IPv4 packet
    # that arrives with one of the host's addresses as its source (a martian).
    send(env.atk, [Probe(SRV6, SRV6, TRAP, "syn")])
    wait_until(lambda: len(hits(env)) >= 3, PATIENCE, "hits recorded")
    assert {h["outcome"] for h in hits(env)} == {"allowed", "own-address"}
    assert not blocked(env, ALLOWED) and not blocked(env, SRV6)
    assert env.service_reachable(env.cli, ALLOWED, SRV_CLI)


def test_forged_probes_in_a_live_clients_name_do_not_cut_it_off(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(STEALTH)
    with open_socket(env.cli, CLIENT, socket.SOCK_STREAM) as live:
        live.settimeout(2)
        live.connect((SRV_CLI, SERVICE_PORT))  # a real client: the kernel records it
        # SYNs go to the catch-all port (tests/integration/test_guard_netns.py), other probes
        # are reported as a client's
        kinds = ("syn", "fin", "null")
        forged = [Probe(CLIENT, SRV4, port, kind) for port in (TRAP, 2324) for kind in kinds] * 3
        send(env.atk, forged, inter=0.02)  # from the attacker's side, with the client's address
        wait_until(lambda: len(hits_from(env, CLIENT)) >= 2, PATIENCE, "forged probes reported")
        assert live.recv(5) == b"hello"  # the live connection still works
    assert {h["outcome"] for h in hits_from(env, CLIENT)} == {"client"}
    assert not blocked(env, CLIENT) and not env.in_set("ban_v4", CLIENT)
    assert all(env.service_reachable(env.cli, CLIENT, SRV_CLI) for _ in range(3))


def test_non_syn_probes_to_unserved_ports_get_no_rst_unless_quiet_is_off(
    env_factory: Callable[[str], Env],
) -> None:
    unserved = 9999  # neither served nor a trap
    env = env_factory(STEALTH)
    assert answers(env.atk, [Probe(ATK4, SRV4, unserved, "ack")], timeout=1) == [None]
    assert answers(env.atk, [Probe(ATK4, SRV4, unserved, "syn")], timeout=PATIENCE) == ["RA"]
    assert not hits_from(env, ATK4)  # not a trap: nothing reported, nobody blocked
    env.stop()
    env.config.write_text(env.config.read_text() + "[kernel]\nquiet = false\n")
    env.start()
    assert answers(env.atk, [Probe(ATK4, SRV4, unserved, "ack")], timeout=PATIENCE) == ["R"]


def test_advanced_mode_traps_unserved_ports_and_follows_services_that_start_and_stop(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(ADVANCED)
    assert env.service_reachable(env.atk, ATK4)  # a served port is never a trap
    assert not hits_from(env, ATK4)
    late = 7070
    server = env.srv.start([sys.executable, "-c", SERVICE % late])
    wait_until(lambda: listening(env.srv, late), PATIENCE, "late service listening")
    # How soon (a read every 0.5 s) is the listeners sensor's benchmark's, not a timed assert
    wait_until(lambda: late in env.nft_set("open_tcp"), PATIENCE, "late service excluded")
    assert tcp_works(env.cli, CLIENT, SRV_CLI, late)
    assert not blocked(env, CLIENT)
    server.kill()
    server.wait()
    wait_until(
        lambda: late not in env.nft_set("open_tcp"), 10 + PATIENCE, "port trapped again"
    )  # held 10 s
    send(env.atk, [Probe(ATK4_B, SRV4, late, "syn")])  # ATK4 is a client now: not blocked
    wait_until(lambda: blocked(env, ATK4_B), PATIENCE, "probe to the closed port blocked")


def test_the_hosts_own_connections_out_are_untouched_in_advanced_mode(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(ADVANCED)
    env.atk.start([sys.executable, "-c", SERVICE % 6000])
    env.atk.start([sys.executable, "-c", UDP_ECHO % 6001])
    wait_until(lambda: tcp_works(env.srv, SRV4, ATK4, 6000), PATIENCE, "outgoing TCP works")
    with open_socket(env.srv, SRV4, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(b"ping", (ATK4, 6001))
        assert sock.recv(10) == b"ping"  # the reply came in on a port nothing serves
    assert not hits_from(env, ATK4)
    assert not blocked(env, ATK4)


def test_after_a_flood_of_forged_sources_a_new_scanner_is_still_blocked(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(STEALTH + "[kernel]\nblock_size = 1024\n")
    flood = [Probe(f"2001:db8:2::{n:x}", SRV6, TRAP, "syn") for n in range(1, 2501)]
    send(env.atk, flood)  # more forged sources than a block generation can hold
    wait_until(
        lambda: kernel_status(env)["block"]["rotations"] >= 1, PATIENCE, "generations rotated"
    )
    send(env.atk, [Probe(ATK6, SRV6, TRAP, "syn"), Probe(ATK4, SRV4, TRAP, "syn")])
    wait_until(lambda: blocked(env, ATK6) and blocked(env, ATK4), PATIENCE, "new scanners blocked")
    assert not env.service_reachable(env.atk, ATK4)
    status = kernel_status(env)
    assert status["events"]["over_total_rate"] + status["events"]["reported"] >= 2500
    assert "rotations (each drops the oldest blocks)" in env.porttrap("status").stdout


def listening(ns: Netns, port: int) -> bool:
    return f":{port} " in ns.run(["ss", "-Htln"])


def kernel_status(env: Env) -> Any:
    return env.json("status")["kernel"]


UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', %d))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(100); s.sendto(data, peer)\n"
)


def test_a_syn_scanner_that_finds_an_open_port_is_no_client(
    env_factory: Callable[[str], Env],
) -> None:
    # SYN, SYN-ACK, then the scanner's kernel answers RST: conntrack calls that `established`,
    # but the handshake never completed, so the source must not be exempt as a client.
    env = env_factory(STEALTH)
    assert answers(env.atk, [Probe(ATK4, SRV4, SERVICE_PORT, "syn")], timeout=PATIENCE) == ["SA"]
    send(env.atk, [Probe(ATK4, SRV4, TRAP, "syn")])
    wait_until(lambda: blocked(env, ATK4), PATIENCE, "the scanner blocked at its first trap packet")
    assert [h["outcome"] for h in hits_from(env, ATK4)] == ["counted"]
