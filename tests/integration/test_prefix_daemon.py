"""Prefix bans with the real daemon in namespaces (issue 15): an IPv6 scanner that rotates
addresses inside its /64 is dropped at its second address; three scanners from one /24 ban
the /24 on either backend, while an allow-listed address inside it still connects."""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable

import pytest
from crafted import Probe, send
from daemon_env import SRV4, SRV6, Env, open_socket, tcp_works

from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

TRAP = 2323
SERVICE = 8080
SCANNER_NET = "203.0.113"  # the attacker side's /24, on the attacker's link
ALLOWED = f"{SCANNER_NET}.50"
ROTATING = [f"2001:db8:2:1::{n}" for n in (10, 11, 12)]  # one /64
ELSEWHERE = "2001:db8:2:2::10"  # the next /64
HELD = 8081
CONNECT_PATIENCE = 15.0  # seconds a connection that must complete may take (`connects`)
HOLD = (  # a service whose connections stay open: their peers are live clients
    "import socket\n"
    f"s = socket.create_server(('0.0.0.0', {HELD}))\n"
    "held = []\n"
    "while True:\n"
    "    held.append(s.accept()[0])\n"
)


def add_addresses(env: Env, ipv4: list[str], ipv6: list[str]) -> None:
    """More addresses on the attacker's side of its link, reached on-link from the server
    (no gateway, which porttrap would protect)."""
    here, there = env.atk_link
    for address in ipv4:
        env.atk.run(["ip", "addr", "add", f"{address}/32", "dev", there])
    for address in ipv6:
        env.atk.run(["ip", "addr", "add", f"{address}/128", "dev", there, "nodad"])
    env.srv.run(["ip", "route", "add", f"{SCANNER_NET}.0/24", "dev", here])
    env.srv.run(["ip", "-6", "route", "add", "2001:db8:2::/48", "dev", here])


def connects(env: Env, source: str, host: str, port: int) -> bool:
    """Whether a connection from `source` on the attacker's side completes, given the time a
    loaded VM may need: a new source address is resolved (neighbour discovery) before the
    SYN-ACK can go out, and a lost first SYN is sent again after 1 s, 3 s, 7 s. A negative
    check keeps tcp_works' 1 s: a dropped SYN never completes, however long one waits."""
    return tcp_works(env.atk, source, host, port, timeout=CONNECT_PATIENCE)


def dropped(env: Env, source: str) -> Callable[[], bool]:
    return lambda: not tcp_works(env.atk, source, SRV4, SERVICE)


def config(backend: str, prefix: str) -> str:
    return (
        f'[traps]\ntcp = ["{TRAP}"]\nudp = []\n[firewall]\nbackend = "{backend}"\n'
        f'[allow]\naddresses = ["{ALLOWED}"]\n[ban]\ntime = "1h"\n[ban.prefix]\n{prefix}'
    )


def test_an_ipv6_scanner_rotating_inside_its_64_is_dropped_at_the_second_address(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(config("nftables", "v6_source = 64\n"))
    add_addresses(env, [], [*ROTATING, ELSEWHERE])
    env.start()
    first, second, third = ROTATING
    assert connects(env, second, SRV6, SERVICE)  # before: the service answers
    assert connects(env, first, SRV6, TRAP)
    wait_until(lambda: env.in_set("ban_net_v6", "2001:db8:2:1::/64"), PATIENCE, "/64 banned")
    assert not tcp_works(env.atk, second, SRV6, SERVICE)
    assert not tcp_works(env.atk, third, SRV6, TRAP)
    assert connects(env, ELSEWHERE, SRV6, SERVICE)  # another /64: not the scanner's
    (ban,) = env.recorded_bans(1)
    assert (ban["address"], ban["reason"]) == ("2001:db8:2:1::/64", f"trap:tcp/{TRAP}")


def test_in_stealth_mode_probes_from_two_addresses_of_a_64_ban_it(
    env_factory: Callable[[str], Env],
) -> None:
    """Probes can be forged, so two are needed (`confirm`): from two addresses of one /64
    they count as one source's, and the /64 is banned (on forgeable evidence)."""
    env = env_factory(
        f'[traps]\nmode = "stealth"\ntcp = ["{TRAP}"]\nudp = []\n[ban.prefix]\nv6_source = 64\n'
    )
    add_addresses(env, [], [*ROTATING, ELSEWHERE])
    env.start()
    first, second, third = ROTATING
    send(env.atk, [Probe(first, SRV6, TRAP, "syn"), Probe(second, SRV6, TRAP, "syn")], 0.05)
    wait_until(lambda: env.in_set("ban_net_v6", "2001:db8:2:1::/64"), PATIENCE, "/64 banned")
    assert not tcp_works(env.atk, third, SRV6, SERVICE)
    assert connects(env, ELSEWHERE, SRV6, SERVICE)
    (ban,) = env.recorded_bans(1)
    assert (ban["address"], ban["evidence"]) == ("2001:db8:2:1::/64", "unverified")


@pytest.mark.parametrize("backend", ["nftables", "ipset"])
def test_three_scanners_from_one_24_ban_it_but_not_the_allow_listed_address(
    env_factory: Callable[[str], Env], backend: str
) -> None:
    env = env_factory(config(backend, "spread = 3\n"))
    scanners = [f"{SCANNER_NET}.{n}" for n in (10, 11, 12)]
    bystander = f"{SCANNER_NET}.60"
    add_addresses(env, [*scanners, bystander, ALLOWED], [])
    env.start()
    assert connects(env, bystander, SRV4, SERVICE)
    for scanner in scanners:
        assert connects(env, scanner, SRV4, TRAP)
        wait_until(dropped(env, scanner), PATIENCE, f"{scanner} banned")
    wait_until(lambda: not tcp_works(env.atk, bystander, SRV4, SERVICE), PATIENCE, "the /24 banned")
    assert connects(env, ALLOWED, SRV4, SERVICE)  # carved out of the prefix ban
    bans = env.recorded_bans(8)  # the /24 less one address: 8 CIDRs, the sources' bans ended
    reasons = {b["reason"] for b in bans}
    assert reasons == {f"prefix {SCANNER_NET}.0/24 less 1 protected from " + ", ".join(scanners)}
    history = env.json("history")
    covered = [
        e
        for e in history
        if e["what"] == "unban" and e["reason"].startswith("covered by the prefix ban on")
    ]
    assert {e["address"] for e in covered} >= set(scanners)
    unban = env.porttrap("unban", bystander, check=False)
    assert unban.returncode == 5, unban.stderr  # refused: the prefix ban still holds it
    assert f"inside the ban on {SCANNER_NET}.0/24 (prefix " in unban.stdout
    assert "[allow] addresses" in unban.stdout
    assert not tcp_works(env.atk, bystander, SRV4, SERVICE)  # still banned
    assert "event=prefix-ban" in env.log_text() and "event=prefix-carved" in env.log_text()


def test_a_live_client_inside_the_24_is_carved_out(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(config("nftables", "spread = 3\n"))
    scanners = [f"{SCANNER_NET}.{n}" for n in (10, 11, 12)]
    client, bystander = f"{SCANNER_NET}.70", f"{SCANNER_NET}.60"
    add_addresses(env, [*scanners, client, bystander], [])
    env.srv.start([sys.executable, "-c", HOLD])
    held = open_socket(env.atk, client, socket.SOCK_STREAM)
    with held:
        wait_until(
            lambda: held.connect_ex((SRV4, HELD)) in (0, errno.EISCONN), PATIENCE, "held connection"
        )
        env.start("-v")
        # read at the start, before any hit is judged (not first at the 5 s poll)
        wait_until(lambda: "event=start " in env.log_text(), PATIENCE, "start logged")
        text = env.log_text()
        assert text.index("event=live-clients count=1") < text.index("event=start "), text
        for scanner in scanners:
            assert connects(env, scanner, SRV4, TRAP)
        wait_until(dropped(env, bystander), PATIENCE, "the /24 banned")
        assert connects(env, client, SRV4, SERVICE)  # carved out: a live client
        assert f"{client} (live client)" in env.log_text()


def test_a_reload_that_turns_prefix_bans_on_knows_the_live_clients_at_once(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(config("nftables", "spread = 0\n"))  # prefix bans off: no client read
    scanners = [f"{SCANNER_NET}.{n}" for n in (10, 11, 12)]
    client, bystander = f"{SCANNER_NET}.70", f"{SCANNER_NET}.60"
    add_addresses(env, [*scanners, client, bystander], [])
    env.srv.start([sys.executable, "-c", HOLD])
    held = open_socket(env.atk, client, socket.SOCK_STREAM)
    with held:
        wait_until(
            lambda: held.connect_ex((SRV4, HELD)) in (0, errno.EISCONN), PATIENCE, "held connection"
        )
        env.start("-v")
        text = env.config.read_text().replace("spread = 0", "spread = 3")
        env.config.write_text(text)
        env.porttrap("reload")
        assert "event=live-clients count=1" in env.log_text()  # read with the reload
        for scanner in scanners:
            assert connects(env, scanner, SRV4, TRAP)
        wait_until(dropped(env, bystander), PATIENCE, "the /24 banned")
        assert connects(env, client, SRV4, SERVICE)  # carved out: a live client
