"""`porttrap import` reads only what it is given: files inside the named directory or named on
the command line, regular files, at most `reading.MAX_BYTES`; what it cannot parse is
summarised by line numbers and counts, never echoed. Secrets here are fake, in temporary
directories (never the host's /etc/shadow)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from porttrap.cli.main import main
from porttrap.config.legacy import port_trap, portsentry, reading, whitelist
from porttrap.config.legacy.notes import Conversion, Note, SourceFile, spans, summary
from porttrap.config.legacy.portsentry_files import parse_conf, parse_defaults, ports
from porttrap.config.loader import load_text
from porttrap.errors import ConfigError, PorttrapError

DATA = Path(__file__).parent.parent / "data" / "legacy"
SECRET = "FAKEhashN0tReal"
SHADOW = (
    f"root:$6$salt${SECRET}rootrootroot:19000:0:99999:7:::\n"
    "daemon:*:19000:0:99999:7:::\n"
    f"alice:$y$j9T${SECRET}alicealice:19100:0:99999:7:::\n"
)


def text_of(conversion: Conversion) -> str:
    return conversion.toml + "".join(f"{note}\n" for note in conversion.notes)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    """A copy of Debian's PortSentry setup, in `tmp_path/portsentry`, with its mode file."""
    directory = tmp_path / "portsentry"
    shutil.copytree(DATA / "portsentry" / "debian-default", directory)
    return directory


@pytest.fixture
def shadow(tmp_path: Path) -> Path:
    """Content shaped like /etc/shadow, outside the setup."""
    path = tmp_path / "etc" / "shadow"
    path.parent.mkdir()
    path.write_text(SHADOW)
    return path


def set_ignore_file(directory: Path, value: str) -> None:
    conf = directory / "portsentry.conf"
    lines = conf.read_text().splitlines(keepends=True)
    conf.write_text("".join(f'IGNORE_FILE="{value}"\n' if line.startswith("IGNORE_FILE") else line
                            for line in lines))  # fmt: skip


# -- files outside the directory ---------------------------------------------------------------


def test_an_ignore_file_outside_the_directory_is_named_not_read(setup: Path, shadow: Path) -> None:
    set_ignore_file(setup, str(shadow))
    conversion = portsentry.convert(portsentry.read(setup, setup / "default"))
    assert SECRET not in text_of(conversion) and ":99999:" not in text_of(conversion)
    (note,) = [n for n in conversion.notes if n.key == "IGNORE_FILE"]
    assert note.line == 30
    assert f"{shadow} is outside {setup}: not read" in note.message
    assert f"give it: --ignore {shadow}" in note.message


@pytest.mark.parametrize("value", ["../etc/shadow", "/etc/portsentry/../..{shadow}"])
def test_a_relative_or_dotted_ignore_file_that_leaves_the_directory_is_not_read(
    setup: Path, shadow: Path, value: str
) -> None:
    set_ignore_file(setup, value.format(shadow=shadow))
    conversion = portsentry.convert(portsentry.read(setup, setup / "default"))
    assert SECRET not in text_of(conversion)
    assert any(f"give it: --ignore {shadow}" in n.message for n in conversion.notes)


def test_a_link_in_the_directory_to_a_file_outside_is_not_followed(
    setup: Path, shadow: Path
) -> None:
    (setup / "portsentry.ignore").unlink()
    (setup / "portsentry.ignore").symlink_to(shadow)
    conversion = portsentry.convert(portsentry.read(setup, setup / "default"))
    assert SECRET not in text_of(conversion)
    (note,) = [n for n in conversion.notes if n.key == "IGNORE_FILE"]
    assert f"(that is {shadow}) is outside" in note.message
    (setup / "portsentry.ignore.static").unlink()
    (setup / "portsentry.ignore.static").symlink_to(shadow)  # found by name: refused outright
    with pytest.raises(PorttrapError, match=r"portsentry\.ignore\.static: a link to .*, outside"):
        portsentry.read(setup, setup / "default")


def test_an_ignore_file_given_explicitly_is_read_and_summarised(setup: Path, shadow: Path) -> None:
    set_ignore_file(setup, str(shadow))
    conversion = portsentry.convert(portsentry.read(setup, setup / "default", ignore=shadow))
    assert SECRET not in text_of(conversion) and ":99999:" not in text_of(conversion)
    assert Note(str(shadow), None, "", "lines 1-3 (3): not an address: not carried over", 1) in (
        conversion.notes
    )


def test_the_host_s_mode_file_is_read_only_for_the_host_s_own_setup(
    setup: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/etc/default/portsentry belongs to /etc/portsentry; another DIR may be another host's."""
    host_defaults = tmp_path / "etc-default-portsentry"
    host_defaults.write_text('TCP_MODE="atcp"\nUDP_MODE="audp"\n')
    monkeypatch.setattr(portsentry, "DEFAULT_DEFAULTS", host_defaults)
    files = portsentry.read(setup)
    assert files.defaults is None
    conversion = portsentry.convert(files)
    assert 'mode = "connect"' in conversion.toml
    assert any(
        n.file == str(host_defaults)
        and f"not read: it is this host's, and {setup} may be" in str(n)
        for n in conversion.notes
    )
    monkeypatch.setattr(portsentry, "DEFAULT_DIR", setup)  # the host's own setup: read
    assert 'mode = "advanced"' in portsentry.convert(portsentry.read(setup)).toml


def test_a_link_swapped_in_after_the_check_is_caught(
    setup: Path, shadow: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the check that a file is inside DIR and its open, a writer of DIR may replace it
    with a link to outside: what was opened is checked too."""
    monkeypatch.setattr(reading, "inside", lambda path, directory: True)  # the check, raced
    (setup / "portsentry.conf").unlink()
    (setup / "portsentry.conf").symlink_to(shadow)
    with pytest.raises(PorttrapError, match=r"portsentry\.conf: replaced by a link out of"):
        portsentry.read(setup, setup / "default")


def test_port_trap_files_must_be_in_its_directory(tmp_path: Path, shadow: Path) -> None:
    directory = tmp_path / "port_trap"
    shutil.copytree(DATA / "port_trap" / "seed", directory)
    (directory / "whitelist.txt").unlink()
    (directory / "whitelist.txt").symlink_to(shadow)
    with pytest.raises(PorttrapError, match=r"whitelist\.txt: a link to .*, outside"):
        port_trap.read(directory)


# -- regular files, size-capped ----------------------------------------------------------------


def test_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "portsentry.ignore"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            reading.read(fifo)
        except BaseException as err:  # handed to the test's thread
            outcome.append(err)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout=60)
    if thread.is_alive():  # blocked in open(): release it, then fail
        with fifo.open("w"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert isinstance(outcome[0], PorttrapError)
    assert "a FIFO: not read (an import reads regular files only)" in str(outcome[0])


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/dev/null", "a character device: not read"),
        ("/proc/self/status", "a kernel pseudo-file (/proc, /sys)"),
        ("/proc", "a directory: not read"),
    ],
)
def test_devices_pseudo_files_and_directories_are_refused(path: str, why: str) -> None:
    with pytest.raises(PorttrapError, match=why.replace("(", r"\(").replace(")", r"\)")):
        reading.read(Path(path))


def test_a_file_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "portsentry.ignore"
    with big.open("wb") as out:
        out.truncate(200 * 1024 * 1024)  # sparse: 200 MB that take no disk
    with pytest.raises(PorttrapError, match=r"209715200 bytes, over the 1048576 an import reads"):
        reading.read(big)
    at_cap = tmp_path / "at-cap"
    at_cap.write_bytes(b"# comment\n" * (reading.MAX_BYTES // 10))
    assert len(reading.read(at_cap).text) <= reading.MAX_BYTES


def test_the_cap_is_far_above_every_real_file() -> None:
    largest = max(p.stat().st_size for p in DATA.rglob("*") if p.is_file() and p.suffix != ".db")
    assert largest * 50 < reading.MAX_BYTES


def test_a_database_in_the_directory_must_be_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "datatrap.db")
    with pytest.raises(PorttrapError, match="a FIFO"):
        reading.check_database(tmp_path / "datatrap.db", tmp_path)


# -- unparsed content is summarised, never echoed ------------------------------------------------


def test_unparsed_conf_lines_are_counted_not_shown() -> None:
    notes: list[Note] = []
    text = (f"root:$6${SECRET}:19000\n"
            f'TOKEN="{SECRET}"\n'
            f"also {SECRET}\n"
            'TCP_PORTS="1,2"\n'
            f'PASSWORD_{SECRET}="x"\n')  # fmt: skip
    parse_conf(SourceFile("portsentry.conf", text), notes)
    shown = [str(n) for n in notes]
    assert shown == [
        'portsentry.conf: lines 1, 3 (2): not KEY="value": PortSentry ignored it (1.2) or refused '
        "to start (2.x): not carried over",
        "portsentry.conf: lines 2, 5 (2): not a PortSentry setting: ignored, not carried over",
    ]


def test_values_that_do_not_parse_are_not_shown(setup: Path) -> None:
    conf = setup / "portsentry.conf"
    conf.write_text(conf.read_text().replace('BLOCK_TCP="0"', f'BLOCK_TCP="7{SECRET}"')
                    .replace('TCP_PORTS="1,11,', f'TCP_PORTS="1,{SECRET},a-b,11,'))  # fmt: skip
    (setup / "default").write_text(f'TCP_MODE="tcp"\nUDP_MODE="{SECRET}"\n')
    conversion = portsentry.convert(portsentry.read(setup, setup / "default"))
    assert SECRET not in text_of(conversion)
    notes = [str(n) for n in conversion.notes]
    assert "portsentry.conf:14: TCP_PORTS: items 2-3 (2): not a port or a range of ports" in (
        " ".join(notes).replace(str(setup) + "/", "")
    )
    assert any("BLOCK_TCP: not 0, 1 or 2" in n for n in notes)
    assert any("UDP_MODE: not one of udp, sudp, audp" in n for n in notes)


@pytest.mark.parametrize(
    "entry", ["192.0.2.1/" + "9" * 5000, "192.0.2.1/²", "fe80::1%" + SECRET, SECRET]
)
def test_ignore_entries_that_do_not_parse_are_not_shown(setup: Path, entry: str) -> None:
    (setup / "portsentry.ignore").write_text(f"# mine\n{entry}\n")
    conversion = portsentry.convert(portsentry.read(setup, setup / "default"))
    assert SECRET not in text_of(conversion) and "99999" not in text_of(conversion)
    assert any(n.line == 2 for n in conversion.notes if n.file.endswith("portsentry.ignore"))


@pytest.mark.parametrize("item", ["9" * 5000, "²", "1-" + "9" * 5000])
def test_huge_or_odd_numbers_are_not_ports(item: str) -> None:
    notes: list[Note] = []
    conf = parse_conf(SourceFile("c", f'TCP_PORTS="{item},7"\nSCAN_TRIGGER="{item}"\n'), notes)
    setting = conf.get("TCP_PORTS")
    assert setting is not None
    assert ports(setting, 2, "c", notes) == ["7"]
    assert "9999" not in " ".join(str(n) for n in notes)


def test_port_trap_words_patterns_and_counts_are_not_shown(tmp_path: Path) -> None:
    directory = tmp_path / "port_trap"
    directory.mkdir()
    (directory / "list_of_ports.txt").write_text(f"23#600 {SECRET}\n{SECRET}:80#60\n")
    (directory / "for_permanent_ban.txt").write_text(f"{SECRET}\n")
    (directory / "whitelist.txt").write_text(f"[{SECRET}\n({SECRET}\n192.0.2.7$\n")
    conversion = port_trap.convert(port_trap.read(directory))
    assert SECRET not in text_of(conversion)
    shown = "\n".join(str(n) for n in conversion.notes).replace(str(directory) + "/", "")
    assert "list_of_ports.txt:1: not [IP:]PORT#TIMEOUT[#6]" in shown
    assert "list_of_ports.txt:2: not an IP address porttrap can trap on" in shown
    assert "for_permanent_ban.txt:1: a word, which bash reads as an unset variable, 0" in shown
    assert "whitelist.txt: lines 1-2 (2): not a valid regular expression" in shown
    load_text(conversion.toml, None)


def test_summaries_list_ranges_then_a_count() -> None:
    assert spans([3, 1, 2, 7, 9, 10]) == "1-3, 7, 9-10"
    assert spans(list(range(1, 100, 2))) == "1, 3, 5, 7, 9, 11, 13, 15, 17, 19 and 40 more"
    assert str(summary("f", "", [4], "why")) == "f:4: why"
    assert str(summary("f", "K", [2, 5], "why", unit="item", at=9)) == "f:9: K: items 2, 5 (2): why"


# -- typographic quotes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("TCP_PORTS=“22,23″", "22,23"),  # the German wiki page in the seeds, as WordPress shows it
        ("KILL_RUN_CMD=“/sbin/x -a $TARGET$“", "/sbin/x -a $TARGET$"),
        ("TCP_PORTS=„1,2“", "1,2"),
        ("TCP_PORTS=« 1,2 »", "1,2"),
        ("TCP_PORTS=\u20181,2\u2019", "1,2"),
        ("KILL_RUN_CMD=“/bin/echo it\u2019s $TARGET$”", "/bin/echo it\u2019s $TARGET$"),
        ('TCP_PORTS="1,2"', "1,2"),
        ('PORT_BANNER="Don\u2019t."', "Don\u2019t."),  # plain quotes: up to the next "
    ],
)
def test_typographic_quotes_are_read_as_quotes_and_said(line: str, value: str) -> None:
    notes: list[Note] = []
    conf = parse_conf(SourceFile("c", line + "\n"), notes)
    (setting,) = conf.settings.values()
    assert setting.value == value
    typographic = value != line.split("=", 1)[1].strip('"')
    assert bool(notes) == typographic
    if typographic:
        assert notes[0].line == 1 and "typographic quotes" in notes[0].message


def test_typographic_quotes_in_the_mode_file() -> None:
    notes: list[Note] = []
    modes = parse_defaults(SourceFile("default", "TCP_MODE=“atcp”\nUDP_MODE=“audp”\n"), notes)
    assert (modes.tcp, modes.udp) == ("atcp", "audp")
    assert [(n.line, n.key) for n in notes] == [(1, "TCP_MODE"), (2, "UDP_MODE")]


# -- the command ---------------------------------------------------------------------------------


def test_cli_never_echoes_a_file_outside_the_directory(
    capsys: pytest.CaptureFixture[str], setup: Path, shadow: Path
) -> None:
    # Debian's list holds ports in this host's ip_local_port_range or not: exit 2 or 0, as
    # the setup's own import, whatever the ignore file
    usual, _, _ = run(capsys, "import", "portsentry", str(setup), "--defaults",
                      str(setup / "default"))  # fmt: skip
    set_ignore_file(setup, str(shadow))
    code, out, err = run(capsys, "import", "portsentry", str(setup), "--defaults",
                         str(setup / "default"))  # fmt: skip
    assert code == usual and SECRET not in out + err and ":99999:" not in err
    assert f"IGNORE_FILE: {shadow} is outside {setup}: not read" in err
    code, out, err = run(capsys, "import", "portsentry", str(setup), "--defaults",
                         str(setup / "default"), "--ignore", str(shadow))  # fmt: skip
    assert code == usual and SECRET not in out + err and ":99999:" not in err
    assert f"{shadow}: lines 1-3 (3): not an address: not carried over" in err


def test_cli_refuses_a_huge_file_in_a_few_words(
    capsys: pytest.CaptureFixture[str], setup: Path
) -> None:
    with (setup / "portsentry.ignore").open("wb") as big:
        big.truncate(200 * 1024 * 1024)
    code, out, err = run(capsys, "import", "portsentry", str(setup), "--defaults",
                         str(setup / "default"))  # fmt: skip
    assert (code, out) == (1, "")
    assert err.startswith("porttrap: error:") and "over the 1048576 an import reads" in err
    assert len(err) < 500


def test_cli_refuses_a_fifo_named_explicitly_or_found_in_the_directory(
    capsys: pytest.CaptureFixture[str], setup: Path, tmp_path: Path
) -> None:
    os.mkfifo(tmp_path / "fifo")
    code, out, err = run(capsys, "import", "portsentry", str(setup), "--defaults",
                         str(tmp_path / "fifo"))  # fmt: skip
    assert (code, out) == (1, "") and "a FIFO: not read" in err
    (setup / "portsentry.ignore").unlink()
    os.mkfifo(setup / "portsentry.ignore")
    target = tmp_path / "porttrap.toml"
    code, out, err = run(capsys, "import", "portsentry", str(setup), "--defaults",
                         str(setup / "default"), "-o", str(target))  # fmt: skip
    assert (code, out) == (1, "") and "portsentry.ignore: a FIFO: not read" in err
    assert not target.exists()


def test_cli_port_trap_refuses_a_database_outside_its_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = tmp_path / "port_trap"
    shutil.copytree(DATA / "port_trap" / "seed", directory)
    (tmp_path / "elsewhere.db").write_bytes(b"")
    (directory / "datatrap.db").symlink_to(tmp_path / "elsewhere.db")
    code, _, err = run(capsys, "import", "port-trap", str(directory), "--state-dir",
                       str(tmp_path / "state"))  # fmt: skip
    assert code == 1 and "datatrap.db: a link to" in err and "outside" in err
    assert not (tmp_path / "state").exists()


def test_cli_imports_typographic_quotes_as_ports(capsys: pytest.CaptureFixture[str]) -> None:
    sample = DATA / "portsentry" / "typographic"
    code, out, err = run(capsys, "import", "portsentry", str(sample), "--defaults",
                         str(sample / "default"))  # fmt: skip
    assert code == 0
    cfg = load_text(out, None)
    assert {t.port for t in cfg.traps} == {22, 23}
    assert "lines 7-9, 16-17 (5): the value is in typographic quotes" in err


# -- a whitelist too big to convert ------------------------------------------------------------


def test_whitelist_conversion_stops_at_the_import_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the file's budget of pattern tests, entries stay patterns (and still allow what
    port_trap allowed), so that a huge whitelist cannot keep the import busy for half an hour."""
    directory = tmp_path / "port_trap"
    directory.mkdir()
    (directory / "list_of_ports.txt").write_text("23#600\n")
    entries = [f"192.0.2.{n}$" for n in range(1, 6)]
    (directory / "whitelist.txt").write_text("\n".join(entries) + "\n")
    one = whitelist.convert(entries[0]).tests
    assert one > 0
    monkeypatch.setattr(port_trap, "IMPORT_BUDGET", 2 * one)
    conversion = port_trap.convert(port_trap.read(directory))
    cfg = load_text(conversion.toml, None)
    assert [str(n) for n in cfg.allow.networks] == ["192.0.2.1/32", "192.0.2.2/32"]
    assert len(cfg.allow.patterns) == 3
    shown = "\n".join(str(n) for n in conversion.notes).replace(str(directory) + "/", "")
    assert "whitelist.txt: lines 3-5 (3): kept as patterns" in shown
    assert "192.0.2.3" not in shown


def test_a_scan_trigger_past_what_porttrap_reads_is_capped_with_a_note() -> None:
    """SCAN_TRIGGER of 400 nines wrote `trigger` and `confirm` that the loader refuses as out of
    bounds (found by the importer fuzzer); capped, the config loads, or is refused only for
    what it protects."""
    files = portsentry.PortSentryFiles(
        conf=SourceFile("/etc/portsentry/portsentry.conf", f'SCAN_TRIGGER="{"9" * 400}"\n'),
        defaults=None,
        defaults_name="/etc/default/portsentry",
    )
    conversion = portsentry.convert(files)
    assert "trigger = 2147483647" in conversion.toml and "9" * 20 not in conversion.toml
    assert any("above 2147483647" in str(n) for n in conversion.notes)
    try:
        load_text(conversion.toml, None)
    except ConfigError as refused:  # only for what it protects (here: no trap port at all)
        assert all("at most 2147483647" not in p.message for p in refused.problems)
