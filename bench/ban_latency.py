"""Time from a completed trap connect to the attacker being dropped in the kernel.

Each try uses a fresh attacker address: it connects to a TCP trap (t0 = connect returned), then
sends probe SYNs to a real service every 0.2 ms; the first probe that gets no answer within
20 ms marks the drop, at the time it was sent. Run as root:

    .venv/bin/python bench/ban_latency.py [--tries 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import time

from common import Steal, environment, percentiles
from daemon_env import ATK4, SERVICE_PORT, SRV4, Env, open_socket, tcp_works

CONFIG = '[traps]\ntcp = ["2323"]\nudp = []\n[ban]\ntime = "1h"\n'
PROBE_TIMEOUT = 0.02
PROBE_GAP = 0.0002


def probe_answered(env, source: str) -> tuple[float, bool]:  # type: ignore[no-untyped-def]
    """Send one SYN to the service; (send time, whether the handshake completed)."""
    sock = open_socket(env.atk, source, socket.SOCK_STREAM)
    sock.setblocking(False)
    sent = time.perf_counter()
    with contextlib.suppress(BlockingIOError):
        sock.connect((SRV4, SERVICE_PORT))
    _, ready, _ = select.select([], [sock], [], PROBE_TIMEOUT)
    answered = bool(ready) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    sock.close()
    return sent, answered


def one_try(env, source: str) -> float:  # type: ignore[no-untyped-def]
    assert tcp_works(env.atk, source, SRV4, SERVICE_PORT), "fresh source must get through"
    trap = open_socket(env.atk, source, socket.SOCK_STREAM)
    trap.connect((SRV4, 2323))
    t0 = time.perf_counter()
    trap.close()
    deadline = t0 + 2.0
    while time.perf_counter() < deadline:
        sent, answered = probe_answered(env, source)
        if not answered:
            return (sent - t0) * 1000
        time.sleep(PROBE_GAP)
    raise RuntimeError(f"{source} was not dropped within 2 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=200)
    args = parser.parse_args()
    with environment(CONFIG) as env:
        sources = [f"192.0.2.{i}" for i in range(10, 10 + min(args.tries, 240))]
        for source in sources:
            env.atk.run(["ip", "addr", "add", f"{source}/24", "dev", _atk_device(env)])
        env.start()
        with Steal() as steal:
            samples = [one_try(env, source) for source in sources]
        env.stop()
    result = {
        "benchmark": "trap connect -> dropped (ms)",
        **percentiles(samples),
        "cpu_steal_percent": steal.percent,
    }
    print(json.dumps(result, indent=2))


def _atk_device(env: Env) -> str:
    out: str = env.atk.run(["ip", "-o", "addr", "show", "to", ATK4])
    return out.split()[1]


if __name__ == "__main__":
    main()
