"""Records what ipset and iptables print, in a throwaway network namespace (as root), for the
parsers' unit tests: `ipset save` and `ipset list -n` of porttrap's sets beside someone else's,
`iptables -t raw -S` / `ip6tables -t raw -S` in each state porttrap must tell apart, the same of
the security table with the watch (connect mode, UDP traps on 69 and 161), and the error text of
a failed `ipset restore`. The expected results (`expected.json`) are written by hand,
never by running the parsers. Recorded once and kept; rerun only to add or change cases:

    .venv/bin/python tests/data/ipset/record_ipset.py
"""

from __future__ import annotations

import subprocess  # noqa: TID251 - records a program's error text
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))  # tests/, for netns

from netns import Netns  # noqa: E402
from porttrap.config.loader import load_text  # noqa: E402
from porttrap.firewall.exec import Exec  # noqa: E402
from porttrap.firewall.ipset import IpsetBackend  # noqa: E402
from porttrap.model import Ban, parse_target  # noqa: E402
from porttrap.sensorspec import SensorState, spec_from_config  # noqa: E402

NOW = 1_800_000_000.0
BANS = {
    "198.51.100.7": 3600.0,
    "198.51.100.8": None,
    "203.0.113.0/24": 7200.0,
    "192.0.2.0/25": None,
    "198.51.100.9": 40 * 86400.0,  # longer than ipset can time: held at 2147483 s
    "2001:db8::7": 3600.0,
    "2001:db8::8": None,
    "2001:db8:1::/48": 10800.0,
    "2001:db8:2::/64": None,
}


def save(name: str, text: str) -> None:
    (HERE / name).write_text(text)
    print(f"wrote {name}")


def main() -> None:
    for recorder in (record, record_watch):
        netns = Netns.create()
        try:
            recorder(netns)
        finally:
            netns.delete()


def record(netns: Netns) -> None:
    run = netns.run
    save("raw-fresh-v4.txt", run(["iptables", "-t", "raw", "-S"]))
    run(["ipset", "create", "other", "hash:ip", "family", "inet", "timeout", "0"])
    run(["ipset", "add", "other", "198.51.100.99", "timeout", "600"])
    bans = [
        Ban(parse_target(target), NOW, None if seconds is None else NOW + seconds, 1, "test")
        for target, seconds in BANS.items()
    ]
    IpsetBackend(runner=Exec(netns=netns.name)).setup(bans, NOW)
    run(["iptables", "-t", "raw", "-N", "mine"])
    run(["iptables", "-t", "raw", "-A", "PREROUTING", "-s", "192.0.2.99", "-j", "mine"])
    save("save.txt", run(["ipset", "save"]))
    save("list-names.txt", run(["ipset", "list", "-n"]))
    save("raw-in-place-v4.txt", run(["iptables", "-t", "raw", "-S"]))
    save("raw-in-place-v6.txt", run(["ip6tables", "-t", "raw", "-S"]))
    run(["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT"])
    save("raw-accept-first-v4.txt", run(["iptables", "-t", "raw", "-S"]))
    run(["iptables", "-t", "raw", "-I", "PREROUTING", "1", "-j", "porttrap"])
    save("raw-two-jumps-v4.txt", run(["iptables", "-t", "raw", "-S"]))
    run(["iptables", "-t", "raw", "-F", "porttrap"])
    save("raw-chain-flushed-v4.txt", run(["iptables", "-t", "raw", "-S"]))
    failed = subprocess.run(
        ["ip", "netns", "exec", netns.name, "ipset", "-exist", "restore"],
        input="add porttrap_v4 192.0.2.1 timeout 60\nadd nosuch 192.0.2.2 timeout 60\n",
        capture_output=True,
        text=True,
        check=False,
    )
    save("restore-missing-set.stderr", failed.stderr)


def record_watch(netns: Netns) -> None:
    run = netns.run
    save("security-fresh-v4.txt", run(["iptables", "-t", "security", "-S"]))
    run(["iptables", "-t", "security", "-N", "selinux"])
    run(["iptables", "-t", "security", "-A", "INPUT", "-j", "selinux"])
    config = load_text('[traps]\ntcp = ["23"]\nudp = ["69", "161"]\n', None)
    state = SensorState(spec_from_config(config), {})
    IpsetBackend(runner=Exec(netns=netns.name)).setup([], NOW, state)
    save("security-in-place-v4.txt", run(["iptables", "-t", "security", "-S"]))
    save("security-in-place-v6.txt", run(["ip6tables", "-t", "security", "-S"]))
    save("list-names-watch.txt", run(["ipset", "list", "-n"]))
    run(["iptables", "-t", "security", "-I", "INPUT", "1", "-j", "ACCEPT"])
    save("security-accept-first-v4.txt", run(["iptables", "-t", "security", "-S"]))
    run(["iptables", "-t", "security", "-D", "INPUT", "1"])
    run(["iptables", "-t", "security", "-F", "porttrap_mark"])
    save("security-mark-flushed-v4.txt", run(["iptables", "-t", "security", "-S"]))


if __name__ == "__main__":
    main()
