"""Safe against a forger (issue 12), end to end: the real daemon in its namespace, forged packets
(scapy, or hand-built frames for floods) from the attacker's, and what the daemon, its database
and the kernel make of them. Each test replays one attack of the issue and checks that it is
refused or bounded:

- forged probes and datagrams ban briefly, never for good (while real connects do);
- the host's peers (a resolver it talks to, its gateways, link-local neighbours) and its live
  clients are never banned by packets forged in their name, and the host keeps talking to them;
- a connect scan that first became a client is still banned, on verified evidence;
- the peer of a live admin SSH session is never banned while the session lives;
- a client touching one trap is spared, touching two is banned;
- a flood of thousands of forged sources makes few bans, and bounded memory and rows.

Namespaces and addresses: tests/integration/daemon_env.py; documentation addresses only.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import socket
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from crafted import Probe, send
from daemon_env import (
    ALLOWED,
    ATK4,
    ATK6,
    CLIENT,
    SERVE,
    SERVICE_PORT,
    SRV4,
    SRV6,
    SRV_CLI,
    BanAnnouncements,
    Env,
    announcements,
    open_socket,
    tcp_works,
)
from floods import TCP, UDP, Sender

from netns import Netns
from porttrap.config.schema import DEFAULT_TCP_TRAPS
from porttrap.units import parse_ports
from waiting import pause, wait_until

pytestmark = pytest.mark.kernel

TRAP, TRAP_2 = 2323, 2324  # TCP traps (stealth, connect), or ports nothing serves (advanced)
UDP_TRAP = 6969
# Forged in the names of bystanders the host has never heard of
INNOCENT4, INNOCENT6 = "203.0.113.7", "2001:db8:7::7"
STRANGER4, STRANGER6 = "203.0.113.66", "2001:db8:7::66"
# IPv6 on the clients' link, added by `client_v6`
SRV_CLI6, CLIENT6 = "2001:db8:2::1", "2001:db8:2::2"
FAST_BANS = """
[ban]
time = "2s"
escalation = "exponential"
permanent_after = 3
unverified_max_time = "4s"
"""
UNVERIFIED_MAX = 4.0
ROUNDS = 3  # bans 2 s, 4 s, then the third: permanent when verified, 4 s (not 8) when not
WAIT = 15.0  # generous: the VM is noisy
SERVICES = (22, 80, 443, 5432, SERVICE_PORT)  # as bench/nmap_scan.py serves them
ECHO_TCP = """
import socket, sys, threading
def serve(c):
    with c:
        while data := c.recv(100):
            c.sendall(data)
s = socket.create_server(('::', int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
ECHO_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(('::', int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(100); s.sendto(data, peer)
"""


# -- reading what happened ----------------------------------------------------------------


def history(env: Env, address: str, what: str) -> list[Any]:
    """`porttrap history ADDRESS --json` entries of one kind ("hit", "ban"), oldest first
    (the CLI lists the newest first)."""
    found = [e for e in env.json("history", address, "-n", "1000") if e["what"] == what]
    return found[::-1]


def outcomes(env: Env, address: str) -> list[str]:
    return [hit["outcome"] for hit in history(env, address, "hit")]


def wait_hits(env: Env, address: str, count: int) -> list[str]:
    """The outcomes of `address`'s hits once `count` are stored (the daemon has dealt with
    them: what a negative assertion about them may follow)."""
    seen: list[str] = []

    def stored() -> bool:
        seen[:] = outcomes(env, address)
        return len(seen) >= count

    wait_until(stored, WAIT, f"{count} hits of {address} stored")
    return seen


def wait_logged(env: Env, text: str) -> None:
    wait_until(lambda: text in env.log_text(), WAIT, f"the daemon logged {text!r}")


def stored_bans(env: Env, address: str) -> list[tuple[float, float | None, int, str, str]]:
    """(banned_at, expires_at, ban_count, evidence, reason) of each ban of `address`, oldest
    first, from the database: exact times, where the CLI shows whole seconds."""
    rows = env.db(
        "SELECT banned_at, expires_at, ban_count, evidence, reason FROM bans "
        "WHERE target = ? ORDER BY banned_at",
        address,
    )
    return [tuple(row) for row in rows]


def banning_hits(env: Env, address: str) -> int:
    [(count,)] = env.db(
        "SELECT count(*) FROM hits WHERE source = ? AND outcome = 'banned'", address
    )
    return int(count)


def ban_set(address: str) -> str:
    return "ban_v6" if ":" in address else "ban_v4"


def banned(env: Env, address: str) -> bool:
    return env.in_set(ban_set(address), address)


def blocked(env: Env, address: str) -> bool:
    """Whether `address` is in a first-packet block set (stealth and advanced modes)."""
    version = 6 if ":" in address else 4
    return any(env.in_set(f"block_{g}_v{version}", address) for g in "ab")


def wait_bans(env: Env, addresses: list[str], count: int) -> None:
    """Until the database holds `count` bans of each address, and the hits that made them (a
    ban reaches the kernel first, the database a moment later; its hit comes with the next
    batch of hits)."""

    def recorded() -> bool:
        return all(
            len(stored_bans(env, a)) >= count and banning_hits(env, a) >= count for a in addresses
        )

    wait_until(recorded, WAIT, f"ban {count} of {addresses} recorded")


def wait_lifted(env: Env, addresses: list[str]) -> None:
    """Until the kernel let the bans of `addresses` go by themselves (their timeouts)."""
    wait_until(lambda: not any(banned(env, a) for a in addresses), WAIT, f"{addresses} unbanned")


def forged_pair(source: str, kind: str, target: str | None = None) -> list[Probe]:
    """Two forged packets from `source` (confirm = 2): TCP SYNs to two ports, or two UDP
    datagrams to the UDP trap, from two source ports."""
    target = target or (SRV6 if ":" in source else SRV4)
    if kind == "udp":
        return [Probe(source, target, UDP_TRAP, "udp", sport=40000 + n) for n in range(2)]
    return [
        Probe(source, target, port, kind, sport=40000 + n) for n, port in enumerate((TRAP, TRAP_2))
    ]


def connects(ns: Netns, source: str, target: str, port: int) -> bool:
    """Whether a connection that should work does: with time for a busy machine."""
    return tcp_works(ns, source, target, port, timeout=5)


def client_v6(env: Env) -> None:
    """IPv6 on the clients' link: SRV_CLI6 on the protected side, CLIENT6 on the clients'."""
    srv_if, cli_if = env.cli_link
    env.srv.run(["ip", "addr", "add", f"{SRV_CLI6}/64", "dev", srv_if, "nodad"])
    env.cli.run(["ip", "addr", "add", f"{CLIENT6}/64", "dev", cli_if, "nodad"])


def become_client(env: Env, ns: Netns, source: str, target: str) -> None:
    """A completed connection from `source` to the service: the kernel's watch records a client."""
    assert connects(ns, source, target, SERVICE_PORT), f"{source} could not reach the service"
    name = "clients_v6" if ":" in source else "clients_v4"
    wait_until(lambda: env.in_set(name, source), WAIT, f"{source} a client in the kernel")


def assert_bounded_unverified(env: Env, address: str, rounds: int, reason: str) -> None:
    """Every ban of `address` rests on unverified evidence, lasts at most UNVERIFIED_MAX and
    is never permanent; the n-th is ban_count n (the unverified count), the first lasts
    [ban] time, the later ones the cap (the escalation would give 4 s, then 8 s)."""
    bans = stored_bans(env, address)
    assert [b[2] for b in bans] == list(range(1, rounds + 1))
    assert {b[3] for b in bans} == {"unverified"}
    assert {b[4] for b in bans} == {reason}, bans
    durations = []
    for banned_at, expires_at, *_ in bans:
        assert expires_at is not None, f"a forged ban of {address} is permanent: {bans}"
        durations.append(round(expires_at - banned_at, 3))
    assert durations == [2.0] + [UNVERIFIED_MAX] * (rounds - 1)
    listed = history(env, address, "ban")
    assert [(b["permanent"], b["evidence"]) for b in listed] == [(False, "unverified")] * rounds


def assert_kernel_timeouts(monitor: BanAnnouncements, address: str, rounds: int) -> None:
    timeouts = monitor.timeouts(address)
    assert len(timeouts) >= rounds, timeouts
    assert None not in timeouts, f"{address} went into the kernel without a timeout"
    assert all(t is not None and 1 <= t <= UNVERIFIED_MAX for t in timeouts), timeouts


# -- 1. forged probes never ban for long or for good --------------------------------------


def test_forged_syn_pairs_in_an_innocents_name_ban_briefly_and_never_for_good(
    env_factory: Callable[[str], Env],
) -> None:
    """Attack: a forger sends two SYNs (confirm = 2) in a bystander's name, again after each
    ban ends, to make its ban escalate to permanent (advanced mode, IPv4 and IPv6)."""
    env = env_factory('[traps]\nmode = "advanced"\n' + FAST_BANS)
    innocents = [INNOCENT4, INNOCENT6]
    with announcements(env) as monitor:
        env.start()
        for round_ in range(1, ROUNDS + 1):
            send(env.atk, [p for a in innocents for p in forged_pair(a, "syn")], inter=0.05)
            wait_bans(env, innocents, round_)
            wait_lifted(env, innocents)
    for address in innocents:
        assert_bounded_unverified(env, address, ROUNDS, f"trap:tcp/{TRAP_2}")
        assert outcomes(env, address) == ["counted", "banned"] * ROUNDS
        assert_kernel_timeouts(monitor, address, ROUNDS)
    assert env.json("status")["bans"]["permanent"] == 0


def test_forged_datagrams_never_ban_for_good_while_real_connects_do(
    env_factory: Callable[[str], Env],
) -> None:
    """Attack: the same repeated pairs as forged UDP datagrams to a connect-mode trap. The
    contrast, same daemon, same rounds: a scanner that completes connections to a TCP trap
    proves its address, and its third ban is permanent (permanent_after = 3)."""
    env = env_factory(f'[traps]\ntcp = ["{TRAP}"]\nudp = ["{UDP_TRAP}"]\n' + FAST_BANS)
    innocents, scanners = [INNOCENT4, INNOCENT6], [ATK4, ATK6]
    with announcements(env) as monitor:
        env.start()
        for round_ in range(1, ROUNDS + 1):
            send(env.atk, [p for a in innocents for p in forged_pair(a, "udp")], inter=0.05)
            assert connects(env.atk, ATK4, SRV4, TRAP) and connects(env.atk, ATK6, SRV6, TRAP)
            wait_bans(env, innocents + scanners, round_)
            if round_ < ROUNDS:
                wait_lifted(env, innocents + scanners)
    for address in innocents:
        assert_bounded_unverified(env, address, ROUNDS, f"trap:udp/{UDP_TRAP}")
        assert_kernel_timeouts(monitor, address, ROUNDS)
    for address in scanners:
        bans = stored_bans(env, address)
        assert [(b[2], b[3]) for b in bans] == [(n, "verified") for n in (1, 2, 3)]
        assert bans[0][1] is not None and round(bans[0][1] - bans[0][0], 3) == 2.0
        assert bans[1][1] is not None and round(bans[1][1] - bans[1][0], 3) == 4.0
        assert bans[2][1] is None  # the third verified ban: for good
        assert env.permanent_in(ban_set(address), address)
        assert monitor.timeouts(address)[-1] is None
    assert env.json("status")["bans"]["permanent"] == 2


def test_portsentry_style_permanent_after_1_gives_a_forger_only_short_bans(
    env_factory: Callable[[str], Env],
) -> None:
    """Attack: a host set up as PortSentry was (every ban for good: permanent_after = 1,
    time = 1h) gets forged SYN pairs (stealth) and forged datagram pairs (connect-mode UDP) in
    bystanders' names, twice: each ban lasts unverified_max_time, none is permanent. The
    contrast: a real client that completes handshakes to two traps (redirected to the
    catch-all port) is banned for good at once."""
    env = env_factory(
        f'[traps]\nmode = {{ tcp = "stealth", udp = "connect" }}\ntcp = ["{TRAP}", "{TRAP_2}"]\n'
        f'udp = ["{UDP_TRAP}"]\n[ban]\ntime = "1h"\npermanent_after = 1\n'
        'unverified_max_time = "4s"\n'
    )
    by_syn, by_udp = [INNOCENT4, INNOCENT6], [STRANGER4, STRANGER6]
    with announcements(env) as monitor:
        env.start()
        for round_ in (1, 2):
            forged = [p for a in by_syn for p in forged_pair(a, "syn")]
            forged += [p for a in by_udp for p in forged_pair(a, "udp")]
            send(env.atk, forged, inter=0.05)
            wait_bans(env, by_syn + by_udp, round_)
            if round_ == 1:
                wait_lifted(env, by_syn + by_udp)
        become_client(env, env.cli, CLIENT, SRV_CLI)
        for port in (TRAP, TRAP_2):
            assert connects(env.cli, CLIENT, SRV_CLI, port)  # the catch-all answers
        wait_bans(env, [CLIENT], 1)
    for address in by_syn + by_udp:
        bans = stored_bans(env, address)
        assert [(b[2], b[3]) for b in bans] == [(1, "unverified"), (2, "unverified")]
        for banned_at, expires_at, *_ in bans:
            assert expires_at is not None and expires_at - banned_at <= UNVERIFIED_MAX
        assert_kernel_timeouts(monitor, address, 2)
    assert {b[4] for a in by_udp for b in stored_bans(env, a)} == {f"trap:udp/{UDP_TRAP}"}
    [(_, expires_at, count, evidence, reason)] = stored_bans(env, CLIENT)
    assert (expires_at, count, evidence, reason) == (None, 1, "verified", f"trap:tcp/{TRAP_2}")
    assert env.permanent_in("ban_v4", CLIENT)


# -- 2. peers: the host's resolver, its gateways, link-local neighbours -------------------

# The host's LAN, a namespace of its own: its resolver (a UDP echo on port 53) and its router,
# whose other side (203.0.113.200, 2001:db8:4::1 on its loopback) is reached only through it.
SRV_LAN4, SRV_LAN6 = "203.0.113.1", "2001:db8:3::1"
RESOLVER4, RESOLVER6 = "203.0.113.53", "2001:db8:3::53"
GATEWAY4, GATEWAY_LL = "203.0.113.126", "fe80::126"
BEYOND4, BEYOND6 = "203.0.113.200", "2001:db8:4::1"
NEIGHBOUR_LL = "fe80::bad"  # a link-local address nobody holds
DNS = 53
PEERS_CONFIG = f"""
[traps]
mode = {{ tcp = "advanced", udp = "connect" }}
udp = ["{UDP_TRAP}"]
"""


def lan(env: Env, make: Callable[[], Netns]) -> Netns:
    """The host's LAN (the protected side is 203.0.113.1/25 and 2001:db8:3::1/64 there), its
    resolver answering on port 53 of every address (not yet used by the host)."""
    ns = make()
    theirs = [f"{RESOLVER4}/25", f"{GATEWAY4}/25", f"{RESOLVER6}/64", f"{GATEWAY_LL}/64"]
    env.srv.veth(ns, [f"{SRV_LAN4}/25", f"{SRV_LAN6}/64"], theirs)
    ns.run(["ip", "addr", "add", f"{BEYOND4}/32", "dev", "lo"])
    ns.run(["ip", "addr", "add", f"{BEYOND6}/128", "dev", "lo", "nodad"])
    ns.start([sys.executable, "-c", ECHO_UDP, str(DNS)])
    wait_until(lambda: bool(ns.run(["ss", "-Hlnu", f"sport = :{DNS}"]).strip()), WAIT, "resolver")
    return ns


def ask(env: Env, server: str, source: str | None = None) -> bool:
    """Whether a query from the protected host to server:53 gets its answer (the host's own
    flow: conntrack sees it go out, the watch makes `server` a peer)."""
    source = source or (SRV_LAN6 if ":" in server else SRV_LAN4)
    with open_socket(env.srv, source, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(b"query", (server, DNS))
        try:
            return sock.recv(100) == b"query"
        except OSError:
            return False


def route_via_lan(env: Env) -> None:
    """The protected host's default routes: via GATEWAY4, and via the router's link-local
    address, as a router advertisement would set it."""
    device = env.srv.run(["ip", "-o", "addr", "show", "to", SRV_LAN4]).split()[1]
    env.srv.run(["ip", "route", "add", "default", "via", GATEWAY4])
    env.srv.run(["ip", "-6", "route", "add", "default", "via", GATEWAY_LL, "dev", device])


def forged_peer_packets(sources: list[str]) -> list[Probe]:
    """Two SYNs to ports nothing serves and two datagrams to the UDP trap, in each one's name."""
    return [p for a in sources for kind in ("syn", "udp") for p in forged_pair(a, kind)]


def test_the_hosts_peers_are_never_banned_by_packets_forged_in_their_name(
    env_factory: Callable[[str], Env], netns_factory: Callable[[], Netns]
) -> None:
    """Attack: cut the host off from its resolver and its router by forging SYN probes
    (advanced mode) and datagrams (connect-mode UDP trap) in their names: the resolver, a
    UDP-only peer; the IPv4 gateway, which the host never sends a packet to (it routes through
    it); the router's link-local address, the IPv6 next hop; any link-local address."""
    env = env_factory(PEERS_CONFIG)
    lan(env, netns_factory)
    env.start()
    route_via_lan(env)
    wait_until(lambda: env.in_set("gateways_v4", GATEWAY4), WAIT, "IPv4 gateway known")
    wait_until(lambda: env.in_set("gateways_v6", GATEWAY_LL), WAIT, "IPv6 gateway known")
    for resolver in (RESOLVER4, RESOLVER6):
        assert ask(env, resolver)
    assert ask(env, BEYOND4) and ask(env, BEYOND6)  # routed through the gateways
    wait_until(lambda: env.in_set("peers_v4", RESOLVER4), WAIT, "the resolver a peer (v4)")
    wait_until(lambda: env.in_set("peers_v6", RESOLVER6), WAIT, "the resolver a peer (v6)")
    assert not env.in_set("peers_v4", GATEWAY4)  # a gateway for its route alone

    peers = [RESOLVER4, RESOLVER6, GATEWAY4, GATEWAY_LL, NEIGHBOUR_LL]
    send(env.atk, forged_peer_packets(peers) * 2, inter=0.02)

    def all_reported() -> bool:
        return all(len(outcomes(env, a)) >= 8 for a in peers)

    wait_until(all_reported, WAIT, "every forged packet reported")
    for address in peers:
        assert set(outcomes(env, address)) == {"peer"}, (address, outcomes(env, address))
        assert not banned(env, address) and not blocked(env, address)
    assert env.json("bans") == []
    for resolver in (RESOLVER4, RESOLVER6):
        assert ask(env, resolver)
    assert ask(env, BEYOND4) and ask(env, BEYOND6)


def test_a_peer_named_before_the_host_first_talks_to_it_is_never_banned_later(
    env_factory: Callable[[str], Env], netns_factory: Callable[[], Netns]
) -> None:
    """Attack: one forged SYN in the name of the host's resolver before the host first asks it
    (a stranger then: blocked at that first packet, for block_time, and counted), then, once
    the host talks to it, more forged SYNs and datagrams in its name: they are a peer's now,
    so they never ban it, although its address is still in a block set."""
    env = env_factory(PEERS_CONFIG + '[kernel]\nblock_time = "10m"\n')  # blocked throughout
    lan(env, netns_factory)
    env.start()
    resolvers = [RESOLVER4, RESOLVER6]
    send(env.atk, [Probe(a, SRV6 if ":" in a else SRV4, TRAP, "syn") for a in resolvers])
    for resolver in resolvers:
        wait_until(functools.partial(blocked, env, resolver), WAIT, f"{resolver} blocked")
        assert wait_hits(env, resolver, 1) == ["counted"]
        assert ask(env, resolver)  # the answers belong to the host's flow: the block spares them
    wait_until(lambda: env.in_set("peers_v4", RESOLVER4), WAIT, "the resolver a peer (v4)")
    wait_until(lambda: env.in_set("peers_v6", RESOLVER6), WAIT, "the resolver a peer (v6)")

    send(env.atk, forged_peer_packets(resolvers), inter=0.02)

    def dealt_with() -> bool:  # a ban would drop the rest: nothing more would be reported
        stored = all(len(outcomes(env, a)) >= 5 for a in resolvers)
        return stored or any(banned(env, a) for a in resolvers)

    wait_until(dealt_with, WAIT, "the forged packets reported")
    for resolver in resolvers:
        assert not banned(env, resolver), f"{resolver}, a peer, banned: {outcomes(env, resolver)}"
        assert outcomes(env, resolver) == ["counted"] + ["peer"] * 4
        assert blocked(env, resolver)
        assert ask(env, resolver)
    assert env.json("bans") == []


# -- 3. connect mode: a live client and forged datagrams -----------------------------------


def test_forged_datagrams_never_ban_a_live_client_but_ban_a_stranger(
    env_factory: Callable[[str], Env],
) -> None:
    """Attack: datagrams to a connect-mode UDP trap, forged in the names of clients that use
    the host's service, to cut them off. The kernel marks them (the source is a recent client:
    SO_RCVMARK on the trap socket), so they are a client's; the same datagrams forged in a
    stranger's name ban it, briefly (unverified). IPv4 and IPv6."""
    env = env_factory(f'[traps]\ntcp = ["{TRAP}"]\nudp = ["{UDP_TRAP}"]\n')
    client_v6(env)
    env.start()
    clients = {CLIENT: SRV_CLI, CLIENT6: SRV_CLI6}
    for client, target in clients.items():
        become_client(env, env.cli, client, target)
    forged = [p for c in clients for p in forged_pair(c, "udp", SRV4 if "." in c else SRV6)]
    send(env.atk, forged * 2, inter=0.02)
    for client in clients:
        assert wait_hits(env, client, 4) == ["client"] * 4
    strangers = [STRANGER4, STRANGER6]
    send(env.atk, [p for s in strangers for p in forged_pair(s, "udp")], inter=0.02)
    wait_bans(env, strangers, 1)
    for stranger in strangers:
        [(banned_at, expires_at, count, evidence, reason)] = stored_bans(env, stranger)
        assert (count, evidence, reason) == (1, "unverified", f"trap:udp/{UDP_TRAP}")
        assert expires_at is not None and expires_at - banned_at <= 600  # unverified_max_time
        assert outcomes(env, stranger) == ["counted", "banned"]
    for client, target in clients.items():
        assert not banned(env, client) and stored_bans(env, client) == []
        assert connects(env.cli, client, target, SERVICE_PORT)
    assert {b["address"] for b in env.json("bans")} == set(strangers)


# -- 5. the admin's live SSH session -----------------------------------------------------

SSH = 22


def test_the_peer_of_a_live_ssh_session_is_never_banned_until_it_ends(
    env_factory: Callable[[str], Env],
) -> None:
    """Attack (or mistake): the admin's address touches a trap, by a scan of their own or a
    forger's hand, while their SSH session to the host is open: the hit is `session`, with a
    warning, nothing bans them, `porttrap ban` refuses, and the session goes on. Once the
    session has ended, the same address touching a trap is banned. IPv4 and IPv6."""
    env = env_factory(f'[traps]\ntcp = ["{TRAP}"]\nudp = []\n[protect]\nssh_ports = [{SSH}]\n')
    client_v6(env)
    env.srv.start([sys.executable, "-c", ECHO_TCP, str(SSH)])  # stands in for sshd
    admins = {CLIENT: SRV_CLI, CLIENT6: SRV_CLI6}
    wait_until(lambda: tcp_works(env.cli, CLIENT, SRV_CLI, SSH), WAIT, "the SSH stand-in up")
    env.start()
    sessions = {}
    for admin, target in admins.items():
        session = open_socket(env.cli, admin, socket.SOCK_STREAM)
        session.settimeout(5)
        session.connect((target, SSH))
        sessions[admin] = session
    try:
        for admin, target in admins.items():
            wait_logged(env, f"event=session-protected peer={admin} ")
            assert connects(env.cli, admin, target, TRAP)  # a verified hit, which would ban
            assert wait_hits(env, admin, 1) == ["session"]
            assert f"level=warning event=hit src={admin} " in env.log_text()
            assert not banned(env, admin)
            sessions[admin].sendall(b"still here")
            assert sessions[admin].recv(100) == b"still here"
            refused = env.porttrap("ban", admin, check=False)
            assert refused.returncode == 5, refused
            assert f"{admin} is the peer of a live SSH session" in refused.stderr
        assert env.json("bans") == []
    finally:
        for session in sessions.values():
            session.close()
    for admin, target in admins.items():
        # the watcher reads the sessions every second: until it sees this one end, a hit is
        # still `session`; then it bans
        def touch_and_check(a: str = admin, t: str = target) -> bool:
            tcp_works(env.cli, a, t, TRAP, timeout=0.5)
            return banned(env, a)

        wait_until(touch_and_check, WAIT, f"{admin} banned once its session ended")
        wait_bans(env, [admin], 1)
        [(_, _, count, evidence, reason)] = stored_bans(env, admin)
        assert (count, evidence, reason) == (1, "verified", f"trap:tcp/{TRAP}")
        seen = outcomes(env, admin)
        assert seen[-1] == "banned" and set(seen[:-1]) == {"session"}, seen


# -- 6. a client touching one trap, then two ----------------------------------------------


def test_a_client_touching_one_trap_is_spared_and_a_second_trap_bans_it(
    env_factory: Callable[[str], Env],
) -> None:
    """Attack, or a mistake: a client of the host's service (a load balancer's health check
    of a service that just stopped, or a connect scan that became a client first) sends a SYN
    to a trap (stealth mode). It is redirected to the catch-all port: the handshake completes,
    the hit is on the trap it aimed at, verified, and does not ban (client_trigger = 2); a
    second trap port bans it, on verified evidence. IPv4 and IPv6."""
    env = env_factory(f'[traps]\nmode = "stealth"\ntcp = ["{TRAP}", "{TRAP_2}"]\nudp = []\n')
    client_v6(env)
    env.start()
    clients = {CLIENT: SRV_CLI, CLIENT6: SRV_CLI6}
    for client, target in clients.items():
        become_client(env, env.cli, client, target)
        assert connects(env.cli, client, target, TRAP)  # the catch-all port answers
        wait_hits(env, client, 1)
        [hit] = history(env, client, "hit")
        assert (hit["port"], hit["kind"], hit["outcome"]) == (TRAP, "connect", "counted")
        assert hit["local"] == target
        assert not banned(env, client) and not blocked(env, client)
        assert connects(env.cli, client, target, SERVICE_PORT)
    for client, target in clients.items():
        assert connects(env.cli, client, target, TRAP_2)
        wait_bans(env, [client], 1)
        [(_, _, count, evidence, reason)] = stored_bans(env, client)
        assert (count, evidence, reason) == (1, "verified", f"trap:tcp/{TRAP_2}")
        assert outcomes(env, client) == ["counted", "banned"]
        assert not tcp_works(env.cli, client, target, SERVICE_PORT)


# -- 4. nmap -sT against the default trap list ---------------------------------------------

DEFAULT_TRAPS = frozenset(p for text in DEFAULT_TCP_TRAPS for p in parse_ports(text))


def nmap_connect_scan(env: Env, target: str) -> tuple[set[int], float]:
    """`nmap -sT` of nmap's 1,000 most common ports from the attacker's namespace (its
    first address), bounded: -T4, one retry, at least 200 probes a second (a host that drops
    everything would slow it down to a crawl), 60 s at most. The ports nmap found open, and
    when it ended (epoch seconds, this machine's clock, as the daemon's)."""
    argv = ["nmap", "-sT", "-n", "-Pn", "-T4", "--max-retries", "1", "--min-rate", "200"]
    argv += ["--host-timeout", "60s", "-oX", "-", *(["-6"] if ":" in target else []), target]
    xml = env.atk.run(argv, timeout=120)
    ended = datetime.now(UTC).timestamp()
    root = ET.fromstring(xml)
    opened = {
        int(port.get("portid", "0"))
        for port in root.iter("port")
        if (state := port.find("state")) is not None and state.get("state") == "open"
    }
    return opened, ended


def served(env_factory: Callable[[str], Env], mode: str) -> Env:
    """A started daemon in `mode` (the default trap lists) on a host serving SERVICES."""
    env = env_factory(f'[traps]\nmode = "{mode}"\n')
    env.srv.start([sys.executable, "-c", SERVE, *(str(p) for p in SERVICES if p != SERVICE_PORT)])
    for port in SERVICES:
        wait_until(functools.partial(tcp_works, env.cli, CLIENT, SRV_CLI, port), WAIT, f"{port}")
    env.start()
    return env


def assert_banned_during(env: Env, scanner: str, ended: float, traps: frozenset[int]) -> str:
    """The scanner's one ban: for a trap, made before nmap ended; its evidence."""
    wait_bans(env, [scanner], 1)
    [(banned_at, _, count, evidence, reason)] = stored_bans(env, scanner)
    assert count == 1
    assert reason.startswith("trap:tcp/") and int(reason.split("/")[1]) in traps, reason
    assert banned_at < ended, "the ban came after the scan had ended"
    assert banned(env, scanner)
    return str(evidence)


@pytest.mark.parametrize("mode", ["stealth", "advanced"])
def test_a_connect_scan_that_became_a_client_is_banned_on_verified_evidence(
    env_factory: Callable[[str], Env], mode: str
) -> None:
    """Attack: escape the kernel sensor by becoming a client first (a visit to the web
    service), then `nmap -sT` the host: a client's probes are spared as forgeable, but its
    SYNs to traps are redirected to the catch-all port, whose handshakes prove its address.
    Stealth mode with the default trap list (and advanced mode), 5 services served, IPv4 then
    IPv6: banned on verified evidence, for a trap, before nmap ends. nmap may report open the
    services it reached before the ban, and the traps whose handshake the catch-all completed."""
    env = served(env_factory, mode)
    traps = DEFAULT_TRAPS if mode == "stealth" else frozenset(range(1, 65536)) - set(SERVICES)
    for scanner, target in ((ATK4, SRV4), (ATK6, SRV6)):
        become_client(env, env.atk, scanner, target)
        opened, ended = nmap_connect_scan(env, target)
        assert assert_banned_during(env, scanner, ended, traps) == "verified"
        assert opened <= set(SERVICES) | traps, opened


def test_a_connect_scan_as_it_comes_is_banned_before_it_ends(
    env_factory: Callable[[str], Env],
) -> None:
    """Attack: `nmap -sT` as it comes (its own port order) against stealth mode with the
    default trap list. If it reaches a service first, it is a client from then on, and its
    handshakes to traps (the catch-all port) ban it on verified evidence; if it reaches a
    trap first, that SYN blocks it, and nmap's second SYN there bans it on unverified evidence
    (confirm = 2). nmap's order is random: either way it is banned for a trap before it ends,
    and the evidence is what the banning hit was: a handshake, or a probe."""
    env = served(env_factory, "stealth")
    opened, ended = nmap_connect_scan(env, SRV4)
    evidence = assert_banned_during(env, ATK4, ended, DEFAULT_TRAPS)
    [(kind,)] = env.db("SELECT kind FROM hits WHERE source = ? AND outcome = 'banned'", ATK4)
    assert (kind, evidence) in {("connect", "verified"), ("syn", "unverified")}, (kind, evidence)
    assert opened <= set(SERVICES) | DEFAULT_TRAPS, opened


# -- 7. a flood of forged sources -----------------------------------------------------------

FLOOD_V6 = 2500  # sources in 2001:db8:8000::/33, each (almost surely) in a /48 of its own
FLOOD_V4 = 250  # sources in 203.0.113.0/24: one network, whose own budget binds
HIT_RATE = 100  # [store] hit_rate: hits stored per second, bursts of 5 s worth
BUDGET_RATE, BUDGET_BURST = 10, 50  # [ban] unverified_rate (default), bursts of 5 s worth
PREFIX_RATE, PREFIX_BURST = 1, 5  # [ban] unverified_prefix_rate (default), per /24 or /48
RSS_LIMIT = 128 << 20  # bytes: the daemon's peak resident memory (about 50 MiB at start)
FLOOD_CONFIGS = {
    "connect": f'[traps]\ntcp = ["{TRAP}"]\nudp = ["{UDP_TRAP}"]\n',
    # every report reaches the daemon: its own budgets are what is tested
    "advanced": '[traps]\nmode = "advanced"\n[kernel]\nevent_rate = 100000\n',
}


def flood_sources() -> list[str]:
    """The IPv4 sources first, while the host-wide budget is full: their network's own
    budget is what holds them back."""
    rng = random.Random(12)
    base = int(ipaddress.IPv6Address("2001:db8:8000::"))
    v6 = {str(ipaddress.IPv6Address(base + rng.getrandbits(95))) for _ in range(FLOOD_V6)}
    return [f"203.0.113.{n}" for n in range(1, FLOOD_V4 + 1)] + sorted(v6)


def peak_memory(pid: int) -> int:
    """The peak resident set of process `pid` (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.mark.parametrize("mode", ["connect", "advanced"])
def test_a_flood_of_forged_sources_makes_few_bans_and_bounded_memory_and_rows(
    env_factory: Callable[[str], Env], mode: str
) -> None:
    """Attack: thousands of forged sources, each sending two probes (SYNs, advanced mode) or
    two datagrams (a connect-mode UDP trap), to make porttrap ban thousands of innocents and
    fill its memory and its disk. Bans stay within the budgets of unverified bans (host-wide
    10 a second, bursts of 50; 1 a second per /24, bursts of 5), the rest are held back and
    counted; the hits stored stay within [store] hit_rate, the rest are counted as sampled;
    the daemon's memory stays bounded."""
    config = FLOOD_CONFIGS[mode]
    env = env_factory(
        f'{config}[store]\nhit_rate = {HIT_RATE}\n[allow]\naddresses = ["{ALLOWED}"]\n'
    )
    env.start()
    pid = env.daemon_pid()
    assert "porttrap" in Path(f"/proc/{pid}/cmdline").read_text()
    before = peak_memory(pid)
    proto, ports = (UDP, (UDP_TRAP, UDP_TRAP)) if mode == "connect" else (TCP, (TRAP, TRAP_2))
    sender = Sender(env.atk, env.atk_link[1], env.srv, env.atk_link[0])
    try:
        sources = flood_sources()
        frames = [
            sender.frame(source, SRV6 if ":" in source else SRV4, proto, (40000 + n, port))
            for source in sources
            for n, port in enumerate(ports)
        ]
        marker = sender.frame(ALLOWED, SRV4, proto, (40000, ports[0]))
        started = time.monotonic()  # noqa: TID251 - test timing
        for at in range(0, len(frames), 100):  # about 5,000 frames a second
            sender.send(frames[at : at + 100])
            pause(0.02, "a pace of about 5,000 frames a second")

        def marker_seen() -> bool:
            """The allow-listed marker, sent after the flood, has been dealt with."""
            sender.send([marker])
            return bool(env.json("status")["hits"].get("allowed", 0) > 0)

        wait_until(marker_seen, 60, "the daemon through the flood")
        elapsed = time.monotonic() - started  # noqa: TID251
    finally:
        sender.close()
    status = env.json("status")
    hits = status["hits"]
    bans = env.db("SELECT target, banned_at, evidence FROM bans ORDER BY banned_at")
    assert {evidence for _, _, evidence in bans} == {"unverified"}
    span = bans[-1][1] - bans[0][1]
    assert len(bans) <= BUDGET_BURST + BUDGET_RATE * span + 1, (len(bans), span)
    v4 = [at for target, at, _ in bans if "." in target]
    assert 1 <= len(v4) <= PREFIX_BURST + PREFIX_RATE * (v4[-1] - v4[0]) + 1, v4
    assert len(bans) < len(sources) // 20  # far below: what a forger gets for its flood
    assert hits["held-back"] > 0  # the rest of those that would have banned
    assert len(bans) + hits["held-back"] <= len(sources)
    assert status["bans"]["active"] == len(bans) and status["bans"]["permanent"] == 0

    assert hits["sampled"] > 0
    stored = hits["total"] - hits["sampled"] - hits["not_stored"]

    def written() -> bool:
        return bool(env.db("SELECT count(*) FROM hits")[0][0] == stored)

    wait_until(written, WAIT, f"the {stored} hits kept written")
    # before the flood, no hit: the bucket was at most full (5 s worth) when it began
    assert stored <= 5 * HIT_RATE + HIT_RATE * elapsed + len(bans) + 1, (stored, elapsed)
    peak = peak_memory(pid)
    assert peak < RSS_LIMIT, f"peak memory {peak >> 20} MiB ({before >> 20} MiB before the flood)"
