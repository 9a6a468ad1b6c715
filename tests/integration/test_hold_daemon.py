"""The hold (issue 17; docs/hold.md, docs/hold-daemon.md) with the real daemon, in namespaces,
with crafted packets: a new source's SYN to a served port waits; a trap touch meanwhile hides
the service for good, no trap touch lets the SYN through after the hold and releases the
source; known sources are never held; a stopped or killed daemon never keeps clients out.

The hold is 400 ms here (the longest is 500 ms): a trap packet sent right after the SYN
arrives within a few milliseconds, so the test never depends on how fast the machine is. What
came back is read from a capture on the protected side of the link (the kernel's view), and
whether a SYN was queued from the kernel's own counters, never from how long something took.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from crafted import Probe, answers, send
from daemon_env import (
    ALLOWED,
    ATK4,
    ATK4_B,
    ATK6,
    CLIENT,
    SERVICE_PORT,
    SRV4,
    SRV6,
    SRV_CLI,
    Env,
    tcp_works,
)
from hold_env import (
    TABLE,
    attacker,
    captured,
    fresh_source,
    heartbeat,
    hold_ports,
    kernel_counters,
    syn_acks,
    syns,
    target_of,
)

from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

TRAP = 1  # a trap in both modes: advanced traps every unserved port, stealth's list has 1
ADVANCED = (
    f'[allow]\naddresses = ["{ALLOWED}"]\n[traps]\nmode = "advanced"\n[kernel]\nhold = "400ms"\n'
)
STEALTH = ADVANCED.replace('"advanced"', '"stealth"')
# A connection that must complete: the first SYN may wait in a stalled daemon's queue, and
# TCP sends it again after 1 s and 3 s; a new source is resolved (ARP, ND) first.
CONNECT = 15.0


def hold(env: Env) -> dict[str, Any]:
    """The hold's part of `porttrap status --json`."""
    found: dict[str, Any] = env.json("status")["hold"]
    return found


def hidden(env: Env, source: str) -> list[tuple[str, int, str]]:
    """The hidden probes `history` shows for `source`: (proto, port, kind)."""
    return [(e["proto"], e["port"], e["kind"]) for e in env.json("history", source)
            if e["what"] == "hit" and e["outcome"] == "hidden"]  # fmt: skip


@pytest.fixture
def advanced(env_factory: Callable[[str], Env]) -> Env:
    env = env_factory(ADVANCED)
    env.start()
    wait_until(lambda: heartbeat(env), PATIENCE, "the daemon reads the hold's queue")
    return env


def assert_hidden(env: Env, source: str) -> None:
    """A SYN to the service from `source`, then one to a trap: the service never answers,
    and the hidden probe is in `history` and counted in `status`."""
    target, counted = target_of(source), hold(env)["hidden"]
    with captured(env) as frames:
        send(env.atk, [Probe(source, target, SERVICE_PORT, "syn"),
                       Probe(source, target, TRAP, "syn", sport=40001)])  # fmt: skip
        wait_until(lambda: hidden(env, source) == [("tcp", SERVICE_PORT, "syn")], PATIENCE,
                   "the hidden probe in history")  # fmt: skip
        wait_until(lambda: hold(env)["held_now"] == 0, PATIENCE, "no SYN held any more")
    assert [s.dport for s in syns(frames, source)] == [SERVICE_PORT, TRAP]
    assert syn_acks(frames, source) == []
    assert hold(env)["hidden"] == counted + 1


def assert_answered_after_the_hold(env: Env, source: str, hold_ms: int = 400) -> None:
    """A lone SYN from a new source: answered, no sooner than the hold, and the source
    released in the kernel."""
    before = hold(env)
    with captured(env) as frames:
        assert answers(env.atk, [Probe(source, target_of(source), SERVICE_PORT, "syn")],
                       PATIENCE) == ["SA"]  # fmt: skip
    (syn,), (syn_ack,) = syns(frames, source), syn_acks(frames, source)
    assert syn_ack.at - syn.at >= hold_ms * 1_000_000
    version = 6 if ":" in source else 4
    wait_until(lambda: env.in_set(f"released_v{version}", source), PATIENCE, "released")
    after = hold(env)
    assert (after["queued"], after["let_through"]) == (
        before["queued"] + 1,
        before["let_through"] + 1,
    )
    assert hidden(env, source) == []


@pytest.mark.parametrize("family", [4, 6])
def test_a_trap_touch_while_the_syn_is_held_hides_the_service(advanced: Env, family: int) -> None:
    assert_hidden(advanced, attacker(family))


@pytest.mark.parametrize("family", [4, 6])
def test_without_a_trap_touch_the_syn_is_answered_after_the_hold_and_the_source_released(
    advanced: Env, family: int
) -> None:
    source = attacker(family)
    assert_answered_after_the_hold(advanced, source)
    # Its next connection is not held: the kernel lets it through (no SYN queued).
    queued = kernel_counters(advanced.srv)["held"]
    probe = Probe(source, target_of(source), SERVICE_PORT, "syn", sport=40002)
    assert answers(advanced.atk, [probe], PATIENCE) == ["SA"]
    assert kernel_counters(advanced.srv)["held"] == queued
    assert hold(advanced)["let_through"] == 1


def test_the_kernels_block_drops_a_held_syn_whose_trap_touch_the_daemon_never_heard_of(
    env_factory: Callable[[str], Env],
) -> None:
    """At the hold's end the SYN goes through the kernel's rules once more (NF_REPEAT), after
    its source is released: a source the kernel blocked at its trap packet meanwhile is dropped
    there. Here the trap's report never comes: `event_rate = 1`, and another source's trap
    packet, sent just before in the same batch, took the second's one report."""
    env = env_factory(ADVANCED + "event_rate = 1\n")
    env.start()
    wait_until(lambda: heartbeat(env), PATIENCE, "the daemon reads the hold's queue")
    other, source = fresh_source(env, 20, 4), fresh_source(env, 21, 4)
    target = target_of(source)
    with captured(env) as frames:
        send(env.atk, [Probe(other, target, TRAP + 1, "syn"),
                       Probe(source, target, SERVICE_PORT, "syn"),
                       Probe(source, target, TRAP, "syn", sport=40001)])  # fmt: skip
        wait_until(lambda: hold(env)["let_through"] == 1, PATIENCE, "the hold ended")
        wait_until(lambda: env.json("status")["kernel"]["events"]["over_total_rate"] >= 1,
                   PATIENCE, "the scanner's trap report held back by event_rate")  # fmt: skip
    assert [e["port"] for e in env.json("history", source)] == []  # the daemon never knew
    assert syn_acks(frames, source) == []  # the kernel dropped the SYN it let through
    assert [s.dport for s in syns(frames, source)] == [SERVICE_PORT, TRAP]


@pytest.mark.parametrize(("family", "discovery"), [(4, "ack"), (6, "ack"), (4, "icmp-timestamp")])
def test_a_scanners_discovery_probe_beside_the_syn_hides_the_service(
    advanced: Env, family: int, discovery: str
) -> None:
    """nmap's host discovery for a target off its link sends a SYN to 443, an ACK to 80 and
    an ICMP timestamp request, none of them a trap packet when 443 and 80 are served: the
    ACK (no connection has it) or the timestamp request makes the source suspect, and the
    held SYN is dropped at the hold's end, in the kernel."""
    source = attacker(family)
    target, port = target_of(source), SERVICE_PORT
    suspect = kernel_counters(advanced.srv)["hold_suspect"]
    with captured(advanced) as frames:
        send(advanced.atk, [Probe(source, target, port, "syn"),
                            Probe(source, target, port, discovery, sport=40001)])  # fmt: skip
        wait_until(lambda: kernel_counters(advanced.srv)["hold_suspect"] == suspect + 1,
                   PATIENCE, "the held SYN dropped as a suspect's")  # fmt: skip
    assert syn_acks(frames, source) == []


def test_known_clients_are_never_held(advanced: Env) -> None:
    env = advanced
    queued = kernel_counters(env.srv)["held"]
    assert tcp_works(env.cli, ALLOWED, SRV_CLI, SERVICE_PORT, CONNECT)  # allow-listed
    assert kernel_counters(env.srv)["held"] == queued
    assert tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT, CONNECT)  # new: held, released
    assert kernel_counters(env.srv)["held"] == queued + 1
    wait_until(lambda: env.in_set("clients_v4", CLIENT), PATIENCE, "a recent client")
    wait_until(lambda: env.in_set("released_v4", CLIENT), PATIENCE, "released")
    # Forget the release: being a recent client alone keeps its SYNs in the fast path.
    env.srv.run(["nft", "delete", "element", "inet", TABLE, "released_v4", f"{{ {CLIENT} }}"])
    assert tcp_works(env.cli, CLIENT, SRV_CLI, SERVICE_PORT, CONNECT)
    assert kernel_counters(env.srv)["held"] == queued + 1


def test_a_stopped_daemon_never_keeps_new_clients_out(advanced: Env) -> None:
    """SIGSTOP: the daemon still has the queue bound but answers nothing. A SYN queued before
    its heartbeat expires is sent again by TCP and passes after; once it has expired, no SYN
    is held and each is counted `idle`."""
    env, pid = advanced, advanced.daemon_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        assert tcp_works(env.atk, ATK4_B, SRV4, SERVICE_PORT, CONNECT)  # right after the stop
        wait_until(lambda: not heartbeat(env), PATIENCE, "the heartbeat expired")
        before = kernel_counters(env.srv)
        assert tcp_works(env.atk, ATK4, SRV4, SERVICE_PORT, CONNECT)
        assert tcp_works(env.atk, ATK6, SRV6, SERVICE_PORT, CONNECT)
        after = kernel_counters(env.srv)
        assert after["held"] == before["held"]
        assert after["hold_idle"] >= before["hold_idle"] + 2
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: hold(env)["idle"] >= 2, PATIENCE, "counted idle")
    wait_until(lambda: heartbeat(env), PATIENCE, "holding again")
    assert_hidden(env, fresh_source(env, 10, 4))


def test_a_killed_daemon_never_keeps_new_clients_out(advanced: Env) -> None:
    """SIGKILL: nothing reads the queue; its `bypass` lets every SYN through at once."""
    env = advanced
    assert env.daemon is not None
    os.kill(env.daemon_pid(), signal.SIGKILL)
    wait_until(lambda: env.daemon is not None and env.daemon.poll() is not None, PATIENCE,
               "the daemon gone")  # fmt: skip
    before = kernel_counters(env.srv)
    assert tcp_works(env.atk, ATK4, SRV4, SERVICE_PORT, CONNECT)
    assert tcp_works(env.atk, ATK6, SRV6, SERVICE_PORT, CONNECT)
    after = kernel_counters(env.srv)
    # Queued and let through by `bypass` while the heartbeat lasts (2 s), `idle` after.
    assert after["held"] + after["hold_idle"] >= before["held"] + before["hold_idle"] + 2


def test_stealth_mode_hides_the_service_too(env_factory: Callable[[str], Env]) -> None:
    env = env_factory(STEALTH)
    env.start()
    wait_until(lambda: heartbeat(env), PATIENCE, "the daemon reads the hold's queue")
    assert_hidden(env, ATK6)
    assert_answered_after_the_hold(env, ATK4)


def test_a_reload_keeps_holding(advanced: Env) -> None:
    env = advanced
    env.config.write_text(env.config.read_text().replace('"400ms"', '"300ms"'))
    env.porttrap("reload")
    wait_until(lambda: hold(env)["hold_ms"] == 300, PATIENCE, "the new hold")
    wait_until(lambda: heartbeat(env), PATIENCE, "the daemon reads the hold's queue")
    assert_hidden(env, fresh_source(env, 10, 4))
    os.kill(env.daemon_pid(), signal.SIGHUP)  # nothing changed
    wait_until(lambda: "event=reloaded changed=nothing" in env.log_text(), PATIENCE, "SIGHUP")
    assert_hidden(env, fresh_source(env, 11, 6))
    assert_answered_after_the_hold(env, ATK4, hold_ms=300)


def test_the_rebuild_after_a_firewall_flush_keeps_holding(advanced: Env) -> None:
    env = advanced
    env.srv.run(["nft", "flush", "ruleset"])  # what `systemctl restart nftables` does
    wait_until(lambda: str(SERVICE_PORT) in hold_ports(env) and heartbeat(env), PATIENCE,
               "the hold rebuilt, the daemon ready")  # fmt: skip
    assert_hidden(env, ATK6)
    assert_answered_after_the_hold(env, ATK4)
