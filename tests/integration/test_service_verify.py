"""The unit file as systemd itself reads it: `systemd-analyze verify` finds nothing wrong with
it (for the default configuration and for one that uses every derived setting), and `systemd-
analyze security --offline=yes` rates its exposure. Both work without systemd running; verify
checks that ExecStart's program exists, so the units run this checkout's porttrap."""

from __future__ import annotations

import os
import re
import shutil
import subprocess  # noqa: TID251 - runs systemd-analyze
import sys
from pathlib import Path

import pytest

from porttrap.config import loader as config_mod
from porttrap.service import unit

EXE = Path(sys.prefix) / "bin" / "porttrap"
EVERYTHING = """\
state_dir = "/srv/porttrap state"
[firewall]
backend = "ipset"
[[log.output]]
to = "/var/log/porttrap/porttrap.json"
format = "json"
[actions.hosts_deny]
file = "/etc/hosts.deny"
"""
EXPOSURE = re.compile(r"Overall exposure level for porttrap\.service: (\d+\.\d) (\w+)")
MAX_EXPOSURE = 1.9  # measured with systemd 252: 1.9 "OK" (root with CAP_NET_ADMIN and a network)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze ARGS in a UTF-8 locale, whatever the caller's: in another (LANG=C) it
    marks the settings in ASCII, not with the ✓ that the tests read."""
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze is missing: apt-get install systemd"
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False,
                          env=env)  # fmt: skip


def write_unit(directory: Path, config_text: str, executable: Path = EXE) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / unit.UNIT_NAME
    box = unit.sandbox(config_mod.load_text(config_text, None))
    path.write_text(unit.render(executable, box))
    return path


@pytest.mark.parametrize("config_text", ["", EVERYTHING], ids=["default", "everything"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, config_text: str) -> None:
    assert EXE.exists(), f"{EXE}: porttrap is not installed in this environment"
    path = write_unit(tmp_path, config_text)
    done = analyze("verify", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not even a warning


def test_verify_does_check_something(tmp_path: Path) -> None:
    """The negative control: a unit whose program does not exist is refused."""
    path = write_unit(tmp_path, "", executable=Path("/nonexistent/porttrap"))
    done = analyze("verify", str(path))
    assert done.returncode != 0
    assert "/nonexistent/porttrap" in done.stderr


@pytest.mark.parametrize("config_text", ["", EVERYTHING], ids=["default", "everything"])
def test_exposure_is_ok_or_better(tmp_path: Path, config_text: str) -> None:
    path = write_unit(tmp_path, config_text)
    done = analyze("security", "--offline=yes", str(path))
    assert done.returncode == 0, done.stderr
    found = EXPOSURE.search(done.stdout)
    assert found is not None, done.stdout
    assert float(found.group(1)) <= MAX_EXPOSURE, done.stdout
    assert found.group(2) in ("OK", "SAFE"), done.stdout
    for line in ("PrivateDevices=", "ProtectSystem=", "NoNewPrivileges=", "ProtectHome="):
        assert any(row.startswith(f"✓ {line}") for row in done.stdout.splitlines()), line
