"""`porttrap import port-trap`: samples under tests/data/legacy/port_trap (the seed's files and a
directory of the mistakes people make) with the expected config and notes beside them; the
whitelist converter against re.match itself; datatrap.db built with port_trap's exact schema and
rows, imported into the store, and escalation continuing through the policy; the CLI."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porttrap.cli.main import main
from porttrap.config.legacy import datatrap, port_trap, whitelist
from porttrap.config.legacy.notes import Conversion, SourceFile
from porttrap.config.loader import load_text
from porttrap.errors import PorttrapError
from porttrap.model import Hit, Outcome, Proto, as_network
from porttrap.policy.engine import Policy
from porttrap.policy.protect import Protection
from porttrap.store.sqlite import SQLiteStore

DATA = Path(__file__).parent.parent / "data" / "legacy" / "port_trap"
SAMPLES = sorted(p.name for p in DATA.iterdir() if p.is_dir())
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ips (id INTEGER PRIMARY KEY, ts INTEGER, delafter INTEGER, "
    "ip TEXT, port INTEGER, detected TEXT, banned INTEGER, inet INTEGER)"
)
HOUR = 3600


def compare(sample: Path, conversion: Conversion) -> None:
    """The config and the notes, with the sample's directory shown as DIR, as stored beside
    the sample (PORTTRAP_REGEN=1 rewrites them: review the diff)."""
    toml = conversion.toml.replace(str(sample), "DIR")
    notes = "".join(f"{note}\n" for note in conversion.notes).replace(str(sample), "DIR")
    expected_toml, expected_notes = sample / "expected.toml", sample / "expected-notes.txt"
    if os.environ.get("PORTTRAP_REGEN"):
        expected_toml.write_text(toml)
        expected_notes.write_text(notes)
    assert toml == expected_toml.read_text()
    assert notes == expected_notes.read_text()


@functools.cache
def imported(name: str) -> Conversion:
    return port_trap.convert(port_trap.read(DATA / name))


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_gives_the_expected_config_and_notes(name: str) -> None:
    compare(DATA / name, imported(name))


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_config_loads(name: str) -> None:
    load_text(imported(name).toml, None)


def test_seed_traps_ban_times_and_escalation() -> None:
    cfg = load_text(imported("seed").toml, None)
    traps = {(t.port, str(t.address) if t.address else None): t.ban for t in cfg.traps}
    assert traps == {(23, None): HOUR, (83, None): HOUR, (223, None): HOUR,
                     (3389, None): HOUR, (5050, None): HOUR, (9090, None): HOUR,
                     (9091, "12.34.56.78"): HOUR}  # fmt: skip
    assert all(t.proto is Proto.TCP for t in cfg.traps)
    assert (cfg.ban.permanent_after, cfg.ban.trigger) == (3, 1)
    assert cfg.ban.max_time == 4 * HOUR  # the 2nd ban, the longest temporary one
    assert cfg.ban.forget_after > 1_800_000_000  # further back than 1970: nothing forgotten


def test_odd_directory_keeps_what_port_trap_ran() -> None:
    cfg = load_text(imported("odd").toml, None)
    ports = sorted((t.port, str(t.address) if t.address else "*") for t in cfg.traps)
    assert ports == [(23, "*"), (2323, "*"), (9090, "203.0.113.5"),
                     (9092, "2001:db8::5"), (9094, "*")]  # fmt: skip
    assert cfg.ban.permanent_after == 1  # 'abc': bash read it as 0
    assert cfg.allow.patterns  # the irregular pattern is kept


# -- the whitelist converter -------------------------------------------------------------------

SEED = {
    "12.34.56.*": ["12.34.56.0/24"],
    "78.56.*.*": ["78.56.0.0/16"],
    r"1\.2\.3\.[0-9]{1,3}": ["1.2.3.0/24"],
    "2a03:*:*:*::*": ["2a03::/16"],
    # re.match anchors at the start only: [2-9] is the last octet's first digit
    "34.56.78.[2-9]": ["34.56.78.2/31", "34.56.78.4/30", "34.56.78.8/31", "34.56.78.20/30",
                       "34.56.78.24/29", "34.56.78.32/27", "34.56.78.64/27", "34.56.78.96/30",
                       "34.56.78.200/29", "34.56.78.208/28", "34.56.78.224/27"],
}  # fmt: skip


@pytest.mark.parametrize(("pattern", "expected"), SEED.items())
def test_seed_whitelist_entries_become_exact_networks(pattern: str, expected: list[str]) -> None:
    result = whitelist.convert(pattern)
    assert [str(n) for n in result.networks] == expected
    assert result.pattern is None


def sample_addresses(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    """The ends of a network and its neighbours outside it."""
    first, last = int(network.network_address), int(network.broadcast_address)
    kind = type(network.network_address)
    top = 2**network.max_prefixlen - 1
    return [str(kind(v)) for v in (first, last, max(first - 1, 0), min(last + 1, top))]


@pytest.mark.parametrize("pattern", SEED)
def test_seed_conversions_agree_with_re_match(pattern: str) -> None:
    """Every address of every octet of the seed entries' networks' /16, and each network's
    neighbours, is allowed by the networks exactly when port_trap's re.match allowed it."""
    networks = whitelist.convert(pattern).networks
    probes = [a for n in networks for a in sample_addresses(n)]
    for net in networks:
        if net.version == 4:
            base = ipaddress.ip_network(f"{net.network_address}/16", strict=False)
            probes += [str(base.network_address + i) for i in range(0, 65536, 97)]
    for text in probes:
        address = ipaddress.ip_address(text)
        if address.version == 6 and int(address) >> 125 == 0:
            continue  # below 2000:: (out of scope: no trap hit comes from there)
        assert any(address in n for n in networks) == bool(re.match(pattern, text)), text


def test_kept_patterns_match_what_re_match_matched() -> None:
    for pattern in [r"\d+\.\d+\.\d+\.\d*7", "2001:db8:0:1", r"10\.0\.0\.1\b", "(?=1)1"]:
        result = whitelist.convert(pattern, budget=20_000)
        assert result.pattern is not None and result.why
        for text in ["10.0.0.1", "10.0.0.17", "192.0.2.7", "2001:db8:0:1::5", "2001:db8:2::1"]:
            assert bool(re.fullmatch(result.pattern, text)) == bool(re.match(pattern, text))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"^198\.51\.100\.[0-9]+$", ["198.51.100.0/24"]),  # a last $: single addresses decide
        (r"^10\.0\.0\.1$", ["10.0.0.1/32"]),
        ("203.0.113.7", ["203.0.113.7/32", "203.0.113.70/31", "203.0.113.72/29"]),
        ("(?i)2001:DB8:", ["2001:db8::/32"]),
        ("Fe80::1", []),  # IPv6 text is lower case: it matched nothing
    ],
)
def test_other_entries(pattern: str, expected: list[str]) -> None:
    result = whitelist.convert(pattern)
    assert result.pattern is None
    assert [str(n) for n in result.networks] == expected
    for network in result.networks:
        for text in sample_addresses(network):
            allowed = any(ipaddress.ip_address(text) in n for n in result.networks)
            assert allowed == bool(re.match(pattern, text)), text


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("a.b", "(?:a.b).*"), ("^x$", "^x$"), ("a|b$", "(?:a|b$).*"), (r"a\$", r"(?:a\$).*"),
     ("(?i)ab", "(?i)(?:ab).*"), ("(?x) a # c", "(?x)(?: a # c\n).*")],
)  # fmt: skip
def test_fullmatch_form(pattern: str, expected: str) -> None:
    assert whitelist.fullmatch_form(pattern) == expected


def test_invalid_pattern_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        whitelist.check("[0-9+")


OCTET = st.integers(0, 255).map(str)
CLASS = st.sampled_from(["[0-9]", "[1-3]", "[2-9]", "[0-4]", r"\d", "."])
PIECE = st.one_of(OCTET, CLASS, st.sampled_from(["*", ".*", r"\.", "{1,3}", "1", "25"]))
V6_PIECE = st.sampled_from(["2001", "2a03", ":", "db8", "[0-9a-f]", "[2-3]", "::", "a", ".", "*"])


def _valid(pattern: str) -> bool:
    try:
        whitelist.check(pattern)
    except ValueError:
        return False
    return True


PATTERNS = st.one_of(
    st.lists(PIECE, min_size=1, max_size=6).map("".join).filter(_valid),
    st.lists(V6_PIECE, min_size=1, max_size=6).map("".join).filter(_valid),
)
ANY_V4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


@settings(max_examples=30, deadline=None)
@given(pattern=PATTERNS, data=st.data())
def test_converted_networks_equal_the_re_match_set(pattern: str, data: st.DataObject) -> None:
    """Property: for sampled addresses (random ones, and ones built from the pattern's own
    digits, which is where the matches are), a converted entry allows exactly what re.match
    allowed; a kept pattern in its fullmatch form does too."""
    result = whitelist.convert(pattern, budget=10_000)
    digits = [int(d) for d in re.findall(r"\d+", pattern) if int(d) < 256] or [0]
    near = st.tuples(*[st.sampled_from([*digits, 0, 1, 255]) for _ in range(4)]).map(
        lambda o: ipaddress.IPv4Address(".".join(map(str, o)))
    )
    v6 = st.integers(2**125, 2**128 - 1).map(ipaddress.IPv6Address)  # 2000:: and up
    groups = [int(g, 16) for g in re.findall(r"[0-9a-f]{1,4}", pattern) if int(g, 16) >= 0x2000]
    near_v6 = st.tuples(
        st.sampled_from(groups or [0x2001]),
        st.sampled_from([0xDB8, 0x2A03, 1, 0xFFFF]),
        st.integers(0, 2**96 - 1),
    ).map(lambda t: ipaddress.IPv6Address((t[0] << 112) | (t[1] << 96) | t[2]))
    for address in data.draw(st.lists(st.one_of(near, ANY_V4, v6, near_v6), min_size=20)):
        text = str(address)
        port_trap_allowed = bool(re.match(pattern, text))
        if result.pattern is not None:
            assert bool(re.fullmatch(result.pattern, text)) == port_trap_allowed, text
        else:
            assert any(address in n for n in result.networks) == port_trap_allowed, text


# -- datatrap.db -------------------------------------------------------------------------------

NOW = 1_790_000_000.0


def port_trap_ban(db: Path, ts: float, timeout: int, ip: str, port: str, *, inet: int = 4) -> None:
    """A row as port_trap.py writes it: every value quoted, n from the address's row count."""
    conn = sqlite3.connect(db)
    conn.execute(SCHEMA)
    (count,) = conn.execute(f"select count(id) from ips where ip='{ip}'").fetchone()
    delafter = int(ts) + timeout * (count + 1) ** 2
    conn.execute(
        "insert into ips (ts, delafter, ip, port, detected, banned, inet) values "
        f"('{int(ts)}','{delafter}','{ip}','{port}','2026-09-21 12:00:00.000000','1','{inet}')"
    )
    conn.commit()
    conn.close()


def expire_and_make_permanent(db: Path, now: float, permanent_after: int) -> None:
    """What ban.sh does from cron: banned=0 once delafter passed, 8 on every row of an address
    with permanent_after rows."""
    conn = sqlite3.connect(db)
    conn.execute(f"update ips set banned=0 where banned=1 and delafter < {int(now)}")
    for (ip,) in conn.execute(
        f"select ip from ips group by ip having count(*) >= {permanent_after}"
    ).fetchall():
        conn.execute(f"update ips set banned=8 where ip='{ip}'")
    conn.commit()
    conn.close()


@pytest.fixture
def old_install(tmp_path: Path) -> Path:
    """A port_trap directory: the seed's files and a history of bans."""
    directory = tmp_path / "port_trap"
    directory.mkdir()
    for name in ("list_of_ports.txt", "for_permanent_ban.txt", "whitelist.txt"):
        (directory / name).write_text((DATA / "seed" / name).read_text())
    db = directory / "datatrap.db"
    day = 86400
    port_trap_ban(db, NOW - 10 * day, HOUR, "198.51.100.7", "9090")  # 1h, long over
    port_trap_ban(db, NOW - 5 * day, HOUR, "198.51.100.7", "23")  # 4h, long over
    port_trap_ban(db, NOW - 600, HOUR, "203.0.113.9", "12.34.56.78:9091")  # 1h, running
    for days in (30, 20, 10):  # three bans: permanent since
        port_trap_ban(db, NOW - days * day, HOUR, "2001:db8::9", "23", inet=6)
    expire_and_make_permanent(db, NOW, 3)
    conn = sqlite3.connect(db)
    conn.execute("insert into ips (ts, delafter, ip, port, detected, banned, inet) values "
                 "('1','2','not-an-ip','23','x','0','4')")  # fmt: skip
    conn.execute("insert into ips (ts, delafter, ip, port, detected, banned, inet) values "
                 "('soon','2','198.51.100.99','23','x','0','4')")  # fmt: skip
    conn.commit()
    conn.close()
    return directory


def test_history_rows_become_bans_numbered_as_port_trap_counted() -> None:
    rows = [(1, 100, 3700, "198.51.100.7", 9090, 0), (2, 200, 300, "198.51.100.7", "23", 0),
            (3, 50, 60, "2001:db8::9", "2001:db8::1:23", 8), (4, 70, 80, "2001:db8::9", 23, 8),
            (5, "x", 1, "198.51.100.8", 23, 1), (6, 1, 2, "nope", 23, 1),
            (7, 9, 5, "198.51.100.8", 23, 1), (8, 1, 2, "root:$6$secret", 23, 1)]  # fmt: skip
    history = datatrap.convert(rows, "datatrap.db")
    shown = [(str(b.target.network_address), b.banned_at, b.expires_at, b.ban_count, b.reason)
             for b in history.bans]  # fmt: skip
    assert shown == [
        ("2001:db8::9", 50.0, 60.0, 1, "port_trap:tcp/23"),
        ("2001:db8::9", 70.0, None, 2, "port_trap:tcp/23"),  # the newest of a banned=8 address
        ("198.51.100.7", 100.0, 3700.0, 1, "port_trap:tcp/9090"),
        ("198.51.100.7", 200.0, 300.0, 2, "port_trap:tcp/23"),
    ]
    assert [str(p) for p in history.problems] == [
        "datatrap.db: row id 5: ts or delafter is not a time in seconds: left out",
        "datatrap.db: row ids 6, 8 (2): ip is not an IP address: left out",
        "datatrap.db: row id 7: delafter 5 is before ts 9: left out",
    ]  # the rows' text is never shown: the ids say where to look


def test_a_database_that_is_not_port_trap_s_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "datatrap.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE bans (id INTEGER PRIMARY KEY, target TEXT)")
    conn.close()
    with pytest.raises(PorttrapError, match=r"not port_trap's datatrap\.db: it has no table ips"):
        datatrap.read(db)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_continues_the_escalation_where_port_trap_left_it(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    code, out, err = run(capsys, "import", "port-trap", str(old_install), "--state-dir", str(state))
    assert code == 0
    assert f"{state / 'porttrap.db'}: imported 6 bans of 8 rows" in err
    assert "row id 7: ip is not an IP address: left out" in err and "not-an-ip" not in err
    cfg = load_text(out, None)
    with SQLiteStore.open(state / "porttrap.db") as store:
        stored = store.bans_to_restore(NOW, NOW - cfg.ban.forget_after)
        active = {str(b.target.network_address): b for b in store.active_bans(NOW)}
    assert set(active) == {"203.0.113.9", "2001:db8::9"}
    assert active["2001:db8::9"].permanent and active["2001:db8::9"].ban_count == 3
    policy = Policy(cfg.ban, cfg.traps, Protection(cfg.allow.networks, patterns=cfg.allow.patterns))
    policy.restore(stored, NOW)

    def hit(source: str, port: int, at: float) -> Hit:
        local = ipaddress.ip_address("192.0.2.1")
        return Hit(at, ipaddress.ip_address(source), 40000, local, port, Proto.TCP)

    third = policy.on_hit(hit("198.51.100.7", 9090, NOW), NOW)  # port_trap's 3rd: permanent
    assert third.ban is not None and (third.ban.ban_count, third.ban.permanent) == (3, True)
    running = policy.on_hit(hit("203.0.113.9", 23, NOW), NOW)
    assert running.outcome is Outcome.ALREADY_BANNED  # port_trap's running ban goes on
    later = NOW + 2 * HOUR
    second = policy.on_hit(hit("203.0.113.9", 23, later), later)
    assert second.ban is not None and second.ban.ban_count == 2
    assert second.ban.expires_at == later + 4 * HOUR  # 1h x 2^2, as port_trap would have
    assert policy.banned(ipaddress.ip_address("2001:db8::9"), later) is not None


def test_importing_twice_adds_nothing(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    assert run(capsys, "import", "port-trap", str(old_install), "--state-dir", state)[0] == 0
    code, _, err = run(capsys, "import", "port-trap", str(old_install), "--state-dir", state)
    assert code == 0
    assert "imported 0 bans of 8 rows of port_trap's history (6 already there" in err
    with SQLiteStore.open(tmp_path / "state" / "porttrap.db") as store:
        assert len(store.bans_since(0)) == 6


def test_cli_writes_the_file_refuses_to_overwrite_and_forces(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    target = tmp_path / "porttrap.toml"
    args = ["import", "port-trap", str(old_install), "--no-history", "-o", str(target)]
    code, out, err = run(capsys, *args)
    assert (code, out) == (0, "")
    expected = port_trap.convert(port_trap.read(old_install))
    assert target.read_text() == expected.toml
    assert err.splitlines()[: len(expected.notes)] == [str(n) for n in expected.notes]
    assert f"wrote {target}" in err
    target.write_text("# mine\n")
    code, _, err = run(capsys, *args)
    assert code == 5 and "exists: give --force" in err
    assert target.read_text() == "# mine\n"
    assert run(capsys, *args, "--force")[0] == 0
    assert target.read_text() == expected.toml
    assert list(tmp_path.glob(".porttrap.toml.*")) == []  # no temporary file left behind


def test_cli_refuses_a_foreign_database_before_writing_anything(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    (old_install / "datatrap.db").unlink()
    conn = sqlite3.connect(old_install / "datatrap.db")
    conn.execute("CREATE TABLE ips (id INTEGER PRIMARY KEY, address TEXT)")
    conn.close()
    target = tmp_path / "porttrap.toml"
    code, _, err = run(capsys, "import", "port-trap", str(old_install), "-o", str(target),
                       "--state-dir", str(tmp_path / "state"))  # fmt: skip
    assert code == 1
    assert "is not port_trap's datatrap.db" in err and "--no-history" in err
    assert not target.exists()


def test_cli_refuses_a_state_dir_others_may_write_before_writing_anything(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    """root writes porttrap's database there: refused as `porttrap run` refuses it."""
    tmp_path.chmod(0o700)
    shared = tmp_path / "state"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    target = tmp_path / "porttrap.toml"
    code, _, err = run(capsys, "import", "port-trap", str(old_install), "-o", str(target),
                       "--state-dir", str(shared))  # fmt: skip
    assert code == 1
    assert f"{shared} is writable" in err and "chmod" in err
    assert not target.exists() and list(shared.iterdir()) == []


def test_cli_stdout_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "import", "port-trap", str(DATA / "seed"), "--no-history")
    assert code == 0 and out == imported("seed").toml
    assert "whitelist.txt:1: 12.34.56.*:" in err
    code, out, err = run(capsys, "import", "port-trap", str(tmp_path))
    assert (code, out) == (1, "")
    assert err.startswith("porttrap: error:") and "list_of_ports.txt not found" in err
    sample = Path(__file__).parent.parent / "data" / "legacy" / "portsentry" / "seed-fr"
    code, out, err = run(capsys, "import", "portsentry", str(sample), "--defaults",
                         str(sample / "default"))  # fmt: skip
    assert code == 0 and 'mode = "advanced"' in out
    assert "KILL_ROUTE: replaced by porttrap's own firewall ban" in err
    with pytest.raises(SystemExit) as exit_code:
        main(["import", "fail2ban"])
    assert exit_code.value.code == 2
    capsys.readouterr()


def test_history_goes_to_the_state_dir_of_the_config(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    state = tmp_path / "from-config"
    config = tmp_path / "existing.toml"
    config.write_text(f'state_dir = "{state}"\n')
    code, _, err = run(capsys, "import", "port-trap", str(old_install), "-c", str(config))
    assert code == 0 and f"{state / 'porttrap.db'}: imported 6 bans" in err
    assert as_network(ipaddress.ip_address("203.0.113.9")) in {
        b.target for b in SQLiteStore.open(state / "porttrap.db").active_bans(NOW)
    }


def test_a_running_daemon_is_told_to_restart(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    """The daemon reads bans at start: an import while it runs must say to restart it."""
    state = tmp_path / "s"
    state.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(state / "control.sock"))
    server.listen(4)

    def answer() -> None:  # one status request: control.ping
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b'{"ok": true, "running": true}\n')

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        code, _, err = run(capsys, "import", "port-trap", str(old_install), "--state-dir",
                           str(state))  # fmt: skip
    finally:
        thread.join(timeout=10)
        server.close()
    assert code == 0
    assert "porttrap is running: restart it" in err


def test_an_invalid_config_stops_the_import_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], old_install: Path, tmp_path: Path
) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('state_dir = "relative"\n')
    target = tmp_path / "porttrap.toml"
    code, _, err = run(
        capsys, "import", "port-trap", str(old_install), "-c", str(config), "-o", str(target)
    )
    assert code == 2 and "state_dir" in err
    assert not target.exists()


def test_a_whitelist_entry_that_repeats_a_repeat_is_left_out_with_a_note() -> None:
    files = port_trap.PortTrapFiles(
        ports=SourceFile("list_of_ports.txt", "23#600\n"),
        permanent=None,
        whitelist=SourceFile("whitelist.txt", "(.*)*#\n192.0.2.7$\n"),
    )
    conversion = port_trap.convert(files)
    assert load_text(conversion.toml, None).allow.patterns == ()
    (note,) = [str(n) for n in conversion.notes if n.line == 1 and n.file == "whitelist.txt"]
    assert note.startswith("whitelist.txt:1: (.*)*#: repeats a part that itself repeats")
    assert note.endswith(": not carried over")
