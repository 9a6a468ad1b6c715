"""The text of `porttrap.service`, from the executable's path and the configuration.

What the unit allows follows from the configuration, so it is computed here, never guessed:

- **Capabilities.** porttrap runs as root with only CAP_NET_ADMIN (nftables, NFLOG, ipset)
  and CAP_NET_BIND_SERVICE (trap ports below 1024) in its bounding set; the ipset backend
  (`backend = "ipset"` or `"auto"`) adds CAP_NET_RAW, which iptables-legacy needs for its raw
  socket (iptables-nft does not, but which one `iptables` is can change after install): the
  firewall registry says which backends run iptables.
- **Writable paths.** ProtectSystem=strict makes the whole file system read-only except the
  state directory (StateDirectory= when it is under /var/lib, else ReadWritePaths=), the
  directory of each log file (porttrap reopens it by path after logrotate), and the directory
  of the hosts.deny file (it is replaced by renaming a new file over it, which needs the
  directory). /run is read-only too (ProtectKernelTunables= and ProtectProc= would otherwise
  leave it writable); the ipset backend gets /run/xtables.lock created before it starts:
  iptables-legacy opens it even to read, and cannot create it on a read-only /run.

Nothing here touches the file system; `porttrap.service.install` writes the text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from porttrap import __version__
from porttrap.config.schema import DEFAULT_CONFIG_PATH, Config
from porttrap.firewall import registry

UNIT_NAME = "porttrap.service"
INSTALL_SERVICE = "written by `porttrap install-service`"  # the unit's first line says who
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
STATE_ROOT = Path("/var/lib")  # where StateDirectory= puts its directories
CAPABILITIES = ("CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE")
IPTABLES_LEGACY_CAPABILITY = "CAP_NET_RAW"  # libiptc's socket(AF_INET, SOCK_RAW, IPPROTO_RAW)
XTABLES_LOCK = Path("/run/xtables.lock")
TOUCH = Path("/usr/bin/touch")
WATCHDOG_SEC = 30
HIDDEN_BY_PROTECT_HOME = (Path("/home"), Path("/root"), Path("/run/user"))


@dataclass(frozen=True, slots=True)
class Sandbox:
    """What the configuration needs from the sandbox."""

    state_directory: str | None  # StateDirectory= (relative to /var/lib); None: not under it
    read_write: tuple[Path, ...]  # must exist (the state directory elsewhere)
    read_write_if_present: tuple[Path, ...]  # a missing one is skipped (porttrap says why)
    capabilities: tuple[str, ...]
    xtables_lock: bool  # create /run/xtables.lock before starting (ipset backend)


def sandbox(config: Config) -> Sandbox:
    """The capabilities and writable paths `config` needs under ProtectSystem=strict."""
    state = _normal(config.state_dir)
    state_directory = None
    if state.parent == STATE_ROOT or STATE_ROOT in state.parents:
        state_directory = str(state.relative_to(STATE_ROOT))
    read_write = () if state_directory is not None else (state,)
    optional = [_normal(Path(o.to)).parent for o in config.log.outputs if o.to.startswith("/")]
    if config.actions.hosts_deny is not None:
        optional.append(_normal(config.actions.hosts_deny.file).parent)
    iptables = any(info.runs_iptables for info in registry.candidates(config.firewall.backend))
    capabilities = CAPABILITIES + ((IPTABLES_LEGACY_CAPABILITY,) if iptables else ())
    return Sandbox(
        state_directory, read_write, _outside(optional, state), capabilities, xtables_lock=iptables
    )


def _normal(path: Path) -> Path:
    return Path(os.path.normpath(path))


def _outside(paths: Iterable[Path], state: Path) -> tuple[Path, ...]:
    """`paths` without duplicates and without those inside the state directory."""
    kept: dict[Path, None] = {}
    for path in paths:
        if path != state and state not in path.parents:
            kept[path] = None
    return tuple(sorted(kept))


def hidden_by_protect_home(path: Path) -> Path | None:
    """The directory of HIDDEN_BY_PROTECT_HOME that holds `path`, or None."""
    for hidden in HIDDEN_BY_PROTECT_HOME:
        if path == hidden or hidden in path.parents:
            return hidden
    return None


def render(
    executable: Path,
    box: Sandbox,
    config_path: Path = DEFAULT_CONFIG_PATH,
    writer: str = INSTALL_SERVICE,
) -> str:
    """The unit file that runs `executable` (absolute) with the config at `config_path`;
    its first line says it was written by `writer`."""
    exe, cfg = quote(executable), quote(config_path)
    lines = [
        f"# porttrap.service, {writer} (porttrap {__version__}).",
        *_HEADER,
        "[Unit]",
        "Description=porttrap: trap ports and ban port scanners in the kernel firewall",
        "Wants=network-online.target",
        "# nftables.service flushes the whole ruleset when it starts: porttrap's table after it",
        "After=network-online.target nftables.service",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStartPre={exe} check-config -c {cfg}",
        *([f"ExecStartPre=+{TOUCH} {XTABLES_LOCK}"] if box.xtables_lock else []),
        f"ExecStart={exe} run -c {cfg}",
        f"ExecReload={exe} reload -c {cfg}",
        "Restart=on-failure",
        "RestartSec=5s",
        f"WatchdogSec={WATCHDOG_SEC}s",
        "TimeoutStopSec=30s",
        "",
        *_sandbox_lines(box),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


_HEADER = (
    "# Run `porttrap install-service --force` again after changing state_dir, a [[log.output]]",
    "# file, [actions.hosts_deny] file or [firewall] backend: the capabilities and writable",
    "# paths below follow from them. Changes of your own go in a drop-in",
    "# (`systemctl edit porttrap`), which a new install keeps.",
    "",
)


def _sandbox_lines(box: Sandbox) -> list[str]:
    lines = [
        "# Least privilege: root, with nothing but the capabilities porttrap uses (action",
        "# commands inherit all of this: see the README).",
        f"CapabilityBoundingSet={' '.join(box.capabilities)}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ConfigurationDirectory=porttrap",
        "ConfigurationDirectoryMode=0700",
    ]
    if box.state_directory is not None:
        lines += [f"StateDirectory={quote(PurePosixPath(box.state_directory))}",
                  "StateDirectoryMode=0700"]  # fmt: skip
    writable = [quote(p) for p in box.read_write]
    writable += ["-" + quote(p) for p in box.read_write_if_present]
    if writable:
        lines.append(f"ReadWritePaths={' '.join(writable)}")
    return lines + list(_HARDENING)


_HARDENING = (
    "# /run would stay writable: ProtectKernelTunables= and ProtectProc= imply MountAPIVFS=",
    "ReadOnlyPaths=/run",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "PrivateMounts=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
)


def quote(path: Path | PurePosixPath) -> str:
    """A path as a unit file word: '%' escaped (systemd's specifiers), quoted when it holds
    spaces. ValueError for a path a unit file cannot hold (control characters)."""
    text = str(path)
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ValueError(f"{text!r}: a unit file cannot hold a path with control characters")
    text = text.replace("%", "%%")
    if any(c in text for c in " \t\"\\'"):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text
