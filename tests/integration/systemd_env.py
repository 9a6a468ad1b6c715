"""A real systemd (the host's /lib/systemd/systemd) booted as PID 1 of a throw-away container, so
that tests can install and run porttrap.service exactly as systemd runs it: Type=notify, the
watchdog, the sandbox, reload, stop. It needs no systemd on the host (PID 1 here is not).

The container:
- runs inside a network namespace the test made (so porttrap's firewall is never the host's),
  with PID, mount, UTS, IPC and cgroup namespaces of its own;
- sees an overlay of the host's root with a tmpfs on top: whatever systemd or porttrap writes
  (/etc, /var, /run) is thrown away with it, and the host's files never change; porttrap's own
  files of the host (config, state, unit) are left out;
- has /proc/sys and /sys read-only, and a /dev of a few pseudo devices, as systemd-nspawn
  gives its containers: systemd then knows it is in a container, and units that would act on
  the shared kernel (udev, sysctl, kernel modules) cannot;
- boots `porttrap-test.target`, which wants journald and nothing else;
- has a cgroup of its own, made under the test process's cgroup (cgroup v2) and removed after.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess  # noqa: TID251 - test helper
from collections.abc import Sequence
from pathlib import Path

from netns import Netns
from waiting import PATIENCE, wait_until

SYSTEMD = Path("/lib/systemd/systemd")
BOOT = r"""
set -eu
W=$1
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs "$W"
mkdir "$W/upper" "$W/work" "$W/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/upper,workdir=$W/work" "$W/root"
R=$W/root
# What porttrap left on the host (the daemon of `setup.sh run` makes /var/lib/porttrap; an admin
# /etc/porttrap) is not the container's: deleted in the overlay (whiteouts), kept on the host.
S=$R/etc/systemd/system
rm -rf "$R/etc/porttrap" "$R/var/lib/porttrap" "$S/porttrap.service" "$S/porttrap.service.d" \
  "$S/multi-user.target.wants/porttrap.service"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys"
mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for n in null zero full random urandom tty; do
  touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"
done
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs tmpfs "$R/dev/shm"
touch "$R/dev/console"; mount --bind /dev/null "$R/dev/console"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mkdir -p "$R/etc/systemd/system"
printf '[Unit]\nDescription=porttrap test boot\nWants=%s\n' \
  "systemd-journald.socket systemd-journald.service" > "$R/etc/systemd/system/porttrap-test.target"
exec chroot "$R" /usr/bin/env -i container=porttrap-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --unit=porttrap-test.target
"""


def cgroup2_parent() -> Path:
    """This process's own cgroup in the cgroup v2 hierarchy (where the container's goes)."""
    mount = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        if right.split()[0] == "cgroup2":
            mount = Path(left.split()[4])
            break
    if mount is None:
        raise AssertionError("no cgroup v2 hierarchy is mounted: systemd tests need one")
    own = next(line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.startswith("0::"))  # fmt: skip
    return mount / own.lstrip("/")


class Container:
    """systemd as PID 1 in `netns`; `run()` executes inside it, `close()` ends it all."""

    def __init__(self, netns: Netns, workdir: Path) -> None:
        self.netns = netns
        self.workdir = workdir
        self.cgroup = cgroup2_parent() / f"porttrap-test-{secrets.token_hex(4)}"
        self.process: subprocess.Popen[str] | None = None
        self.pid1 = 0
        self.log = workdir.parent / f"{workdir.name}.log"

    def boot(self) -> None:
        if not SYSTEMD.exists():
            raise AssertionError(f"{SYSTEMD} is missing: apt-get install systemd")
        self.workdir.mkdir()
        self.cgroup.mkdir()
        enter = f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"'
        unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--ipc",
                   "--cgroup", "sh", "-c", BOOT, "boot", str(self.workdir)]  # fmt: skip
        with self.log.open("w") as log:
            self.process = subprocess.Popen(  # into the cgroup first: `ip netns exec` hides it
                ["sh", "-c", enter, "enter", "ip", "netns", "exec", self.netns.name, *unshare],
                stdout=log, stderr=log, text=True,
            )  # fmt: skip
        self.netns.processes.append(self.process)
        wait_until(self._found_pid1, PATIENCE, "the container's PID 1")
        wait_until(self._booted, 60, "systemd in the container has booted")

    def _found_pid1(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the container did not start:\n{self.log.read_text()}")
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        found = children.read_text().split()
        if found and Path(f"/proc/{found[0]}/comm").read_text().strip() == "systemd":
            self.pid1 = int(found[0])
            return True
        return False

    def _booted(self) -> bool:
        done = self.run(["systemctl", "is-system-running"], check=False)
        return done.stdout.strip() in ("running", "degraded")

    def run(
        self, argv: Sequence[str], check: bool = True, input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """`argv` inside the container (all its namespaces, its root)."""
        full = ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "--", *argv]
        done = subprocess.run(full, capture_output=True, text=True, input=input,
                              timeout=timeout, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} failed ({done.returncode}): {done.stderr}{done.stdout}")
        return done

    def write(self, path: str, text: str) -> None:
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "write", path],
                 input=text)  # fmt: skip

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in properties)])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def close(self) -> None:
        """Kill PID 1 (and so the whole container), then remove its cgroups."""
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=20)
        if self.cgroup.exists():
            wait_until(
                self._remove_cgroups, PATIENCE, f"the container's cgroups under {self.cgroup} gone"
            )

    def _remove_cgroups(self) -> bool:
        for directory in sorted(self.cgroup.rglob("*/"), key=lambda p: -len(p.parts)):
            if directory.is_dir():
                try:
                    directory.rmdir()
                except OSError:
                    return False  # processes still dying
        try:
            self.cgroup.rmdir()
        except OSError:
            return False
        return True
