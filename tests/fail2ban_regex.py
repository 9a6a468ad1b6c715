"""fail2ban's own `fail2ban-regex`, run from the Debian package that `scripts/setup.sh test`
fetches and unpacks (never installs: installing starts fail2ban, whose sshd jail would touch
this machine's firewall) into $PORTTRAP_FAIL2BAN, /var/cache/porttrap-test/fail2ban by default.

Missing, the tests that need it are skipped with the reason, and fail under CI."""

from __future__ import annotations

import os
import shutil
import subprocess  # noqa: TID251 - test helper: runs fail2ban-regex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

DEFAULT_DIR = "/var/cache/porttrap-test/fail2ban"
OWN_FILTERS = Path(__file__).parent / "data" / "logs" / "fail2ban"


@dataclass(frozen=True)
class Match:
    """One line fail2ban-regex matched: the host it found, the time it read, the line."""

    host: str
    time: float
    line: str


@dataclass(frozen=True)
class Fail2ban:
    root: Path  # the unpacked package: usr/bin/fail2ban-regex, etc/fail2ban ...

    @property
    def stock_filters(self) -> Path:
        return self.root / "etc" / "fail2ban" / "filter.d"

    def filters(self, where: Path) -> Path:
        """A filter.d in `where` with fail2ban's common.conf and the filters of
        tests/data/logs/fail2ban (net-bouncer's, and a PortSentry syslog-alert one)."""
        directory = where / "fail2ban" / "filter.d"
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.stock_filters / "common.conf", directory)
        for own in OWN_FILTERS.glob("*.conf"):
            shutil.copy(own, directory)
        return directory

    def matches(self, log: Path, filter_file: Path) -> list[Match]:
        """What `fail2ban-regex LOG FILTER` matches, in file order (times read in UTC)."""
        env = {
            **os.environ,
            "PYTHONPATH": str(self.root / "usr" / "lib" / "python3" / "dist-packages"),
            "TZ": "UTC",
        }
        argv = [sys.executable, str(self.root / "usr" / "bin" / "fail2ban-regex"), "--raw",
                "-o", "<ip>|<time>|<msg>", str(log), str(filter_file)]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        if done.returncode != 0:
            raise AssertionError(f"fail2ban-regex failed ({done.returncode}): {done.stderr}")
        found = []
        for row in done.stdout.splitlines():
            host, time, line = row.split("|", 2)
            found.append(Match(host, float(time), line))
        return found


def find() -> Fail2ban:
    """The unpacked fail2ban; skips the test without it (fails it under CI)."""
    root = Path(os.environ.get("PORTTRAP_FAIL2BAN", DEFAULT_DIR)) / "root"
    if (root / "usr" / "bin" / "fail2ban-regex").is_file():
        return Fail2ban(root)
    reason = (
        f"fail2ban-regex not found under {root}: run scripts/setup.sh test, which fetches the "
        "Debian package fail2ban and unpacks it there (without installing it)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the fail2ban tests, but {reason}", pytrace=False)
    pytest.skip(reason)
