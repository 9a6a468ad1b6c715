"""The files of porttrap's Debian package that porttrap makes itself (scripts/build-deb.sh):
the systemd unit, the commented /etc/porttrap/porttrap.toml, the man pages and the shell
completions, each from the same code as `install-service`, `--help` and `completion`, so the
package never carries a second, hand-written copy.

    python3 -m porttrap.service.debian ROOT     writes them under ROOT (the package's tree)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from porttrap.config.schema import DEFAULT_CONFIG_PATH, Config
from porttrap.service import unit
from porttrap.service.template import default_config

EXECUTABLE = Path("/usr/sbin/porttrap")
WRITER = "installed by porttrap's Debian package"
# Debian 12 (systemd 252, lintian 2.116) keeps packaged units in /lib/systemd/system;
# `porttrap install-service --force` writes /etc/systemd/system/porttrap.service over it
UNIT = PurePosixPath("lib/systemd/system") / unit.UNIT_NAME
CONFFILE = PurePosixPath(str(DEFAULT_CONFIG_PATH).lstrip("/"))
MAN = PurePosixPath("usr/share/man")
BASH_COMPLETION = PurePosixPath("usr/share/bash-completion/completions/porttrap")
ZSH_COMPLETION = PurePosixPath("usr/share/zsh/vendor-completions/_porttrap")


def files() -> dict[PurePosixPath, str]:
    """Each generated file's path in the package (relative to /) and its text."""
    from porttrap.cli import completion, manpage
    from porttrap.cli.main import build_parser

    return {
        UNIT: unit.render(EXECUTABLE, unit.sandbox(Config()), writer=WRITER),
        CONFFILE: default_config(WRITER),
        **{MAN / page: text for page, text in manpage.pages().items()},
        BASH_COMPLETION: completion.script(build_parser(), "bash"),
        ZSH_COMPLETION: completion.script(build_parser(), "zsh"),
    }


def write(root: Path) -> list[Path]:
    """Write `files()` under `root`; their paths there."""
    return write_tree(root, files())


def write_tree(root: Path, files: Mapping[PurePosixPath, str]) -> list[Path]:
    """Write each text of `files` at its path under `root` (directories made); the paths."""
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m porttrap.service.debian ROOT", file=sys.stderr)
        return 2
    for path in write(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
