"""`porttrap report` beside the real daemon (in network namespaces): while it runs and writes
the database, and after it stopped; the report reads the database and never changes it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from daemon_env import ATK4, ATK6, SRV4, SRV6, Env, tcp_works

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

    running = env.porttrap("report", "--since", "1h").stdout
    for address in (ATK4, ATK6):
        assert f'<span class="addr">{address}</span>' in running
    assert "tcp/2323" in running and running.count("banned until") == 2

    env.stop()
    database = env.state / "porttrap.db"
    before = database.read_bytes()
    stopped = env.porttrap("report", "--since", "1h", "--top", "1").stdout
    assert database.read_bytes() == before
    assert stopped.count('<span class="addr">') == 1  # --top 1
    assert "the 1 of 2 addresses" in stopped
