"""`porttrap --version`: the version, then what a bug report needs beside it: the Python that
runs porttrap and whether each firewall backend's parts are installed."""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

from porttrap import __version__
from porttrap.errors import FirewallError
from porttrap.firewall import ipset
from porttrap.firewall.kernel import Nft, missing_fix


def text(
    nftables: Callable[[], object] = Nft,
    which: Callable[[str], str | None] = shutil.which,
) -> str:
    """Two lines: `porttrap VERSION`, then Python's version and the firewall parts found.
    Only looks: loads libnftables (no kernel call) and searches PATH."""
    return f"porttrap {__version__}\nPython {platform.python_version()}; {_parts(nftables, which)}"


def _parts(nftables: Callable[[], object], which: Callable[[str], str | None]) -> str:
    try:
        nftables()
        nft = "libnftables found"
    except FirewallError:
        nft = f"libnftables not found ({missing_fix()})"
    missing = [program for program in ipset.PROGRAMS if which(program) is None]
    programs = "ipset and iptables found" if not missing else f"{', '.join(missing)} not found"
    return f"{nft}; {programs}"


class VersionAction(argparse._VersionAction):
    """--version, with the second line worked out only when asked for."""

    def __init__(self, option_strings: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version, Python's and the firewall parts found")
        super().__init__(option_strings, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(text(), file=sys.stdout)
        parser.exit()
