"""The files the Debian package takes from porttrap itself (porttrap.service.debian): the
unit runs /usr/sbin/porttrap with the same sandbox install-service writes, the conffile is the
commented default config and loads equal to the built-in defaults."""

from __future__ import annotations

from pathlib import Path

from porttrap.cli import completion
from porttrap.cli.main import build_parser
from porttrap.config import loader
from porttrap.config.schema import Config
from porttrap.service import debian, unit
from porttrap.service.template import DEFAULT_CONFIG, default_config


def test_the_unit_is_install_services_own_for_usr_sbin_porttrap() -> None:
    text = debian.files()[debian.UNIT]
    assert text.startswith("# porttrap.service, installed by porttrap's Debian package (")
    same = unit.render(Path("/usr/sbin/porttrap"), unit.sandbox(Config()))
    assert text.splitlines()[1:] == same.splitlines()[1:]
    assert "ExecStart=/usr/sbin/porttrap run -c /etc/porttrap/porttrap.toml" in text
    assert str(debian.UNIT) == "lib/systemd/system/porttrap.service"


def test_the_conffile_is_the_commented_default_and_changes_nothing() -> None:
    text = debian.files()[debian.CONFFILE]
    assert str(debian.CONFFILE) == "etc/porttrap/porttrap.toml"
    assert text.startswith("# porttrap's configuration, installed by porttrap's Debian package.")
    assert text.splitlines()[1:] == DEFAULT_CONFIG.splitlines()[1:]
    path = Path("porttrap.toml")
    assert loader.load_text(text, path) == loader.load_text("", path)
    assert default_config() == DEFAULT_CONFIG


def test_man_pages_and_completions_come_from_the_parser(tmp_path: Path) -> None:
    written = debian.write(tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {
        str(path) for path in debian.files()
    }
    bash = (tmp_path / debian.BASH_COMPLETION).read_text()
    assert bash == completion.script(build_parser(), "bash")
    assert (tmp_path / "usr/share/man/man8/porttrap.8").read_text().startswith('.\\" porttrap(8)')
    assert (tmp_path / debian.ZSH_COMPLETION).read_text().startswith("#compdef porttrap")
