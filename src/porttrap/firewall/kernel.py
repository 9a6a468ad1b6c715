"""The one place that talks to the kernel firewall: libnftables, in-process.

porttrap writes in nft's own syntax (see `porttrap.firewall.ruleset` for why) and reads nft's
JSON output. `python3-nftables` wraps libnftables with ctypes and has no types; `Nft` is the
typed facade over it, so nothing else in porttrap sees the untyped module. A libnftables context
opens its netlink socket when created, in the network namespace of the creating thread, and
keeps using that namespace afterwards.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from porttrap.errors import FirewallError

JsonCommand = dict[str, Any]

INSTALL_HINT = "apt-get install nftables python3-nftables (Fedora: dnf install python3-nftables)"
# where Debian's python3-nftables puts the module: only Debian's own /usr/bin/python3 sees it,
# and a venv made from it only with --system-site-packages
SYSTEM_SITE = Path("/usr/lib/python3/dist-packages")
VENV_FIX = (
    "/usr/bin/python3 -m venv --system-site-packages DIR, then pip install porttrap in it "
    "(pipx: pipx install --python /usr/bin/python3 --system-site-packages porttrap)"
)
CAP_NET_ADMIN = 12  # bit number in the capability sets (linux/capability.h)
_ERROR_CHARS = 600  # nft's error text is short; keep a runaway one from flooding the log
_PARTS_SHOWN = 6
_VERBS = {"add": "adding", "delete": "deleting", "flush": "flushing", "list": "listing"}


def missing_module(system_site: Path | None = None) -> str:
    """Why `import nftables` failed, and the fix: a pip or pipx install in an isolated venv
    cannot see Debian's python3-nftables, and installing that package again would not help."""
    installed = (system_site or SYSTEM_SITE) / "nftables"
    if installed.is_dir():
        return (
            f"the Python module 'nftables' is installed ({installed}) but this Python "
            f"({sys.executable}) cannot import it: its virtual environment was made without "
            f"Debian's system packages. Make it again with {VENV_FIX}"
        )
    return f"the Python module 'nftables' is missing: {INSTALL_HINT}"


def missing_fix(system_site: Path | None = None) -> str:
    """The short form of `missing_module`'s fix, for `porttrap --version`."""
    if ((system_site or SYSTEM_SITE) / "nftables").is_dir():
        return "installed, but this venv cannot import it: make it with --system-site-packages"
    return "apt-get install nftables python3-nftables"


class Nft:
    """A libnftables context with JSON output. Not thread-safe: one per thread."""

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as err:
            raise FirewallError(missing_module()) from err
        try:
            self._ctx: Any = nftables.Nftables()
        except OSError as err:
            raise FirewallError(f"libnftables cannot be loaded ({err}): {INSTALL_HINT}") from err
        self._ctx.set_json_output(True)

    def run(self, commands: Sequence[str]) -> None:
        """Run `commands`, one nft command each in nft's syntax (`add element inet t s { ... }`),
        as one libnftables batch: one kernel transaction, all or nothing. FirewallError carries
        nft's error text and a summary of what was attempted."""
        rc, _, error = self._ctx.cmd("\n".join(commands))
        if rc != 0:
            raise FirewallError(f"nftables refused {describe(commands)}: {_clean(error)}")

    def list_json(self, what: JsonCommand) -> list[JsonCommand]:
        """`list` one object, e.g. {"table": {"family": "inet", "name": "porttrap"}} or
        {"tables": None}; the objects nft prints, without its metainfo."""
        text = json.dumps({"nftables": [{"list": what}]}, separators=(",", ":"))
        rc, output, error = self._ctx.cmd(text)
        if rc != 0:
            raise FirewallError(f"nftables refused listing {json.dumps(what)}: {_clean(error)}")
        items = json.loads(output).get("nftables", []) if output else []
        return [item for item in items if "metainfo" not in item]


def describe(commands: Sequence[str]) -> str:
    """A short account of a batch, elements first, e.g. 'adding 3 elements to set ban_v4,
    adding 4 sets'. Elements count once per verb and set (a batch may add the same twice).
    Reads porttrap's own commands, which all start `VERB KIND FAMILY TABLE [NAME]`."""
    counts: dict[str, int] = {}
    for command in commands:
        verb, kind, _family, table, *rest = command.split(" ", 5)
        name = rest[0] if rest and kind != "table" else table
        size = command.count(",") + 1 if kind == "element" else 1
        _tally(counts, _one(verb, kind, name), kind, size)
    parts = [what.format(n=n, s="" if n == 1 else "s") for what, n in counts.items()]
    parts.sort(key=lambda part: " element" not in part)
    shown = ", ".join(parts[:_PARTS_SHOWN])
    more = len(parts) - _PARTS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _tally(counts: dict[str, int], what: str, kind: str, size: int) -> None:
    before = counts.get(what, 0)
    counts[what] = max(before, size) if kind == "element" else before + size


def _one(verb: str, kind: str, name: str) -> str:
    doing = _VERBS.get(verb, verb)
    if kind == "element":
        preposition = "from" if verb == "delete" else "to"
        return f"{doing} {{n}} element{{s}} {preposition} set {name}"
    if kind == "rule":
        return f"{doing} {{n}} rule{{s}} in chain {name}"
    if kind == "set":
        return f"{doing} {{n}} set{{s}}"
    return f"{doing} {kind} {name}"


def _clean(error: str) -> str:
    """nft's error text as one line: each distinct 'Error: X' as X, without the command nft
    echoes after it (it may hold 100,000 elements) and the line of ^ under it (nft 1.0.6 can
    echo the wrong line of a batch, so those marks are not worth reading)."""
    lines = error.splitlines()
    found = [line.split("Error: ", 1)[1] for line in lines if "Error: " in line]
    parts = dict.fromkeys(found or [line for line in lines if line.strip()])
    text = "; ".join(parts) or "no error text"
    return text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS] + "..."


def is_supported(status: Path = Path("/proc/self/status")) -> tuple[bool, str]:
    """Whether the nftables backend can work here, and if not, how to fix it."""
    try:
        Nft()
    except FirewallError as err:
        return False, str(err)
    if not has_net_admin(status.read_text()):
        return False, (
            "changing nftables needs CAP_NET_ADMIN: run porttrap as root, or give its service "
            "AmbientCapabilities=CAP_NET_ADMIN"
        )
    return True, "libnftables loaded and CAP_NET_ADMIN held"


def has_net_admin(status_text: str) -> bool:
    """Whether the CapEff line of a /proc/<pid>/status text includes CAP_NET_ADMIN."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False
