"""A fleet: a throw-away PostgreSQL cluster (tests/pgcluster.py) and porttrap hosts, each in
its own network namespace on one bridge (tests/bridge.py), and a scanner. Documentation
addresses only.

    web-N  198.51.100.N      2001:db8:f::N     (N = 1, 2 ...: the real daemon, a service)
    db     198.51.100.100    2001:db8:f::100   (PostgreSQL, TLS verify-full)
    atk    198.51.100.200    2001:db8:f::200   (the scanner; .201 and ::201 too)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess  # noqa: TID251 - test helper
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon_env import PORTTRAP, SERVE, open_socket, tcp_works

from bridge import Bridge, Plugged
from netns import Netns
from pgcluster import PgCluster
from porttrap.fleet.link import LAST_RETRY
from waiting import PATIENCE, wait_until

TRAP = 2323  # every host's connect-mode trap
SERVICE = 8080  # every host serves this: dropped once the scanner is banned
ATK_HOST = 200
ATK4, ATK4_B, ATK6, ATK6_B = (
    "198.51.100.200",
    "198.51.100.201",
    "2001:db8:f::200",
    "2001:db8:f::201",
)
CONFIG = """state_dir = "{state}"
[traps]
tcp = ["{trap}"]
udp = []
[ban]
time = "{time}"
[fleet]
url = "{url}"
password_file = "{password}"
name = "{name}"
{extra}"""


class Host:
    """One porttrap host of the fleet: its namespace, its configuration, its daemon."""

    def __init__(self, lab: FleetLab, number: int, extra: str = "", time: str = "1h") -> None:
        self.lab = lab
        self.name = f"web-{number}"
        self.plugged: Plugged = lab.bridge.plug(lab.make_netns(), number)
        self.netns = self.plugged.netns
        self.dir = lab.tmp / self.name
        self.dir.mkdir()
        password = self.dir / "fleet.password"
        lab.porttrap_root("fleet", "add-host", self.name, "--admin-url", lab.cluster.admin_url(),
                          "--write-password", str(password))  # fmt: skip
        role = f"porttrap_host_{self.name.replace('-', '_')}"
        url = lab.cluster.url_for(role)
        self.config = self.dir / "porttrap.toml"
        self.config.write_text(CONFIG.format(state=self.dir / "state", trap=TRAP, time=time,
                                             url=url, password=password, name=self.name,
                                             extra=extra))  # fmt: skip
        self.log = self.dir / "daemon.log"
        self.daemon: subprocess.Popen[str] | None = None
        self.netns.start([sys.executable, "-c", SERVE, str(SERVICE)])

    @property
    def v4(self) -> str:
        return str(self.plugged.v4)

    @property
    def v6(self) -> str:
        return str(self.plugged.v6)

    def porttrap(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.netns.name, *PORTTRAP, *args, "-c", str(self.config)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{self.name}: porttrap {args} failed: {done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.porttrap(*args, "--json").stdout)

    def start(self, wait: bool = True) -> None:
        with self.log.open("a") as log:
            self.daemon = subprocess.Popen(
                ["ip", "netns", "exec", self.netns.name, *PORTTRAP, "run", "-c",
                 str(self.config)], stdout=log, stderr=log, text=True,
            )  # fmt: skip
        self.netns.processes.append(self.daemon)
        if wait:
            wait_until(self.connected, PATIENCE, f"{self.name} connected to the fleet")

    def running(self) -> bool:
        assert self.daemon is not None
        if self.daemon.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.daemon.returncode}:\n{self.log_text()}")
        return self.porttrap("status", check=False).returncode == 0

    def link(self) -> dict[str, Any]:
        return dict(self.json("fleet", "status")["link"])

    def connected(self) -> bool:
        return self.running() and bool(self.link().get("connected"))

    def stop(self) -> None:
        assert self.daemon is not None
        os.kill(self.daemon.pid, signal.SIGTERM)
        assert self.daemon.wait(timeout=PATIENCE) == 0, self.log_text()

    def kill(self) -> None:
        """SIGKILL the daemon itself (not `ip netns exec`, which execs into it)."""
        assert self.daemon is not None
        os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(timeout=PATIENCE)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def elements(self, address: str) -> list[Any]:
        """Elements of porttrap's ban set of `address`'s family that hold `address`."""
        family = 6 if ":" in address else 4
        out = self.netns.run(["nft", "-j", "list", "set", "inet", "porttrap", f"ban_v{family}"])
        found = []
        for item in json.loads(out)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                value = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
                if isinstance(value, dict) and "prefix" in value:
                    value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
                if value == address:
                    found.append(elem)
        return found

    def banned(self, address: str) -> bool:
        return bool(self.elements(address))

    def reachable_from_scanner(self, source: str = ATK4) -> bool:
        """Whether the scanner completes a TCP connection to this host's service."""
        return tcp_works(self.lab.atk.netns, source, self.v6 if ":" in source else self.v4, SERVICE)

    def bans(self) -> list[dict[str, Any]]:
        return list(self.json("bans"))


def _holds(host: Host, address: str, present: bool) -> Callable[[], bool]:
    return lambda: host.banned(address) == present


class FleetLab:
    """The database (schema made), the scanner, and `hosts` made with `add`."""

    def __init__(
        self, tmp: Path, make_netns: Callable[[], Netns], bridge: Bridge, cluster: PgCluster
    ) -> None:
        self.tmp = tmp
        self.make_netns = make_netns
        self.bridge = bridge
        self.cluster = cluster
        self.hosts: list[Host] = []
        self.atk = bridge.plug(make_netns(), ATK_HOST)
        bridge.plug(self.atk.netns, ATK_HOST + 1)  # a second scanner address (.201, ::201)
        self.porttrap_root("fleet", "init", "--admin-url", cluster.admin_url())

    def porttrap_root(self, *args: str) -> str:
        """The CLI in the machine's own namespace: the admin's commands over the unix socket."""
        done = subprocess.run([*PORTTRAP, *args], capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert done.returncode == 0, f"porttrap {args} failed: {done.stderr}"
        return done.stdout

    def add(self, count: int, extra: str = "", time: str = "1h", start: bool = True) -> list[Host]:
        made = [Host(self, len(self.hosts) + n + 1, extra, time) for n in range(count)]
        self.hosts += made
        if start:
            for host in made:
                host.start(wait=False)
            for host in made:
                wait_until(host.connected, PATIENCE, f"{host.name} connected to the fleet")
        return made

    def touch_trap(self, host: Host, source: str = ATK4) -> None:
        """The scanner completes a handshake to `host`'s trap (a verified hit)."""
        target = host.v6 if ":" in source else host.v4
        with open_socket(self.atk.netns, source, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect((target, TRAP))

    def reconnected(self, hosts: list[Host] | None = None) -> None:
        """Wait until every host (or `hosts`) is connected again: after a fault, a link may
        be waiting out its back-off (up to LAST_RETRY) before it tries again."""
        for host in hosts if hosts is not None else self.hosts:
            wait_until(host.connected, LAST_RETRY + PATIENCE, f"{host.name} reconnected")

    def everywhere(self, address: str, hosts: list[Host] | None = None, present: bool = True
                   ) -> None:  # fmt: skip
        """Wait until every host (or `hosts`) holds a ban of `address` (or none)."""
        state = "banned" if present else "not banned"
        for host in hosts if hosts is not None else self.hosts:
            wait_until(
                _holds(host, address, present), PATIENCE, f"{address} {state} on {host.name}"
            )

    def db(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        with self.cluster.admin() as conn:
            cursor = conn.execute(query, params)
            return list(cursor.fetchall()) if cursor.description is not None else []
