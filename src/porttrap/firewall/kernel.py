"""The one place that talks to the kernel firewall: libnftables, through its JSON interface.

`python3-nftables` wraps libnftables with ctypes and has no types; `Nft` is the typed facade
over it, so nothing else in porttrap sees the untyped module. A libnftables context opens its
netlink socket when created, in the network namespace of the creating thread, and keeps using
that namespace afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from porttrap.errors import FirewallError

JsonCommand = dict[str, Any]

INSTALL_HINT = "apt-get install nftables python3-nftables (Fedora: dnf install python3-nftables)"
CAP_NET_ADMIN = 12  # bit number in the capability sets (linux/capability.h)
_ERROR_CHARS = 600  # nft's error text is short; keep a runaway one from flooding the log
_PARTS_SHOWN = 6
_VERBS = {"add": "adding", "delete": "deleting", "flush": "flushing", "list": "listing"}


class Nft:
    """A libnftables context with JSON output. Not thread-safe: one per thread."""

    def __init__(self) -> None:
        try:
            import nftables
        except ImportError as err:
            raise FirewallError(f"the Python module 'nftables' is missing: {INSTALL_HINT}") from err
        try:
            self._ctx: Any = nftables.Nftables()
        except OSError as err:
            raise FirewallError(f"libnftables cannot be loaded ({err}): {INSTALL_HINT}") from err
        self._ctx.set_json_output(True)

    def run(self, commands: list[JsonCommand]) -> dict[str, Any]:
        """Run `commands` as one libnftables batch: one kernel transaction, all or nothing.

        Returns nft's JSON output ({} when it prints nothing); FirewallError carries nft's
        error text and a summary of what was attempted."""
        text = json.dumps({"nftables": commands}, separators=(",", ":"))
        rc, output, error = self._ctx.cmd(text)
        if rc != 0:
            raise FirewallError(f"nftables refused {describe(commands)}: {_clean(error)}")
        return json.loads(output) if output else {}

    def list_json(self, what: JsonCommand) -> list[JsonCommand]:
        """`list` one object, e.g. {"table": {"family": "inet", "name": "porttrap"}} or
        {"tables": None}; the objects nft prints, without its metainfo."""
        items = self.run([{"list": what}]).get("nftables", [])
        return [item for item in items if "metainfo" not in item]


def describe(commands: list[JsonCommand]) -> str:
    """A short account of a batch, elements first, e.g. 'adding 3 elements to set ban_v4,
    adding 8 sets'. Elements count once per verb and set (a batch may add the same twice)."""
    counts: dict[str, int] = {}
    for command in commands:
        for verb, body in command.items():
            for kind, spec in (body or {}).items():
                _tally(counts, _one(verb, kind, spec), kind, _size(kind, spec))
    parts = [what.format(n=n, s="" if n == 1 else "s") for what, n in counts.items()]
    parts.sort(key=lambda part: " element" not in part)
    shown = ", ".join(parts[:_PARTS_SHOWN])
    more = len(parts) - _PARTS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _tally(counts: dict[str, int], what: str, kind: str, size: int) -> None:
    before = counts.get(what, 0)
    counts[what] = max(before, size) if kind == "element" else before + size


def _one(verb: str, kind: str, spec: Any) -> str:
    doing = _VERBS.get(verb, verb)
    name = spec.get("name", "") if isinstance(spec, dict) else ""
    if kind == "element":
        preposition = "from" if verb == "delete" else "to"
        return f"{doing} {{n}} element{{s}} {preposition} set {name}"
    if kind == "rule":
        return f"{doing} {{n}} rule{{s}} in chain {spec.get('chain', '')}"
    if kind == "set":
        return f"{doing} {{n}} set{{s}}"
    return f"{doing} {kind} {name}".rstrip()


def _size(kind: str, spec: Any) -> int:
    if kind == "element" and isinstance(spec, dict):
        return len(spec.get("elem", []))
    return 1


def _clean(error: str) -> str:
    """nft's error text as one line: 'internal:0:0-0: Error: X' -> 'X'."""
    lines = [line.split("Error: ", 1)[-1] for line in error.splitlines() if line.strip()]
    text = "; ".join(lines) or "no error text"
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
