"""porttrap's Debian package, as an admin meets it: scripts/build-deb.sh builds it, lintian
finds no error in it, its man pages render without a warning, and `apt install ./porttrap_*.deb`
on a fresh Debian 12 (a throw-away root made by mmdebstrap, never this machine's own root)
installs it with its dependencies; porttrap runs from it; `apt remove` keeps the bans and
history, `apt purge` removes them.

Commands inside the throw-away root run in a mount namespace of their own (its /proc) and, but
for apt's downloads, in a network namespace of their own: nothing reaches this host's
firewall. Needs root, mmdebstrap, lintian and man (setup.sh test installs them) and Debian's
and PyPI's package archives."""

from __future__ import annotations

import os
import shutil
import subprocess  # noqa: TID251 - the test drives dpkg-deb, lintian, mmdebstrap and apt
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# this machine's mirrors, deb822 (Debian 12's images) or one-line
SOURCES = next(
    (p for p in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
     if p.exists()),
    Path("/etc/apt/sources.list"),
)  # fmt: skip
NEEDED = ("mmdebstrap", "lintian", "man", "dpkg-deb", "unshare", "chroot")
STATE = "/var/lib/porttrap"
# `porttrap run` from the package, waited for (60 s at most), a ban through it, then stopped
DAEMON = """
porttrap run > /tmp/run.log 2>&1 &
pid=$!
i=0
until porttrap status > /dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 600 ] || { cat /tmp/run.log; exit 1; }; sleep 0.1
done
porttrap ban 192.0.2.7 --for 1h
porttrap bans
kill $pid
wait $pid || true
cat /tmp/run.log
"""

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def _ok(argv: list[str], **kwargs: object) -> str:
    done = _run(argv, **kwargs)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def tools() -> None:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    if missing or not SOURCES.exists():
        reason = f"the package tests need {', '.join(missing) or SOURCES}: run setup.sh test"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the package tests, but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def deb(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    printed = _ok(["bash", str(ROOT / "scripts/build-deb.sh"), str(out)]).strip()
    path = Path(printed.splitlines()[-1])
    assert path.parent == out and path.name.endswith("_all.deb")
    return path


@pytest.fixture(scope="module")
def debian_root(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh Debian 12 (minbase, apt's lists kept) that no service may start in."""
    root = tmp_path_factory.mktemp("debian") / "root"
    _ok([
        "mmdebstrap", "--quiet", "--variant=minbase", "--mode=root",
        "--skip=cleanup/apt/lists", "bookworm", str(root), str(SOURCES),
    ])  # fmt: skip
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    yield root
    shutil.rmtree(root)  # its mounts lived in namespaces that are gone


def _in_root(root: Path, script: str, network: bool = False) -> subprocess.CompletedProcess[str]:
    """`sh -c script` inside `root`, with a /proc of its own and, without `network`, in a
    network namespace of its own."""
    inner = f'mount -t proc proc "{root}/proc" && exec chroot "{root}" /bin/sh -ec "$1"'
    argv = ["unshare", "--mount", "--fork", *([] if network else ["--net"])]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    return _run([*argv, "sh", "-c", inner, "sh", script], env=env)


def _in_root_ok(root: Path, script: str, network: bool = False) -> str:
    done = _in_root(root, script, network)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_lintian_finds_no_error(deb: Path) -> None:
    done = _run(["lintian", "--fail-on", "error", str(deb)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "E: " not in done.stdout


def test_the_man_pages_render_without_warnings(deb: Path, tmp_path: Path) -> None:
    _ok(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    pages = sorted((tmp_path / "usr/share/man").glob("man*/*.gz"))
    assert [p.name for p in pages] == ["porttrap.toml.5.gz", "porttrap.8.gz"]
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8"}
    for page in pages:
        done = _run(["man", "--warnings", "-l", str(page)], env=env)
        assert done.returncode == 0 and done.stderr == "", (page, done.stderr)
        assert "NAME" in done.stdout and "SEE ALSO" in done.stdout
    text = _ok(["man", "-l", str(pages[1])], env=env)
    assert "porttrap check-config" in text and "install-service" in text


def test_apt_installs_it_on_a_fresh_debian_12_and_remove_keeps_what_purge_removes(
    deb: Path, debian_root: Path
) -> None:
    root = debian_root
    shutil.copy(deb, root / "tmp" / deb.name)
    # apt resolves the dependencies from Debian's archive: the only step with a network
    _in_root_ok(root, f"cd /tmp && apt-get install -y -q ./{deb.name}", network=True)

    version = _in_root_ok(root, "porttrap --version")
    assert version.startswith("porttrap ") and "libnftables found" in version
    checked = _in_root_ok(root, "porttrap check-config")  # the installed conffile
    assert checked.startswith("/etc/porttrap/porttrap.toml: OK")
    conffiles = _in_root_ok(root, "dpkg-query -W -f='${Conffiles}' porttrap")
    assert "/etc/porttrap/porttrap.toml" in conffiles
    # installed, not enabled: the admin reviews the config first (docs/install.md)
    assert (root / "lib/systemd/system/porttrap.service").is_file()
    assert not (root / "etc/systemd/system/multi-user.target.wants/porttrap.service").exists()
    for path in ("usr/share/man/man8/porttrap.8.gz", "usr/share/man/man5/porttrap.toml.5.gz",
                 "usr/share/bash-completion/completions/porttrap",
                 "usr/share/zsh/vendor-completions/_porttrap"):  # fmt: skip
        assert (root / path).is_file(), path
    # postinst compiled the private venv (so that root's first run writes nothing there)
    assert list((root / "usr/lib/porttrap").rglob("porttrap/__pycache__/*.pyc"))
    # the fleet's driver loads Debian's libpq
    _in_root_ok(root, "/usr/lib/porttrap/bin/python3 -c 'import psycopg; psycopg.pq.version()'")
    # notifications: the vendored apprise loads over Debian's libraries (its URLs are checked
    # by apprise at config load)
    (root / "tmp/notify.toml").write_text('[[actions.notify]]\nurls = "json://127.0.0.1/x"\n')
    checked = _in_root_ok(root, "porttrap check-config -c /tmp/notify.toml")
    assert checked.startswith("/tmp/notify.toml: OK"), checked

    # the packaged daemon runs and bans (in the root's own network namespace); its database
    # then holds a ban and its history
    banned = _in_root_ok(root, DAEMON)
    assert "banned 192.0.2.7 until" in banned and "event=ban address=192.0.2.7" in banned
    state = root / STATE.lstrip("/")
    assert (state / "porttrap.db").is_file()
    (root / "etc/porttrap/porttrap.toml").write_text('[ban]\ntime = "2h"\n')

    _in_root_ok(root, "apt-get remove -y -q porttrap")
    assert not (root / "usr/sbin/porttrap").exists()
    assert (state / "porttrap.db").is_file(), "apt remove must keep the bans and history"
    assert (root / "etc/porttrap/porttrap.toml").read_text() == '[ban]\ntime = "2h"\n'

    table = "nft list table inet porttrap"
    _in_root_ok(root, f"nft add table inet porttrap && apt-get purge -y -q porttrap && ! {table}")
    assert not state.exists(), "apt purge must remove the bans and history"
    assert not (root / "etc/porttrap").exists()
    assert not (root / "usr/lib/porttrap").exists(), "prerm must remove the compiled modules"
