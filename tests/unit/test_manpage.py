"""The man pages are made from the parser and the config loader: every command, option, table
and key is in them, and the roff is well formed (CI renders it with `man --warnings`:
tests/integration/test_package.py)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from porttrap.cli import helptext, manpage
from porttrap.cli.main import build_parser
from porttrap.config import actions, loader, logsection, outline, traps
from porttrap.service.template import DEFAULT_CONFIG


def test_the_outline_finds_every_table_and_key_the_loader_checks() -> None:
    found = {table.header: table.keys for table in outline.tables()}
    assert found[""] == loader.TOP_KEYS
    assert found["[ban]"] == loader.BAN_KEYS
    assert found["[kernel]"] == loader.KERNEL_KEYS
    assert found["[traps]"] == traps.KEYS
    assert found["[[traps.port]]"] == traps.ENTRY_KEYS
    assert found["[traps.advanced]"] == traps.ADVANCED_KEYS
    assert found["[[actions.command]]"] == actions.COMMAND_KEYS
    assert found["[actions.hosts_deny]"] == actions.HOSTS_DENY_KEYS
    assert found["[[actions.webhook]]"] == actions.WEBHOOK_KEYS
    assert found["[[log.output]]"] == logsection.OUTPUT_KEYS
    assert found["[firewall]"] == ("backend", "table")
    # every top-level table is found, as a table or as an array of tables
    tables = {table.name for table in outline.tables()}
    assert set(loader.TOP_KEYS) - {"state_dir"} <= tables
    assert "ban.time" in outline.dotted_keys() and "log.output.facility" in outline.dotted_keys()


def test_porttrap_8_has_every_command_and_option() -> None:
    parser = build_parser()
    page = manpage.porttrap_8(parser)
    assert page.startswith('.\\" porttrap(8), generated')
    assert "\n.TH PORTTRAP 8 " in page
    for each in helptext.parsers(parser):
        prog = each.prog.removeprefix("porttrap").strip()
        if prog:
            assert f'\n.SS "{manpage.escape(prog)}"\n' in page, prog
        for action in each._actions:
            for option in action.option_strings:
                assert f"\\fB{manpage.escape(option)}\\fR" in page, (each.prog, option)
    assert '\n.SH "EXIT CODES"\n' in page and '\n.SH "SEE ALSO"\n' in page


def test_porttrap_toml_5_has_every_key_and_the_commented_config() -> None:
    page = manpage.porttrap_toml_5()
    for table in outline.tables():
        if table.path:
            assert f'\n.SS "{manpage.escape(table.header)}"\n' in page
        for key in table.keys:
            assert f"\\fB{manpage.escape(key)}\\fR" in page, (table.name, key)
    assert '\n.TP\n\\fBtime\\fR\ndefault: "1h"; first ban\n' in page
    assert '\n.TP\n\\fBaddresses\\fR\ne.g. ["192.0.2.0/24"]; never banned' in page
    for line in DEFAULT_CONFIG.splitlines():
        assert f"\n{manpage.escape(line)}\n" in page


def test_the_template_gives_defaults_and_notes() -> None:
    found = manpage.template_defaults()
    assert found["ban.time"] == manpage.Default('"1h"', "first ban", is_default=True)
    # the loader, not the comment, says whether a value is the default or an example
    assert not found["allow.addresses"].is_default
    assert not found["traps.tcp"].is_default
    assert found["state_dir"].value == '"/var/lib/porttrap"'
    # a note continued on the next comment line joins the first
    assert found["traps.mode"].note.endswith('makes the default "connect" (README)')


def test_text_that_roff_would_take_for_requests_or_escapes_is_escaped() -> None:
    assert manpage.escape(".hidden") == "\\&.hidden"
    assert manpage.escape("'quoted") == "\\&'quoted"
    assert manpage.escape("a\\b --x") == "a\\eb \\-\\-x"
    for page in (manpage.porttrap_8(build_parser()), manpage.porttrap_toml_5()):
        for line in page.splitlines():
            # every line is a request, or text that starts with neither . nor '
            assert not re.match(r"^'", line)
            assert not re.match(r"^\.[^A-Za-z\\]", line), line


def test_a_parser_with_a_percent_in_its_help_is_expanded() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--mode", choices=["a", "b"], default="a", help="one of %(choices)s")
    assert "one of a, b" in "\n".join(manpage._options(parser))


def test_write_makes_both_pages_in_a_man_tree(tmp_path: Path) -> None:
    paths = manpage.write(tmp_path / "man")
    assert paths == [tmp_path / "man/man8/porttrap.8", tmp_path / "man/man5/porttrap.toml.5"]
    assert all(p.read_text().startswith('.\\"') for p in paths)


def test_setup_sh_run_installs_the_man_pages() -> None:
    setup = (Path(__file__).resolve().parents[2] / "scripts/setup.sh").read_text()
    run = setup[setup.index('if [ "$mode" = run ]; then\n  "$venv/bin/python" -m pip') :]
    assert '"$venv/bin/python" -m porttrap.cli.manpage /usr/local/share/man' in run
