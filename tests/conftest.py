"""Shared fixtures. Kernel tests (`@pytest.mark.kernel`) need root, `ip` and `nft`: without
them they are skipped with the reason, except under CI (env CI set), where they fail, so a CI
run never passes by skipping them."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess  # noqa: TID251 - reads the host's ruleset to prove tests left it alone
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from netns import Netns

if TYPE_CHECKING:
    from daemon_env import Env
    from fleet_env import FleetLab

    from bridge import Bridge
    from fleetlog import FleetLog
    from pgcluster import PgCluster


# Hypothesis times each example (200 ms by default) and each draw (its too_slow health check):
# on two shared CPUs with CPU steal either fails a test that is right. What a property test
# checks is its property; pytest-timeout bounds the whole test.
settings.register_profile("porttrap", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("porttrap")


def _own_temproot() -> None:
    """Each checkout's pytest runs get their own temporary root. Under the shared
    /tmp/pytest-of-<user>, concurrent runs from other checkouts (several engineers, all root,
    on one machine) remove each other's old numbered directories while pytest lists them at
    exit; the scandir iterator left open is a ResourceWarning, an error under
    filterwarnings=error, and a green run fails. Not a symlink, and ours, or not used."""
    if "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    checkout = hashlib.sha256(str(Path(__file__).resolve().parent).encode()).hexdigest()[:3]
    root = Path(tempfile.gettempdir()) / f"pt{checkout}"  # short: sockets live below
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        found = root.lstat()
    except OSError:
        return
    if stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid():
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)


_own_temproot()

# The daemon and the CLI refuse a state_dir on a path its group or others can change
# (daemon/statedir.py), and the tests make their directories with plain mkdir: under a umask
# of 002 (some CI runners and login shells) those would be group-writable and every test that
# runs the daemon refused. The tests run under root's usual 022, as the daemon does.
os.umask(0o022)


def kernel_unavailable() -> str | None:
    """Why kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "kernel tests need root (they create network namespaces): run pytest as root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"kernel tests need {' and '.join(missing)}: apt-get install iproute2 nftables"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    reason = kernel_unavailable()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run kernel tests, but {reason}", pytrace=False)
    pytest.skip(reason)


def _host_ruleset() -> str:
    """The host's nftables ruleset (iptables-nft rules included) and its ipset set names."""
    commands = [["nft", "list", "ruleset"]]
    if shutil.which("ipset") is not None:
        commands.append(["ipset", "list", "-n"])
    return "".join(
        subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout
        for command in commands
    )


@pytest.fixture(autouse=True)
def _host_ruleset_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    """Kernel tests must leave the host's own ruleset exactly as it was."""
    if request.node.get_closest_marker("kernel") is None:
        yield
        return
    before = _host_ruleset()
    yield
    assert _host_ruleset() == before, "a kernel test changed the host's ruleset or ipsets"


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], Netns]]:
    """Makes fresh network namespaces; all are deleted after the test, even when it fails."""
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns.create())
        return made[-1]

    yield make
    for netns in reversed(made):
        netns.delete()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI a skipped test is a failed test: a green run must have run everything."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {report.longrepr}"


@pytest.fixture
def env_factory(
    netns_factory: Callable[[], Netns], tmp_path: Path
) -> Iterator[Callable[[str], Env]]:
    """The daemon end-to-end tests' environments (not started), one config each; on failure,
    what each daemon logged."""
    from daemon_env import Env  # tests/integration: on the path for those tests only

    made: list[Env] = []

    def make(config: str) -> Env:
        made.append(Env(netns_factory, tmp_path, config))
        return made[-1]

    yield make
    for env in made:
        if env.log.exists():
            print(env.log_text())


@pytest.fixture
def fleet_bridge(netns_factory: Callable[[], Netns]) -> Bridge:
    """A bridge in its own namespace (tests/bridge.py); deleted with the namespaces."""
    from bridge import Bridge

    return Bridge.create(netns_factory)


@pytest.fixture
def pg_cluster(fleet_bridge: Bridge, netns_factory: Callable[[], Netns]) -> Iterator[PgCluster]:
    """A throw-away PostgreSQL cluster (tests/pgcluster.py), started, with TLS and the empty
    database `porttrap`, in its own namespace on `fleet_bridge` at host number 100
    (198.51.100.100, 2001:db8:f::100). Stopped and removed after the test, even when it fails;
    its log is printed then."""
    import pgcluster
    from bridge import DB_HOST

    reason = pgcluster.unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but {reason}", pytrace=False)
        pytest.skip(reason)
    db = fleet_bridge.plug(netns_factory(), DB_HOST)
    cluster = pgcluster.PgCluster.create(db.netns, [db.v4, db.v6])
    try:
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        print(f"PostgreSQL's log:\n{cluster.log_text()}")  # pytest shows it when a test fails
        cluster.remove()


@pytest.fixture
def fleet_lab(
    tmp_path: Path,
    netns_factory: Callable[[], Netns],
    fleet_bridge: Bridge,
    pg_cluster: PgCluster,
) -> Iterator[FleetLab]:
    """The fleet's database with its schema, a scanner, and hosts made with `add`
    (tests/integration/fleet_env.py); each daemon's log is printed after the test."""
    from fleet_env import FleetLab

    lab = FleetLab(tmp_path, netns_factory, fleet_bridge, pg_cluster)
    yield lab
    for host in lab.hosts:
        print(f"{host.name}'s log:\n{host.log_text()}")


@pytest.fixture(scope="module")
def fleet_log() -> Iterator[FleetLog]:
    """The fleet's shared log on one throw-away cluster for the module (tests/fleetlog.py);
    each test calls `clear()` first. Never skipped under CI."""
    import fleetlog
    import pgcluster

    reason = pgcluster.unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but {reason}", pytrace=False)
        pytest.skip(reason)
    with fleetlog.started() as log:
        yield log
