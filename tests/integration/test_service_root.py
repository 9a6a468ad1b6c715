"""`porttrap install-service --root DIR` and `uninstall-service --root DIR`, the real CLI with the
real `systemctl --root`, inside a network namespace (uninstall removes the firewall of the
namespace it runs in): the files and the enablement, the refusals, a real daemon's table or
ipset sets removed, and the directory tree exactly as it was before the install."""

from __future__ import annotations

import signal
import subprocess  # noqa: TID251 - runs the CLI and systemctl
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_env import PORTTRAP

from netns import Netns
from porttrap.service.unit import hidden_by_protect_home
from waiting import PATIENCE, wait_until

pytestmark = pytest.mark.kernel

UNIT = "etc/systemd/system/porttrap.service"
WANTS = "etc/systemd/system/multi-user.target.wants/porttrap.service"
ADMINS_HOSTS_DENY = "# the admin's\nsshd: 203.0.113.9\n"


def cli(ns: Netns, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns.name, *PORTTRAP, *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"porttrap {args} failed ({done.returncode}): {done.stderr}")
    return done


def executable(tmp_path: Path) -> list[str]:
    """install-service's --executable for a venv under /root or /home, which it refuses (the
    service could not see it): a link to this checkout's porttrap from tmp_path. Else none."""
    venv = Path(sys.prefix).resolve()
    if hidden_by_protect_home(venv) is None:
        return []
    link = tmp_path / "bin" / "porttrap"
    if not link.is_symlink():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(venv / "bin" / "porttrap")
    return ["--executable", str(link)]


def systemctl(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", f"--root={root}", *args], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip


def make_root(tmp_path: Path) -> Path:
    """An OS image's bare bones: the directories porttrap installs into, an admin's file."""
    root = tmp_path / "r"
    for directory in ("etc/systemd/system", "var/lib", "var/log"):
        (root / directory).mkdir(parents=True)
    (root / "etc/hosts.deny").write_text(ADMINS_HOSTS_DENY)
    return root


def tree(root: Path) -> dict[str, tuple[int, str | bytes]]:
    """Every path under `root` with its mode and content (or link target)."""
    found: dict[str, tuple[int, str | bytes]] = {}
    for path in sorted(root.rglob("*")):
        content: str | bytes
        if path.is_symlink():
            content = "-> " + str(path.readlink())
        else:
            content = path.read_bytes() if path.is_file() else ""
        found[str(path.relative_to(root))] = (path.lstat().st_mode, content)
    return found


def test_install_then_uninstall_leaves_the_root_as_it_was(
    netns_factory: Callable[[], Netns], tmp_path: Path
) -> None:
    ns = netns_factory()
    root = make_root(tmp_path)
    before = tree(root)
    out = cli(ns, "install-service", "--root", root, *executable(tmp_path)).stdout
    assert f"installed into {root}" in out
    assert systemctl(root, "is-enabled", "porttrap.service").stdout.strip() == "enabled"
    assert (root / WANTS).readlink() == Path("/etc/systemd/system/porttrap.service")
    assert "Type=notify" in (root / UNIT).read_text()
    assert (root / "etc/porttrap/porttrap.toml").stat().st_mode & 0o777 == 0o600
    assert (root / "var/lib/porttrap").stat().st_mode & 0o777 == 0o700
    verify = subprocess.run(["systemd-analyze", "verify", str(root / UNIT)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stderr

    out = cli(ns, "uninstall-service", "--root", root).stdout
    assert "disabled porttrap.service" in out
    assert "removed nftables table inet porttrap" not in out  # there was none: it says so
    assert "no nftables table inet porttrap" in out
    assert tree(root) == before
    assert systemctl(root, "is-enabled", "porttrap.service").returncode != 0


def test_refusals_change_nothing(netns_factory: Callable[[], Netns], tmp_path: Path) -> None:
    ns = netns_factory()
    root = make_root(tmp_path)
    (root / "etc/porttrap").mkdir()
    config = root / "etc/porttrap/porttrap.toml"
    config.write_text('[ban]\ntime = "soon"\n')
    before = tree(root)
    done = cli(ns, "install-service", "--root", root, *executable(tmp_path), check=False)
    assert done.returncode == 2
    assert f"porttrap: config error: {config}:2: [ban.time]" in done.stderr
    assert "nothing was installed" in done.stderr
    assert tree(root) == before

    config.write_text("")
    (root / UNIT).write_text("[Service]\nExecStart=/bin/true\n")
    before = tree(root)
    done = cli(ns, "install-service", "--root", root, *executable(tmp_path), check=False)
    assert done.returncode == 5
    assert "exists and differs" in done.stderr
    assert "--force" in done.stderr
    assert tree(root) == before
    cli(ns, "install-service", "--root", root, *executable(tmp_path), "--force")
    assert "Type=notify" in (root / UNIT).read_text()


CONFIG = """\
[traps]
tcp = ["2323"]
udp = []
[firewall]
backend = "{backend}"
"""


def firewall_objects(ns: Netns) -> str:
    """What porttrap can leave in the kernel: nftables tables, ipset sets, iptables chains."""
    return "".join([
        ns.run(["nft", "list", "tables"]),
        ns.run(["ipset", "list", "-n"]),
        "".join(line + "\n" for line in ns.run(["iptables", "-t", "raw", "-S"]).splitlines()
                if "porttrap" in line),
    ])  # fmt: skip


@pytest.mark.parametrize(("backend", "keep"), [("nftables", False), ("ipset", True)])
def test_uninstall_removes_a_real_daemons_firewall_and_state(
    netns_factory: Callable[[], Netns], tmp_path: Path, backend: str, keep: bool
) -> None:
    ns = netns_factory()
    root = make_root(tmp_path)
    before = tree(root)
    installed = tmp_path / "porttrap.toml"
    installed.write_text(CONFIG.format(backend=backend))
    cli(ns, "install-service", "--root", root, *executable(tmp_path), "-c", installed)
    # The daemon runs with the installed config, its state_dir taken under the root.
    running = tmp_path / "run.toml"
    running.write_text(f'state_dir = "{root}/var/lib/porttrap"\n' + installed.read_text())
    with (tmp_path / "daemon.log").open("w") as log:
        daemon = subprocess.Popen(["ip", "netns", "exec", ns.name, *PORTTRAP, "run", "-c",
                                   str(running)], stdout=log, stderr=log, text=True)  # fmt: skip
    ns.processes.append(daemon)

    def answers() -> bool:
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()
        return cli(ns, "status", "-c", running, check=False).returncode == 0

    wait_until(answers, PATIENCE, "daemon answers status")
    cli(ns, "ban", "192.0.2.50", "-c", running)
    assert "porttrap" in firewall_objects(ns)

    refused = cli(ns, "uninstall-service", "--root", root, check=False)
    assert refused.returncode == 5
    assert "still running outside systemd" in refused.stderr
    assert (root / UNIT).exists()
    assert "porttrap" in firewall_objects(ns)

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0
    args = ["--keep-database"] if keep else []
    out = cli(ns, "uninstall-service", "--root", root, *args).stdout
    assert "porttrap" not in firewall_objects(ns), out
    after, expected = tree(root), dict(before)
    if keep:
        for kept in ("var/lib/porttrap", "var/lib/porttrap/porttrap.db"):  # and nothing else
            expected[kept] = after[kept]
    assert after == expected
    if keep:
        bans = cli(ns, "bans", "--json", "-c", running).stdout
        assert "192.0.2.50" in bans  # the kept database still has the ban
