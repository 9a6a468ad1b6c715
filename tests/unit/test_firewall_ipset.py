"""The ipset backend without a kernel: the scripts it writes, its parse of what ipset and
iptables print (recorded samples in tests/data/ipset/, expected results beside them), and what
it runs, in order, against a fake runner."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from porttrap.config.loader import load_text
from porttrap.errors import FirewallError
from porttrap.firewall import ipset_rules as rules
from porttrap.firewall.base import SensorBackend
from porttrap.firewall.exec import CommandFailed
from porttrap.firewall.ipset import IpsetBackend
from porttrap.firewall.ipset_rules import FAMILIES, MAX_TIMEOUT, Element, Names
from porttrap.model import Ban, Change, Unban, parse_target, show
from porttrap.sensorspec import SensorState, spec_from_config
from porttrap.testing import FakeClock

DATA = Path(__file__).parent.parent / "data" / "ipset"
EXPECTED: dict[str, Any] = json.loads((DATA / "expected.json").read_text())
NOW = 1_800_000_000.0
NAMES = Names("porttrap")
V4, V6 = FAMILIES
RAW_IN_PLACE = {4: (DATA / "raw-in-place-v4.txt").read_text(),
                6: (DATA / "raw-in-place-v6.txt").read_text()}  # fmt: skip
RAW_FRESH = (DATA / "raw-fresh-v4.txt").read_text()
SECURITY_IN_PLACE = {4: (DATA / "security-in-place-v4.txt").read_text(),
                     6: (DATA / "security-in-place-v6.txt").read_text()}  # fmt: skip
SECURITY_FRESH = (DATA / "security-fresh-v4.txt").read_text()


def ban(target: str, seconds: float | None, at: float = NOW) -> Ban:
    return Ban(parse_target(target), at, None if seconds is None else at + seconds, 1, "test")


def element(target: str, timeout: int) -> Element:
    return Element(parse_target(target), timeout)


# -- parsing recorded output ---------------------------------------------------------------


def test_parse_save_reads_porttraps_sets_only() -> None:
    text = (DATA / "save.txt").read_text()
    entries = rules.parse_save(text, ["porttrap_v4", "porttrap_v6"])
    assert [[str(e.target), e.remaining] for e in entries] == EXPECTED["save.txt"]


def test_parse_save_of_one_set() -> None:
    text = (DATA / "save.txt").read_text()
    assert [show(e.target) for e in rules.parse_save(text, ["other"])] == ["198.51.100.99"]
    assert rules.parse_save(text, ["porttrap"]) == []


def test_parse_names() -> None:
    text = (DATA / "list-names.txt").read_text()
    assert rules.parse_names(text) == EXPECTED["list-names.txt"]


@pytest.mark.parametrize("sample", sorted(EXPECTED["raw"]))
def test_parse_raw_tells_the_states_apart(sample: str) -> None:
    want = EXPECTED["raw"][sample]
    family = FAMILIES[0] if want["family"] == 4 else FAMILIES[1]
    raw = rules.parse_listing((DATA / sample).read_text())
    assert rules.in_place(raw, NAMES, family) is want["in_place"]
    assert ("porttrap" in raw.chains) is want["porttrap_chain"]
    assert raw.chain_rules("PREROUTING").count("-A PREROUTING -j porttrap") == want["jumps"]
    assert {"PREROUTING", "OUTPUT"} <= raw.chains


def test_error_line_of_a_recorded_failure() -> None:
    stderr = (DATA / "restore-missing-set.stderr").read_text()
    assert rules.error_line(stderr) == EXPECTED["restore-missing-set.stderr"]["line"]
    assert rules.error_line("ipset v7.17: Kernel error received: Operation not permitted") is None


# -- scripts -------------------------------------------------------------------------------


def test_keys_as_ipset_writes_them() -> None:
    targets = ["192.0.2.7", "192.0.2.0/24", "2001:db8::7", "2001:db8:0:0:1::/80"]
    assert [rules.key(parse_target(t)) for t in targets] == [
        "192.0.2.7",
        "192.0.2.0/24",
        "2001:db8::7",
        "2001:db8:0:0:1::/80",
    ]
    assert not rules.holdable(ipaddress.ip_network("0.0.0.0/0"))
    assert rules.holdable(ipaddress.ip_network("128.0.0.0/1"))


def test_setup_script_first_time_renames_the_filled_sets_in() -> None:
    script = rules.setup_script(
        NAMES, ["other"], [element("192.0.2.7", 60), element("2001:db8::/48", 0)]
    )
    assert script.splitlines() == [
        "create porttrap_v4_tmp hash:net family inet hashsize 1024 maxelem 16777216 timeout 0",
        "add porttrap_v4_tmp 192.0.2.7 timeout 60",
        "rename porttrap_v4_tmp porttrap_v4",
        "create porttrap_v6_tmp hash:net family inet6 hashsize 1024 maxelem 16777216 timeout 0",
        "add porttrap_v6_tmp 2001:db8::/48 timeout 0",
        "rename porttrap_v6_tmp porttrap_v6",
    ]


def test_setup_script_swaps_and_clears_a_stale_temporary_set() -> None:
    existing = ["porttrap_v4", "porttrap_v6", "porttrap_v4_tmp"]
    script = rules.setup_script(NAMES, existing, [element("198.51.100.0/24", MAX_TIMEOUT)])
    assert script.splitlines() == [
        "destroy porttrap_v4_tmp",
        "create porttrap_v4_tmp hash:net family inet hashsize 1024 maxelem 16777216 timeout 0",
        "add porttrap_v4_tmp 198.51.100.0/24 timeout 2147483",
        "swap porttrap_v4_tmp porttrap_v4",
        "destroy porttrap_v4_tmp",
        "create porttrap_v6_tmp hash:net family inet6 hashsize 1024 maxelem 16777216 timeout 0",
        "swap porttrap_v6_tmp porttrap_v6",
        "destroy porttrap_v6_tmp",
    ]


def test_hashsize_is_a_power_of_two_for_half_the_elements_at_least() -> None:
    sizes = [rules.hashsize(count) for count in (0, 2048, 2049, 10_000, 100_000, 131_072)]
    assert sizes == [1024, 1024, 2048, 8192, 65536, 65536]


def test_update_script_adds_and_deletes_in_the_right_set() -> None:
    states = {
        parse_target("192.0.2.7"): Element(parse_target("192.0.2.7"), 60),
        parse_target("2001:db8::7"): None,
        parse_target("2001:db8::/64"): Element(parse_target("2001:db8::/64"), 0),
    }
    assert rules.update_script(NAMES, states) == (
        "add porttrap_v4 192.0.2.7 timeout 60\n"
        "del porttrap_v6 2001:db8::7\n"
        "add porttrap_v6 2001:db8::/64 timeout 0\n"
    )
    assert rules.update_script(NAMES, {}) == ""


def test_teardown_script_destroys_only_what_exists() -> None:
    existing = ["other", "porttrap_v6", "porttrap_v4_tmp"]
    assert rules.teardown_script(NAMES, existing) == (
        "destroy porttrap_v4_tmp\ndestroy porttrap_v6\n"
    )
    assert rules.teardown_script(NAMES, ["other"]) == ""


def test_iptables_setup_puts_one_jump_first() -> None:
    raw = rules.parse_listing((DATA / "raw-two-jumps-v4.txt").read_text())
    assert rules.iptables_setup(raw, NAMES, V4).splitlines() == [
        "*raw",
        ":porttrap - [0:0]",
        "-A porttrap -m set --match-set porttrap_v4 src -j DROP",
        "-D PREROUTING -j porttrap",
        "-D PREROUTING -j porttrap",
        "-I PREROUTING 1 -j porttrap",
        "COMMIT",
    ]
    fresh = rules.iptables_setup(rules.parse_listing(RAW_FRESH), NAMES, V6)
    assert "-D " not in fresh and "--match-set porttrap_v6 src -j DROP" in fresh


def test_iptables_teardown_leaves_other_rules() -> None:
    raw = rules.parse_listing((DATA / "raw-accept-first-v4.txt").read_text())
    assert rules.iptables_teardown(raw, NAMES).splitlines() == [
        "*raw",
        "-D PREROUTING -j porttrap",
        "-F porttrap",
        "-X porttrap",
        "COMMIT",
    ]
    assert rules.iptables_teardown(rules.parse_listing(RAW_FRESH), NAMES) == ""


def test_names_follow_the_table_and_refuse_what_ipset_cannot_hold() -> None:
    names = Names("pt_test")
    assert (names.set(V4), names.tmp_set(V6), names.chain) == ("pt_test_v4", "pt_test_v6_tmp",
                                                              "pt_test")  # fmt: skip
    Names("a" * 19)
    with pytest.raises(FirewallError, match=r"too long for the ipset backend.*at most 19 char"):
        Names("a" * 20)


# -- the backend against a fake runner ------------------------------------------------------


class FakeRunner:
    """Answers `ipset list -n` with `sets`, `iptables -t raw -S` with `raw`, `-t security -S`
    with `security`, `ipset save NAME` with `saved[NAME]`; records every call; `fail` makes
    calls whose argv starts so fail."""

    def __init__(
        self,
        sets: Sequence[str] = (),
        raw: dict[int, str] | None = None,
        security: dict[int, str] | None = None,
    ) -> None:
        self.sets = list(sets)
        self.raw = raw if raw is not None else {4: RAW_FRESH, 6: RAW_FRESH}
        self.security = security if security is not None else {4: SECURITY_FRESH, 6: SECURITY_FRESH}
        self.saved: dict[str, str] = {}
        self.calls: list[tuple[str, str | None]] = []
        self.fail: dict[str, str] = {}

    def run(self, argv: Sequence[str], stdin: str | None = None) -> str:
        command = " ".join(argv)
        self.calls.append((command, stdin))
        for start, stderr in self.fail.items():
            if command.startswith(start):
                raise CommandFailed(argv, 1, stderr)
        if command == "ipset list -n":
            return "".join(f"{name}\n" for name in self.sets)
        if command.startswith("ipset save "):
            return self.saved.get(argv[-1], "")
        if command.endswith("-t raw -S"):
            return self.raw[6 if argv[0] == "ip6tables" else 4]
        if command.endswith("-t security -S"):
            return self.security[6 if argv[0] == "ip6tables" else 4]
        return ""

    def commands(self) -> list[str]:
        return [command for command, _ in self.calls]

    def scripts(self, start: str) -> list[str]:
        return [stdin or "" for command, stdin in self.calls if command.startswith(start)]

    def forget(self) -> None:
        self.calls.clear()


def backend(runner: FakeRunner, clock: FakeClock | None = None) -> IpsetBackend:
    return IpsetBackend(clock=clock or FakeClock(NOW), runner=runner)


def test_setup_runs_one_ipset_batch_then_one_iptables_transaction_per_family() -> None:
    runner = FakeRunner(sets=["porttrap_v4", "porttrap_v6"])
    backend(runner).setup([ban("192.0.2.7", 60), ban("192.0.2.7", None)], NOW)
    assert runner.commands() == [
        "ipset list -n",
        "ipset restore",
        "iptables -w 5 -t raw -S",
        "iptables -w 5 -t security -S",
        "iptables-restore -w 5 --noflush",
        "ip6tables -w 5 -t raw -S",
        "ip6tables -w 5 -t security -S",
        "ip6tables-restore -w 5 --noflush",
    ]
    (script,) = runner.scripts("ipset restore")
    assert "add porttrap_v4_tmp 192.0.2.7 timeout 0\n" in script
    assert "swap porttrap_v4_tmp porttrap_v4\n" in script
    assert "*security" not in "".join(runner.scripts("iptables-restore"))  # no watch: no chains


def test_apply_is_one_exist_restore_and_nothing_for_no_changes() -> None:
    runner = FakeRunner()
    fw = backend(runner)
    fw.apply([], NOW)
    assert runner.calls == []
    changes: list[Change] = [ban("192.0.2.7", 60), Unban(parse_target("2001:db8::7"), NOW, "x")]
    fw.apply(changes, NOW)
    assert runner.calls == [(
        "ipset -exist restore",
        "add porttrap_v4 192.0.2.7 timeout 60\ndel porttrap_v6 2001:db8::7\n",
    )]  # fmt: skip


def test_apply_refuses_a_slash_zero_and_applies_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    runner = FakeRunner()
    with caplog.at_level(logging.ERROR, "porttrap"), pytest.raises(
        FirewallError, match=r"0\.0\.0\.0/0 not banned: ipset's hash:net cannot hold a /0"
    ):  # fmt: skip
        backend(runner).apply([ban("0.0.0.0/0", 60), ban("192.0.2.7", 60)], NOW)
    assert runner.scripts("ipset") == ["add porttrap_v4 192.0.2.7 timeout 60\n"]
    assert "event=firewall-error action=ban address=0.0.0.0/0" in caplog.text


def test_a_refused_restore_names_the_line_and_the_missing_sets() -> None:
    runner = FakeRunner()
    runner.fail["ipset -exist restore"] = (DATA / "restore-missing-set.stderr").read_text()
    with pytest.raises(FirewallError) as raised:
        backend(runner).apply([ban("192.0.2.1", 60), ban("2001:db8::1", 60)], NOW)
    message = str(raised.value)
    assert "`ipset -exist restore` failed (exit 1): ipset v7.17: Error in line 2" in message
    assert "(script line 2: add porttrap_v6 2001:db8::1 timeout 60)" in message
    assert "porttrap's sets porttrap_v4 and porttrap_v6 are made when the daemon starts" in message


def test_present_needs_both_jumps_first() -> None:
    accept_first = (DATA / "raw-accept-first-v4.txt").read_text()
    assert backend(FakeRunner(raw=RAW_IN_PLACE)).present()
    assert not backend(FakeRunner(raw={4: accept_first, 6: RAW_IN_PLACE[6]})).present()
    assert not backend(FakeRunner(raw={4: RAW_IN_PLACE[4], 6: RAW_FRESH})).present()


def test_entries_of_the_sets_that_exist() -> None:
    runner = FakeRunner(sets=["porttrap_v4"])
    runner.saved["porttrap_v4"] = (DATA / "save.txt").read_text()
    entries = backend(runner).entries()
    assert [show(e.target) for e in entries][:2] == ["203.0.113.0/24", "198.51.100.8"]
    assert "ipset save porttrap_v6" not in runner.commands()
    assert backend(FakeRunner()).entries() == []


def test_teardown_removes_only_what_is_there() -> None:
    runner = FakeRunner(sets=["other", "porttrap_v4"], raw={4: RAW_IN_PLACE[4], 6: RAW_FRESH})
    backend(runner).teardown()
    assert runner.commands() == [
        "iptables -w 5 -t raw -S",
        "iptables -w 5 -t security -S",
        "iptables-restore -w 5 --noflush",
        "ip6tables -w 5 -t raw -S",
        "ip6tables -w 5 -t security -S",
        "ipset list -n",
        "ipset restore",
    ]
    assert runner.scripts("ipset restore") == ["destroy porttrap_v4\n"]
    nothing = FakeRunner(sets=["other"])
    backend(nothing).teardown()
    assert "ipset restore" not in nothing.commands()


# -- the watch (every mode the daemon runs: connect mode with ipset) -------------------------

CONNECT = '[traps]\ntcp = ["23"]\nudp = ["69", "161"]\n'
GATEWAY = ipaddress.ip_address("192.0.2.254")


def transactions(runner: FakeRunner) -> list[str]:
    """The scripts given to iptables-restore and ip6tables-restore, in order."""
    return [stdin or "" for command, stdin in runner.calls if "tables-restore " in command]


def state(config: str = CONNECT, gateways: Sequence[str] = ("192.0.2.254",)) -> SensorState:
    spec = spec_from_config(load_text(config, None))
    return SensorState(spec, {}, gateways=frozenset(ipaddress.ip_address(g) for g in gateways))


def test_setup_with_the_watch_is_still_one_ipset_batch_and_one_transaction_per_family() -> None:
    runner = FakeRunner(sets=["porttrap_v4", "porttrap_v6"])
    backend(runner).setup([ban("192.0.2.7", 60)], NOW, state())
    assert runner.commands() == [
        "ipset list -n",
        "ipset restore",
        "iptables -w 5 -t raw -S",
        "iptables -w 5 -t security -S",
        "iptables-restore -w 5 --noflush",
        "ip6tables -w 5 -t raw -S",
        "ip6tables -w 5 -t security -S",
        "ip6tables-restore -w 5 --noflush",
    ]
    (script,) = runner.scripts("ipset restore")
    assert "swap porttrap_v4_tmp porttrap_v4\n" in script  # the bans...
    assert "add porttrap_tmp 192.0.2.254\nrename porttrap_tmp porttrap_gateways_v4\n" in script
    v4, v6 = transactions(runner)  # ...and the chains, both tables in one transaction each
    assert v4.startswith("*raw\n") and "COMMIT\n*security\n" in v4
    assert "--add-set porttrap_clients_v4 src" in v4 and "porttrap_clients_v6" in v6


def test_present_with_the_watch_needs_its_chains_in_place_in_both_families() -> None:
    def present(security: dict[int, str]) -> bool:
        runner = FakeRunner(raw=RAW_IN_PLACE)
        fw = backend(runner)
        fw.setup([], NOW, state())
        runner.security = security  # the kernel as it is now, after the setup
        return fw.present()

    accept_first = (DATA / "security-accept-first-v4.txt").read_text()
    flushed = (DATA / "security-mark-flushed-v4.txt").read_text()
    assert present(SECURITY_IN_PLACE)
    assert not present({4: accept_first, 6: SECURITY_IN_PLACE[6]})
    assert not present({4: flushed, 6: SECURITY_IN_PLACE[6]})
    assert not present({4: SECURITY_IN_PLACE[4], 6: SECURITY_FRESH})
    no_watch = backend(FakeRunner(raw=RAW_IN_PLACE, security={4: "", 6: ""}))
    assert no_watch.present()  # bans only (no setup with a state): the raw table is all


def test_setup_without_a_state_removes_a_watch_left_before_after_its_rules() -> None:
    runner = FakeRunner(
        sets=NAMES.owned_sets()[:2] + NAMES.watch_sets(), security=SECURITY_IN_PLACE
    )
    backend(runner).setup([], NOW)
    assert runner.commands()[-2:] == ["ip6tables-restore -w 5 --noflush", "ipset restore"]
    v4 = runner.scripts("iptables-restore")[0]
    assert "-D INPUT -j porttrap_in\n" in v4 and "-X porttrap_mark\n" in v4
    destroyed = runner.scripts("ipset restore")[-1].splitlines()
    assert destroyed == [f"destroy {name}" for name in NAMES.watch_sets()]


def test_set_gateways_sends_the_difference_in_one_exist_restore() -> None:
    runner = FakeRunner()
    fw = backend(runner)
    with pytest.raises(FirewallError, match="hold no watch"):
        fw.set_gateways([GATEWAY])
    fw.setup([], NOW, state())
    runner.forget()
    fw.set_gateways([GATEWAY])  # what the sets hold already: nothing to do
    assert runner.calls == []
    fw.set_gateways([ipaddress.ip_address("fe80::1%eth0"), ipaddress.ip_address("fe80::1")])
    assert runner.calls == [(
        "ipset -exist restore",
        "add porttrap_gateways_v6 fe80::1\ndel porttrap_gateways_v4 192.0.2.254\n",
    )]  # fmt: skip
    fw.teardown()
    with pytest.raises(FirewallError, match="hold no watch"):
        fw.set_gateways([GATEWAY])


def test_teardown_removes_the_watchs_chains_and_sets_too() -> None:
    sets = ["other", *NAMES.owned_sets()]
    runner = FakeRunner(sets=sets, raw=RAW_IN_PLACE, security=SECURITY_IN_PLACE)
    backend(runner).teardown()
    v4, v6 = transactions(runner)
    for script in (v4, v6):
        assert script.startswith("*raw\n") and "\n*security\n" in script
        assert "-X porttrap_in\n-X porttrap_out\n-X porttrap_mark\nCOMMIT\n" in script
    (destroyed,) = runner.scripts("ipset restore")
    assert destroyed.splitlines() == [f"destroy {name}" for name in NAMES.owned_sets()]


def test_the_watch_without_a_sensor_a_sensor_backend_refuses_the_sensors_parts() -> None:
    sensor: SensorBackend = backend(FakeRunner())
    with pytest.raises(FirewallError, match="no kernel sensor"):
        sensor.serve({})
    with pytest.raises(FirewallError, match="no kernel sensor"):
        sensor.rotate("b")
    with pytest.raises(FirewallError, match="no kernel sensor"):
        sensor.sensor_counters()


def test_parse_count_reads_the_number_of_entries_of_ipset_list_terse() -> None:
    terse = (
        "Name: porttrap_v4\nType: hash:net\nRevision: 7\n"
        "Header: family inet hashsize 1024 maxelem 1048576 timeout 0\n"
        "Size in memory: 1240\nReferences: 1\nNumber of entries: 1200\nMembers:\n"
    )
    assert rules.parse_count(terse) == 1200
    assert rules.parse_count("Name: x\n") == 0
