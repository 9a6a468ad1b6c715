"""100,000 bans through the running daemon: applied (`porttrap ban -f`), restored on restart,
and the daemon's memory while it holds them. Addresses come from 2001:db8::/32 (documentation).
Run as root:

    .venv/bin/python bench/bulk_bans.py [--count 100000]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import time

from common import Steal, environment, rss_mib

CONFIG = '[traps]\ntcp = ["2323"]\nudp = []\n'


def addresses(count: int) -> str:
    base = int(ipaddress.IPv6Address("2001:db8:b::"))
    return "\n".join(str(ipaddress.IPv6Address(base + i)) for i in range(1, count + 1)) + "\n"


def restore_times(log: str) -> dict[str, float]:
    """The last `restored` event's seconds: in all, reading + deciding, kernel."""
    found = re.findall(r"event=restored .*seconds=([\d.]+) store_s=([\d.]+) kernel_s=([\d.]+)", log)
    total, store, kernel = (float(x) for x in found[-1])
    return {"restore_s": total, "restore_store_s": store, "restore_kernel_s": kernel}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    result: dict[str, float | int] = {"bans": args.count}
    with environment(CONFIG) as env, Steal() as steal:
        env.start()
        assert env.daemon is not None
        result["rss_mib_idle"] = round(rss_mib(env.daemon.pid), 1)
        started = time.perf_counter()
        env.porttrap("ban", "--for", "1d", "-f", "-", stdin=addresses(args.count))
        result["ban_command_s"] = round(time.perf_counter() - started, 2)
        log = env.log_text()
        applied = re.findall(r"event=applied changes=(\d+) kernel_ms=([\d.]+)", log)  # fmt: skip
        result["kernel_apply_s"] = round(float(applied[-1][1]) / 1000, 2)
        result["rss_mib_with_bans"] = round(rss_mib(env.daemon.pid), 1)
        env.stop()
        started = time.perf_counter()
        env.start()
        result["restart_until_answering_s"] = round(time.perf_counter() - started, 2)
        result.update(restore_times(env.log_text()))
        result["rss_mib_after_restore"] = round(rss_mib(env.daemon.pid), 1)
        assert env.json("status")["bans"]["active"] == args.count
        env.stop()
    result["cpu_steal_percent"] = steal.percent
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
