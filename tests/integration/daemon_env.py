"""A protected host, an attacker and clients, each in its own network namespace, with the real
daemon running in the protected one. Documentation addresses only.

    atk (192.0.2.2, 192.0.2.3, 2001:db8:1::2) ---- srv (192.0.2.1, 2001:db8:1::1)
    cli (198.51.100.2, 198.51.100.3 allowed)  ---- srv (198.51.100.1)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess  # noqa: TID251 - test helper
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import waiting
from netns import Netns

# The tests' one way to wait (tests/waiting.py), also under the name many tests import here.
wait_until = waiting.wait_until
PATIENCE = waiting.PATIENCE

PORTTRAP = [sys.executable, "-m", "porttrap"]
SERVICE_PORT = 8080
SRV4, SRV6, SRV_CLI = "192.0.2.1", "2001:db8:1::1", "198.51.100.1"
ATK4, ATK4_B, ATK6 = "192.0.2.2", "192.0.2.3", "2001:db8:1::2"
CLIENT, ALLOWED = "198.51.100.2", "198.51.100.3"
# A client that resets at once (nmap -sT does) must not end the service: sendall would raise.
SERVICE = (
    "import contextlib, socket\n"
    "s = socket.create_server(('::', %d), family=socket.AF_INET6, dualstack_ipv6=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    with c, contextlib.suppress(OSError):\n"
    "        c.sendall(b'hello')\n"
)

# More services (the ports as arguments, IPv4 and IPv6): accept, close at once.
SERVE = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.create_server(('::', port), family=socket.AF_INET6, dualstack_ipv6=True)
    sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept(); c.close()
"""


def open_socket(ns: Netns, address: str, kind: int) -> socket.socket:
    """A socket created inside `ns` (it stays there), bound to source `address`."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with ns.inside():
        sock = socket.socket(family, kind)
    sock.bind((address, 0))
    return sock


def tcp_works(ns: Netns, source: str, host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from `source` in `ns` to host:port completes."""
    with open_socket(ns, source, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def udp_send(ns: Netns, source: str, host: str, port: int) -> None:
    with open_socket(ns, source, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"probe", (host, port))


class BanAnnouncements:
    """Every element added to porttrap's ban sets, as the kernel announces it (`nft monitor`):
    what the kernel was given, even for a ban too short to be seen by polling."""

    def __init__(self, ns: Netns) -> None:
        self.lines: list[str] = []
        # The scratch table exists before the monitor starts: `nft monitor` reads the ruleset
        # once at its start, and drops (silently) the elements of a set it has not seen.
        ns.run(["nft", "add table inet ready { set s { type inet_service; }; }"])
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "nft", "-j", "monitor", "new", "elements"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._ready(ns)

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line)

    def _ready(self, ns: Netns) -> None:
        """Until the monitor shows an element added to a scratch set: it is listening."""
        ports = iter(range(1, 10_000))

        def heard() -> bool:
            ns.run(["nft", f"add element inet ready s {{ {next(ports)} }}"])
            return any('"ready"' in line for line in self.lines)

        wait_until(heard, PATIENCE, "nft monitor listening")
        ns.run(["nft", "delete table inet ready"])

    def timeouts(self, address: str) -> list[int | None]:
        """The kernel timeout of each element added for `address`; None: no timeout (for good)."""
        found: list[int | None] = []
        for line in list(self.lines):
            element = json.loads(line).get("add", {}).get("element", {})
            if element.get("table") != "porttrap" or not element["name"].startswith("ban_v"):
                continue
            for item in element["elem"]["set"]:
                if item == address:
                    found.append(None)
                elif isinstance(item, dict) and item["elem"]["val"] == address:
                    found.append(item["elem"].get("timeout"))
        return found

    def close(self) -> None:
        self._process.kill()
        self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        assert self._process.stdout is not None
        self._process.stdout.close()


@contextmanager
def announcements(env: Env) -> Iterator[BanAnnouncements]:
    monitor = BanAnnouncements(env.srv)
    try:
        yield monitor
    finally:
        monitor.close()


class Env:
    """The namespaces, the config and the daemon."""

    def __init__(self, make: Callable[[], Netns], tmp: Path, config: str) -> None:
        self.srv, self.atk, self.cli = make(), make(), make()
        # (the protected side's interface, the other side's) of each link
        self.atk_link = self.srv.veth(self.atk, [f"{SRV4}/24", f"{SRV6}/64"],
                                      [f"{ATK4}/24", f"{ATK4_B}/24", f"{ATK6}/64"])  # fmt: skip
        self.cli_link = self.srv.veth(
            self.cli, [f"{SRV_CLI}/24"], [f"{CLIENT}/24", f"{ALLOWED}/24"]
        )
        self.state = tmp / "state"
        self.config = tmp / "porttrap.toml"
        self.config.write_text(f'state_dir = "{self.state}"\n{config}')
        self.log = tmp / "daemon.log"
        self.daemon: subprocess.Popen[str] | None = None
        self.wrap: list[str] = []  # before `ip netns exec` of the daemon and the CLI (nsenter)
        self.srv.start([sys.executable, "-c", SERVICE % SERVICE_PORT])
        wait_until(
            lambda: tcp_works(self.cli, CLIENT, SRV_CLI, SERVICE_PORT), PATIENCE, "service up"
        )

    def porttrap(self, *args: str, check: bool = True, stdin: str | None = None
                 ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run the CLI inside the protected namespace."""
        argv = [*self.wrap, "ip", "netns", "exec", self.srv.name, *PORTTRAP, *args,
                "-c", str(self.config)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, input=stdin,
                              check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"porttrap {args} failed ({done.returncode}): {done.stderr}")
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.porttrap(*args, "--json").stdout)

    def start(self, *extra: str, wait: bool = True) -> None:
        with self.log.open("a") as log:
            self.daemon = subprocess.Popen(
                [*self.wrap, "ip", "netns", "exec", self.srv.name, *PORTTRAP, "run", "-c",
                 str(self.config), *extra],
                stdout=log, stderr=log, text=True,
            )  # fmt: skip
        self.srv.processes.append(self.daemon)
        if wait:
            wait_until(self._running, PATIENCE, "daemon answers status")

    def _running(self) -> bool:
        assert self.daemon is not None
        if self.daemon.poll() is not None:
            raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{self.log_text()}")
        return self.porttrap("status", check=False).returncode == 0

    def stop(self) -> None:
        assert self.daemon is not None
        os.kill(self.daemon.pid, signal.SIGTERM)
        assert self.daemon.wait(timeout=20) == 0, self.log_text()

    def recorded_bans(self, count: int, ban_count: int | None = None) -> Any:
        """`porttrap bans --json` once it lists `count` bans (each the `ban_count`-th of its
        address, when given): a trap's ban reaches the kernel first and the database a moment
        later, on the writer thread. Returns that very listing: a short ban may be over by
        the next one."""
        seen: list[Any] = []

        def listed() -> bool:
            seen[:] = self.json("bans")
            counts = {b["ban_count"] for b in seen}
            return len(seen) == count and (ban_count is None or counts == {ban_count})

        wait_until(listed, PATIENCE, f"{count} bans recorded")
        return seen

    def log_text(self) -> str:
        return self.log.read_text()

    def db(self, query: str, *params: object) -> list[Any]:
        """Rows of `query` on the daemon's SQLite database, opened read-only: exact times
        (the CLI shows whole seconds) and whole tables (the CLI shows a page)."""
        uri = f"file:{self.state / 'porttrap.db'}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def daemon_pid(self) -> int:
        """The daemon's own PID, as it reports it (`ip netns exec` may stand in between)."""
        return int(self.json("status")["pid"])

    def nft_set(self, name: str) -> list[Any]:
        """Elements of one of porttrap's sets in the protected namespace ([] when absent)."""
        out = self.srv.run(["nft", "-j", "list", "set", "inet", "porttrap", name])
        for item in json.loads(out)["nftables"]:
            if "set" in item:
                return list(item["set"].get("elem", []))
        return []

    def element(self, name: str, address: str) -> Any:
        """The element holding `address` (an address or a CIDR range) in one of porttrap's
        sets, as nft's JSON writes it ('192.0.2.2', or {"elem": {"val": ..., "timeout": ...}}
        when it has a timeout), or None."""
        for elem in self.nft_set(name):
            value = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
            if isinstance(value, dict) and "prefix" in value:
                value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
            if value == address:
                return elem
        return None

    def in_set(self, name: str, address: str) -> bool:
        return self.element(name, address) is not None

    def permanent_in(self, name: str, address: str) -> bool:
        """Whether `address` is in set `name` without a timeout: a permanent ban."""
        elem = self.element(name, address)
        if elem is None:
            return False
        details = elem["elem"] if isinstance(elem, dict) and "elem" in elem else {}
        return "timeout" not in details and "expires" not in details

    def expires(self, name: str, address: str) -> float | None:
        """Seconds left on `address` in set `name`; None when absent or without a timeout."""
        elem = self.element(name, address)
        if isinstance(elem, dict) and "elem" in elem and "expires" in elem["elem"]:
            return float(elem["elem"]["expires"])
        return None

    def service_reachable(self, ns: Netns, source: str, host: str = SRV4) -> bool:
        return tcp_works(ns, source, host, SERVICE_PORT)
