"""porttrap.service under a real systemd 252 (booted in a throw-away container, see
systemd_env.py), driven by `porttrap install-service` and `uninstall-service` as an admin would:
systemd starts it as Type=notify and sees READY=1 and its status, the watchdog pings arrive, the
sandbox holds (capabilities, read-only file system, seccomp, no new privileges), a scanner is
banned, `systemctl reload` reloads it, and uninstall takes everything away again."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crafted import Probe, send
from daemon_env import tcp_works
from systemd_env import Container

import porttrap
from netns import Netns
from porttrap.service.unit import hidden_by_protect_home
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

SOURCE = Path(porttrap.__file__).resolve().parent.parent  # src/, holding the package
# A checkout under /root or /home (CI may clone there) is hidden from the service by
# ProtectHome=yes, and install-service refuses to run code from there. Only then, the container
# sees this checkout's venv and source under RELOCATED too, as if installed there.
IN_HOME = any(hidden_by_protect_home(p) for p in (Path(sys.prefix).resolve(), SOURCE))
RELOCATED = Path("/opt/porttrap-checkout")
EXE = str((RELOCATED / "venv" if IN_HOME else Path(sys.prefix)) / "bin" / "porttrap")
SRV, ATK = "192.0.2.1", "192.0.2.2"
UNIT_CAPS = (1 << 10) | (1 << 12)  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN
HOOK = "/usr/local/sbin/porttrap-test-hook"
CONFIG = f"""\
[traps]
tcp = ["23"]
udp = []
[[actions.command]]
on = ["ban"]
run = ["{HOOK}", "$TARGET$"]
"""
# An action command that writes down what it inherits from the service.
HOOK_SCRIPT = """#!/bin/sh
{ grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t'
  touch /etc/porttrap-hook-probe 2>/dev/null && echo etc=writable || echo etc=read-only
  echo "target=$1"
} > /var/lib/porttrap/hook.txt
"""
# Only for the test: start porttrap without sysinit.target, whose units (udev, sysctl ...)
# have no business in a container sharing the host's kernel; and a watchdog short enough to
# see several pings. Everything else is the unit as install-service writes it.
PING = "WatchdogTimestampMonotonic"  # microseconds of CLOCK_MONOTONIC
DROP_IN = "[Unit]\nDefaultDependencies=no\n[Service]\nWatchdogSec=3s\n"
# A checkout under /tmp or /var/tmp (CI may clone there) would be hidden from the service by
# PrivateTmp=yes, its executable and its code with it: only then, the test's drop-in turns
# PrivateTmp off.
if any(Path(porttrap.__file__).resolve().is_relative_to(t) for t in ("/tmp", "/var/tmp")):
    DROP_IN += "PrivateTmp=no\n"


@pytest.fixture
def container(netns_factory: Callable[[], Netns], tmp_path: Path) -> Iterator[Container]:
    made = Container(netns_factory(), tmp_path / "container")
    try:
        made.boot()
        if IN_HOME:
            relocate(made)
        yield made
    finally:
        if made.pid1:
            print(made.run(["journalctl", "--no-pager", "-o", "cat", "-n", "200"],
                           check=False).stdout)  # fmt: skip
        made.close()


def relocate(container: Container) -> None:
    """This checkout's venv and source bind-mounted under RELOCATED (in the container only).
    The venv's `porttrap` (its #! names the python under the home) is covered by a script that
    runs the relocated python on the relocated source."""
    venv, src = RELOCATED / "venv", RELOCATED / "src"
    for host, there in ((Path(sys.prefix).resolve(), venv), (SOURCE, src)):
        container.run(["mkdir", "-p", str(there)])
        container.run(["mount", "--bind", str(host), str(there)])
    script = "/usr/local/sbin/porttrap-checkout"
    container.write(
        script, f'#!/bin/sh\nPYTHONPATH={src} exec {venv}/bin/python -m porttrap "$@"\n'
    )
    container.run(["chmod", "755", script])
    container.run(["mount", "--bind", script, EXE])


def status_of(container: Container, pid: str) -> dict[str, str]:
    text = container.run(["cat", f"/proc/{pid}/status"]).stdout
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def mounts_of(container: Container, pid: str) -> dict[str, str]:
    """Mount point -> its options, as the process `pid` sees its file system."""
    text = container.run(["cat", f"/proc/{pid}/mountinfo"]).stdout
    return {line.split()[4]: line.split()[5] for line in text.splitlines()}


def banned(ns: Netns, address: str) -> bool:
    return address in ns.run(["nft", "list", "set", "inet", "porttrap", "ban_v4"])


def test_the_unit_under_systemd_from_install_to_uninstall(
    container: Container, netns_factory: Callable[[], Netns]
) -> None:
    atk = netns_factory()
    container.netns.veth(atk, [f"{SRV}/24"], [f"{ATK}/24"])
    assert container.run(["test", "-x", EXE], check=False).returncode == 0, (
        f"{EXE} is not visible inside the container (is it on a separate mount?)"
    )
    container.write("/etc/systemd/system/porttrap.service.d/test.conf", DROP_IN)
    container.write("/root/porttrap.toml", CONFIG)
    container.write(HOOK, HOOK_SCRIPT)
    container.run(["chmod", "755", HOOK])

    out = container.run([EXE, "install-service", "-c", "/root/porttrap.toml"]).stdout
    assert "enabled and started porttrap.service" in out
    # Type=notify: `systemctl start` returned once porttrap sent READY=1
    props = container.show("porttrap.service", "ActiveState", "SubState", "MainPID",
                           "StatusText", "WatchdogUSec", "NRestarts", "UnitFileState")  # fmt: skip
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    assert props["UnitFileState"] == "enabled"
    assert props["WatchdogUSec"] == "3s"
    assert "trap" in props["StatusText"], props  # STATUS= from porttrap
    pid = props["MainPID"]

    status = status_of(container, pid)
    assert int(status["CapEff"], 16) == UNIT_CAPS
    assert int(status["CapBnd"], 16) == UNIT_CAPS
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # the system call filter is in force
    mounts = mounts_of(container, pid)
    assert mounts["/"].startswith("ro"), mounts  # ProtectSystem=strict
    assert mounts["/run"].startswith("ro"), mounts  # ReadOnlyPaths=/run
    assert mounts["/var/lib/porttrap"].startswith("rw"), mounts  # StateDirectory=

    assert tcp_works(atk, ATK, SRV, 23)
    wait_until(lambda: banned(container.netns, ATK), PATIENCE, "the scanner banned")
    hook = "/var/lib/porttrap/hook.txt"
    wait_until(lambda: container.run(["test", "-s", hook], check=False).returncode == 0, PATIENCE,
               "the ban's action command ran")  # fmt: skip
    inherited = container.run(["cat", hook]).stdout.split()
    assert inherited == ["CapEff:0000000000001400", "CapBnd:0000000000001400", "NoNewPrivs:1",
                         "Seccomp:2", "etc=read-only", f"target={ATK}"]  # fmt: skip
    container.run(["rm", hook])

    # pings 4.5 s after this one, by systemd's own clock: longer than WatchdogSec (3 s), after
    # which systemd would have killed a silent porttrap
    first = int(container.show("porttrap.service", "WatchdogTimestampMonotonic")[PING])
    wait_until(lambda: int(container.show("porttrap.service", PING)[PING]) > first + 4_500_000,
               PATIENCE, "watchdog pings for longer than WatchdogSec")  # fmt: skip
    later = container.show("porttrap.service", "MainPID", "NRestarts", "ActiveState")
    assert (later["MainPID"], later["NRestarts"], later["ActiveState"]) == (pid, "0", "active")

    container.run(["systemctl", "reload", "porttrap.service"])
    assert container.show("porttrap.service", "MainPID")["MainPID"] == pid
    assert banned(container.netns, ATK)
    journal = container.run(["journalctl", "-u", "porttrap", "--no-pager", "-o", "cat"]).stdout
    assert "event=reloaded" in journal

    out = container.run([EXE, "uninstall-service"]).stdout
    assert "stopped porttrap.service" in out
    assert "removed nftables table inet porttrap" in out
    assert container.netns.run(["nft", "list", "tables"]) == ""
    for path in ("/etc/systemd/system/porttrap.service", "/etc/porttrap", "/var/lib/porttrap"):
        assert container.run(["test", "-e", path], check=False).returncode == 1, path
    assert container.show("porttrap.service", "LoadState")["LoadState"] == "not-found"
    journal = container.run(["journalctl", "-u", "porttrap", "--no-pager", "-o", "cat"]).stdout
    assert "event=stop" in journal  # stopped cleanly, not killed


LEGACY_CONFIG = """\
[traps]
tcp = ["23"]
udp = []
[firewall]
backend = "ipset"
[actions.hosts_deny]
file = "/etc/hosts.deny"
[[log.output]]
to = "stderr"
[[log.output]]
to = "/var/log/porttrap/porttrap.json"
format = "json"
"""
ADMINS_HOSTS_DENY = "# the admin's\nsshd: 203.0.113.9\n"


def test_ipset_with_iptables_legacy_hosts_deny_and_a_log_file_under_systemd(
    container: Container, netns_factory: Callable[[], Netns]
) -> None:
    """What the unit derives from the config, proven: the ipset backend on iptables-legacy
    (CAP_NET_RAW, /run/xtables.lock on a read-only /run), hosts.deny replaced in /etc, a log file
    in /var/log/porttrap, all under ProtectSystem=strict."""
    atk = netns_factory()
    container.netns.veth(atk, [f"{SRV}/24"], [f"{ATK}/24"])
    for name in ("iptables", "ip6tables"):  # in the container's overlay only
        container.run(["update-alternatives", "--set", name, f"/usr/sbin/{name}-legacy"])
    assert container.run(["test", "-e", "/run/xtables.lock"], check=False).returncode == 1
    container.write("/etc/systemd/system/porttrap.service.d/test.conf", DROP_IN)
    container.write("/etc/hosts.deny", ADMINS_HOSTS_DENY)
    container.run(["mkdir", "-p", "/var/log/porttrap"])
    container.write("/root/porttrap.toml", LEGACY_CONFIG)

    container.run([EXE, "install-service", "-c", "/root/porttrap.toml"])
    props = container.show("porttrap.service", "ActiveState", "MainPID")
    assert props["ActiveState"] == "active", props
    status = status_of(container, props["MainPID"])
    assert int(status["CapEff"], 16) == UNIT_CAPS | (1 << 13)  # + CAP_NET_RAW
    raw = container.run(["iptables", "-t", "raw", "-S"]).stdout
    assert "-A PREROUTING -j porttrap" in raw
    for iptables in ("iptables", "ip6tables"):  # the watch (clients, peers, marks) too
        security = container.run([iptables, "-t", "security", "-S"]).stdout
        assert "-A INPUT -j porttrap_in" in security and "-A OUTPUT -j porttrap_out" in security
    assert "legacy" in container.run(["iptables", "--version"]).stdout

    assert tcp_works(atk, ATK, SRV, 23)
    wait_until(
        lambda: ATK in container.run(["ipset", "list", "porttrap_v4"]).stdout, PATIENCE, "ipset ban"
    )

    def hosts_deny() -> str:
        return container.run(["cat", "/etc/hosts.deny"]).stdout

    wait_until(lambda: f"ALL: {ATK}" in hosts_deny(), PATIENCE, "the hosts.deny line")
    assert hosts_deny().startswith(ADMINS_HOSTS_DENY)
    log = container.run(["cat", "/var/log/porttrap/porttrap.json"]).stdout
    assert '"event":"ban"' in log.replace(" ", ""), log

    out = container.run([EXE, "uninstall-service"]).stdout
    assert "removed ipset sets porttrap_v4, porttrap_v6" in out, out
    assert container.run(["ipset", "list", "-n"]).stdout == ""
    for iptables in ("iptables", "ip6tables"):
        for table in ("raw", "security"):
            assert "porttrap" not in container.run([iptables, "-t", table, "-S"]).stdout
    assert hosts_deny() == ADMINS_HOSTS_DENY
    assert "left the log file /var/log/porttrap/porttrap.json" in out


def test_the_built_in_defaults_run_advanced_mode_under_the_sandbox(
    container: Container, netns_factory: Callable[[], Netns]
) -> None:
    """install-service with no config writes the commented-out template: the built-in
    defaults, whose mode is advanced (issue 13). The sandbox lets the kernel sensor run (NFLOG,
    sock_diag) and a scanner's probes to ports nothing serves ban it."""
    atk = netns_factory()
    container.netns.veth(atk, [f"{SRV}/24"], [f"{ATK}/24"])
    container.write("/etc/systemd/system/porttrap.service.d/test.conf", DROP_IN)
    out = container.run([EXE, "install-service"]).stdout
    assert "enabled and started porttrap.service" in out
    props = container.show("porttrap.service", "ActiveState", "SubState")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    journal = container.run(["journalctl", "-u", "porttrap", "--no-pager", "-o", "cat"]).stdout
    assert "tcp=advanced udp=advanced" in journal
    send(atk, [Probe(ATK, SRV, 4444, "syn"), Probe(ATK, SRV, 4445, "syn")], inter=0.05)
    wait_until(lambda: banned(container.netns, ATK), PATIENCE, "the scanner banned")
    container.run([EXE, "uninstall-service"])
