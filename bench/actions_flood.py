"""What actions cost the daemon's event loop when hits or bans come faster than commands run.

A command on every hit (a slow one: `sleep 30`, so every slot stays busy) and a forged flood of
N hits from N sources: the first `max_running` commands are spawned, `queue` wait, the rest are
dropped. Then one admin bulk ban of B addresses with a command on ban. Reports the loop time per
hit and per ban, and how many actions were spawned, queued and dropped. No network: the
dispatcher is driven directly, as the daemon's shell drives it (`ActionsHit`, `ActionsAfter`).

    .venv/bin/python bench/actions_flood.py [--hits 200000] [--bans 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from porttrap.actions.dispatch import Dispatcher  # noqa: E402
from porttrap.config.schema import Actions, CommandAction, Event, Modes  # noqa: E402
from porttrap.model import Ban, Hit, Outcome, Proto  # noqa: E402

LOCAL = ipaddress.ip_address("203.0.113.1")
SLOW = ("/bin/sleep", "30")


def hits(count: int) -> list[Hit]:
    base = int(ipaddress.ip_address("2001:db8::"))
    return [
        Hit(1.8e9, ipaddress.ip_address(base + n), 40000, LOCAL, 23, Proto.TCP, "syn")
        for n in range(count)
    ]


def bans(count: int) -> list[Ban]:
    base = int(ipaddress.ip_address("2001:db8:1::"))
    return [
        Ban(ipaddress.ip_network(base + n), 1.8e9, 1.8e9 + 3600, 1, "manual") for n in range(count)
    ]


async def flood(state: Path, count: int, on: Event) -> tuple[float, dict[str, object]]:
    command = CommandAction(run=SLOW, on=frozenset({on}), timeout=60.0)
    dispatcher = Dispatcher(Actions(commands=(command,)), Modes(), state)
    items = hits(count) if on is Event.HIT else bans(count)
    started = time.perf_counter()
    if on is Event.HIT:
        for hit in items:
            dispatcher.hit(hit, Outcome.COUNTED, None)  # type: ignore[arg-type]
    else:
        dispatcher.after_kernel(items)  # type: ignore[arg-type]
    spent = time.perf_counter() - started
    status = dispatcher.status()
    await dispatcher.close(grace=0.5)
    return spent / count, status


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--bans", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, count, on in (("hits", args.hits, Event.HIT), ("bans", args.bans, Event.BAN)):
            per, status = await flood(Path(tmp), count, on)
            shown = {k: status[k] for k in ("running", "waiting", "dropped") if k in status}
            print(f"{count} {name}: {per * 1e6:.2f} µs each on the loop; {shown}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"max RSS {rss:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
