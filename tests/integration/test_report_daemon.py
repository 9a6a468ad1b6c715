"""`porttrap report` beside the real daemon (in network namespaces): while it runs and writes
the database, and after it stopped; the report reads the database and never changes it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from daemon_env import ATK4, ATK6, SRV4, SRV6, Env, tcp_works

from waiting import PATIENCE, wait_until

CONFIG = '[traps]\ntcp = ["2323"]\nudp = []\n[ban]\ntime = "1h"\n'


@pytest.mark.kernel
def test_a_report_while_the_daemon_runs_and_after_it_stopped(
    env_factory: Callable[[str], Env],
) -> None:
    env = env_factory(CONFIG)
    env.start()
    assert tcp_works(env.atk, ATK4, SRV4, 2323)
    assert tcp_works(env.atk, ATK6, SRV6, 2323)
    env.recorded_bans(2)
    # The bans are in the database; the hits, which the report's sources come from, follow on
    # the daemon's next tick (every 0.5 s): on a busy machine, after the bans were seen.
    rows = [f'<span class="addr">{address}</span>' for address in (ATK4, ATK6)]
    reports = [""]

    def lists_both() -> bool:
        reports[0] = env.porttrap("report", "--since", "1h").stdout
        return all(row in reports[0] for row in rows)

    wait_until(lists_both, PATIENCE, "the report lists both sources")
    running = reports[0]
    assert "tcp/2323" in running and running.count("banned until") == 2

    env.stop()
    database = env.state / "porttrap.db"
    before = database.read_bytes()
    stopped = env.porttrap("report", "--since", "1h", "--top", "1").stdout
    assert database.read_bytes() == before
    assert stopped.count('<span class="addr">') == 1  # --top 1
    assert "the 1 of 2 addresses" in stopped
