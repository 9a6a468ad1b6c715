"""The metrics endpoint of a real daemon in its own network namespace: real packets from the
attacker's namespace, a scrape over TCP from inside the protected one (where the endpoint
listens on 127.0.0.1), read with the Prometheus client's parser."""

from __future__ import annotations

import http.client
from collections.abc import Callable

import pytest
from crafted import Probe, send
from daemon_env import ATK4, SERVICE_PORT, SRV4, Env, tcp_works
from prometheus_client.core import Metric

from scrape import by, dashboard_metrics, families, labels, sample_names, values
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

PORT = 9477
TRAP = 2323
METRICS = f'[metrics]\nlisten = "127.0.0.1:{PORT}"\n'
CONNECT = f'[traps]\ntcp = ["{TRAP}"]\nudp = []\n[ban]\ntime = "1h"\n{METRICS}'
STEALTH = f'[traps]\nmode = "stealth"\ntcp = ["{TRAP}"]\nudp = []\n{METRICS}'


def scrape(env: Env) -> dict[str, Metric]:
    """GET /metrics from inside the protected namespace, parsed."""
    with env.srv.inside():
        connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
        try:
            connection.request("GET", "/metrics")
            answer = connection.getresponse()
            assert answer.status == 200
            assert answer.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
            text = answer.read().decode()
        finally:
            connection.close()
    return families(text)


def settled(env: Env, check: Callable[[dict[str, Metric]], bool], what: str) -> dict[str, Metric]:
    """The first scrape (one every 0.1 s, for as long as PATIENCE) for which `check` holds."""
    seen: list[dict[str, Metric]] = []

    def scraped() -> bool:
        seen[:] = [scrape(env)]
        return check(seen[0])

    wait_until(scraped, PATIENCE, what)
    return seen[0]


def test_a_trapped_scanner_shows_as_a_hit_a_ban_and_a_set_element(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(CONNECT)
    env.start()
    idle = scrape(env)
    assert values(idle["porttrap_hits"]) == {}
    assert by("kind", idle["porttrap_bans_active"]) == {"temporary": 0, "permanent": 0}

    assert tcp_works(env.atk, ATK4, SRV4, TRAP)
    got = settled(env, lambda f: by("kind", f["porttrap_bans_active"])["temporary"] == 1, "ban")
    assert values(got["porttrap_hits"]) == {
        labels(proto="tcp", port=str(TRAP), kind="connect", outcome="banned"): 1
    }
    assert by("kind", got["porttrap_bans"]) == {"temporary": 1, "permanent": 0}
    assert by("kind", got["porttrap_bans_active"]) == {"temporary": 1, "permanent": 0}
    assert by("family", got["porttrap_set_elements"]) == {"ipv4": 1, "ipv6": 0}
    assert env.in_set("ban_v4", ATK4)  # what the metric says is what the kernel holds
    for histogram in ("porttrap_decision_seconds", "porttrap_ban_to_kernel_seconds"):
        assert values(got[histogram], f"{histogram}_count") == {frozenset(): 1}
    info = dict(next(iter(values(got["porttrap_info"]))))
    assert (info["backend"], info["tcp_mode"]) == ("nftables", "connect")
    assert by("state", got["porttrap_trap_sockets"])["skipped"] == 0
    assert not dashboard_metrics() - sample_names(got)  # the dashboard's queries find them all


def test_the_kernel_sensors_reports_and_blocks_are_counted(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(STEALTH)
    env.start()
    send(env.atk, [Probe(ATK4, SRV4, TRAP, "syn")])

    def blocked(scraped: dict[str, Metric]) -> bool:
        return sum(by("generation", scraped["porttrap_kernel_block_fill"]).values()) >= 1

    got = settled(env, blocked, "the block estimate counts the probe's source")
    assert values(got["porttrap_hits"]) == {
        labels(proto="tcp", port=str(TRAP), kind="syn", outcome="counted"): 1
    }
    assert values(got["porttrap_kernel_reports"]) == {frozenset(): 1}
    assert values(got["porttrap_kernel_block_capacity"]) == {frozenset(): 65536}
    dropped = by("what", got["porttrap_events_dropped"])
    assert dropped == dict.fromkeys(("hit_not_stored", "hit_sampled", "action",
                                     "kernel_source_rate", "kernel_total_rate",
                                     "kernel_overrun"), 0)  # fmt: skip
    assert dict(next(iter(values(got["porttrap_info"]))))["tcp_mode"] == "stealth"
    assert not dashboard_metrics() - sample_names(got)


def test_an_address_that_cannot_be_bound_stops_the_daemon_before_the_kernel_is_touched(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(CONNECT.replace(str(PORT), str(SERVICE_PORT)))  # the service holds it
    done = env.porttrap("run", check=False)
    assert done.returncode != 0
    assert (
        f"cannot listen for metrics on 127.0.0.1:{SERVICE_PORT} ([metrics] listen): Address "
        "already in use; another program (or another porttrap) holds this port"
    ) in done.stderr
    assert "porttrap" not in env.srv.run(["nft", "list", "tables"])
