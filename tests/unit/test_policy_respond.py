"""`[allow] patterns` and `[ban] respond`: from the TOML text to the policy's decisions and to
what the daemon sends to the kernel."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from porttrap.config.loader import load_text
from porttrap.config.schema import BanPolicy, Config, Respond
from porttrap.core.events import AdminUnban, Reconcile, Started, TurnEnded
from porttrap.daemon.wiring import make_shell
from porttrap.errors import ConfigError
from porttrap.model import Hit, Outcome, Proto, trap_reason, trapped_by
from porttrap.policy import Policy, Protection
from porttrap.testing import FakeClock
from porttrap.testing.memory_firewall import MemoryFirewall
from porttrap.testing.memory_store import MemoryStore

# respond = "command" needs an action that runs on a ban (config.protection)
ON_BAN = '\n[[actions.command]]\nrun = ["/bin/true"]\n'

T0 = 1_800_000_000.0
TCP, UDP = Proto.TCP, Proto.UDP


def hit(source: str, proto: Proto = TCP, port: int = 23, at: float = 0.0) -> Hit:
    kind = "udp" if proto is UDP else "connect"
    return Hit(T0 + at, ip_address(source), 40000, ip_address("203.0.113.1"), port, proto, kind)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(text, None)
    return [f"{p.line} {p.key}: {p.message}" for p in caught.value.problems]


# --- [allow] patterns ---------------------------------------------------------------------


def test_patterns_match_the_whole_text_of_an_address() -> None:
    protection = Protection([], patterns=[r"198\.51\.100\.[0-9]", r"2001:db8::7.*"])
    assert protection.outcome_for(ip_address("198.51.100.5")) is Outcome.ALLOWED
    assert protection.outcome_for(ip_address("198.51.100.50")) is None  # fullmatch, not prefix
    assert protection.outcome_for(ip_address("2001:db8::7a")) is Outcome.ALLOWED
    assert protection.outcome_for(ip_address("2001:db8::8")) is None


def test_patterns_see_ipv6_in_its_compressed_form() -> None:
    protection = Protection([], patterns=[r"2001:db8::1"])
    assert protection.allowed(ip_address("2001:0db8:0000:0000:0000:0000:0000:0001"))


def test_a_pattern_spares_hits_and_refuses_an_admin_ban_of_the_address() -> None:
    policy = Policy(BanPolicy(), (), Protection([], patterns=[r"198\.51\.100\.7"]))
    assert policy.on_hit(hit("198.51.100.7"), T0).outcome is Outcome.ALLOWED
    assert policy.on_hit(hit("198.51.100.8"), T0).outcome is Outcome.BANNED
    with pytest.raises(Exception, match="allow list"):
        policy.ban([ip_network("198.51.100.7/32")], T0)


def test_patterns_load_from_allow_and_bad_ones_are_reported_with_their_line() -> None:
    text = "[allow]\naddresses = [\"192.0.2.0/24\"]\npatterns = ['198\\.51\\.100\\.[0-9]+']\n"
    config = load_text(text, None)
    assert config.allow.networks == (ip_network("192.0.2.0/24"),)
    assert config.allow.patterns == (r"198\.51\.100\.[0-9]+",)
    found = problems("[allow]\npatterns = ['1\\.2\\.(3', 7]\n")
    assert found[0].startswith("2 allow.patterns[0]: ")
    assert "not a valid regular expression" in found[0]
    assert found[1].startswith("2 allow.patterns[1]: expected a regular expression")


def test_allow_rejects_unknown_keys() -> None:
    assert problems("[allow]\npattern = ['x']\n") == [
        '2 allow.pattern: unknown key "pattern"; did you mean "patterns"?'
    ]


# --- [ban] respond: the config ---------------------------------------------------------------


def test_respond_defaults_to_ban_and_takes_a_string_or_a_table() -> None:
    assert load_text("", None).ban.respond(UDP) is Respond.BAN
    connect = '[traps]\nmode = "connect"\n'  # the kernel modes' block is a ban of its own
    both = load_text(connect + '[ban]\nrespond = "log"\n', None).ban
    assert (both.respond(TCP), both.respond(UDP)) == (Respond.LOG, Respond.LOG)
    each = load_text(connect + '[ban]\nrespond = { udp = "command" }\n' + ON_BAN, None).ban
    assert (each.respond(TCP), each.respond(UDP)) == (Respond.BAN, Respond.COMMAND)


def test_bad_respond_values_are_reported() -> None:
    assert problems('[ban]\nrespond = "block"\n') == [
        '2 ban.respond: expected one of "ban", "log", "command", got "block"'
    ]
    assert problems("[ban]\nrespond = 1\n") == [
        '2 ban.respond: expected one of "ban", "log", "command", or a table such as '
        '{ tcp = "ban", udp = "log" }, got 1'
    ]
    found = problems('[ban]\nrespond = { tcp = "logg", icmp = "ban" }\n')
    assert any('ban.respond.tcp: expected one of "ban", "log", "command"' in p for p in found)
    assert any("ban.respond.icmp: unknown key" in p for p in found)


def test_respond_other_than_ban_needs_the_kernel_block_off_in_kernel_modes() -> None:
    text = (
        '[traps]\nmode = { tcp = "stealth", udp = "connect" }\n[ban]\nrespond = { tcp = "log" }\n'
    )
    (found,) = problems(text)
    assert found.startswith('4 ban.respond: tcp responds with "log" but is in "stealth" mode')
    assert "set [kernel] block = false" in found
    load_text(text + "[kernel]\nblock = false\n", None)  # fine
    load_text(
        '[traps]\nmode = { tcp = "stealth", udp = "connect" }\n[ban]\nrespond = { udp = "log" }\n',
        None,
    )


# --- [ban] respond: the policy --------------------------------------------------------------


def test_log_records_hits_and_never_bans_only_its_protocol() -> None:
    policy = Policy(BanPolicy(respond_udp=Respond.LOG, confirm=1), (), Protection([]))
    assert policy.on_hit(hit("198.51.100.7", UDP), T0).outcome is Outcome.LOGGED
    assert policy.on_hit(hit("198.51.100.7", UDP, at=1), T0 + 1).outcome is Outcome.LOGGED
    assert policy.active(T0 + 2) == []
    assert policy.on_hit(hit("198.51.100.7", TCP, at=2), T0 + 2).outcome is Outcome.BANNED


def test_log_reports_what_would_have_banned_after_the_trigger_and_confirm() -> None:
    policy = Policy(BanPolicy(respond_tcp=Respond.LOG, trigger=2), (), Protection([]))
    outcomes = [policy.on_hit(hit("198.51.100.7", port=p), T0).outcome for p in (23, 24, 25)]
    assert outcomes == [Outcome.COUNTED, Outcome.LOGGED, Outcome.COUNTED]
    probes = Policy(BanPolicy(respond_tcp=Respond.LOG), (), Protection([]))
    syn = Hit(T0, ip_address("198.51.100.8"), 1, ip_address("203.0.113.1"), 23, TCP, "syn")
    assert [probes.on_hit(syn, T0).outcome for _ in range(3)] == [
        Outcome.COUNTED,  # a probe can be forged: it takes `confirm` (2) of them
        Outcome.LOGGED,
        Outcome.COUNTED,
    ]


def test_log_still_spares_the_allow_list_first() -> None:
    policy = Policy(BanPolicy(respond_tcp=Respond.LOG), (), Protection([], patterns=[".*"]))
    assert policy.on_hit(hit("198.51.100.7"), T0).outcome is Outcome.ALLOWED


def test_command_bans_are_decided_and_escalate_but_stay_out_of_the_kernel() -> None:
    policy = Policy(BanPolicy(respond_tcp=Respond.COMMAND), (), Protection([]))
    first = policy.on_hit(hit("198.51.100.7"), T0).ban
    assert first is not None and not policy.enforced(first)
    later = T0 + 2 * 3600
    second = policy.on_hit(hit("198.51.100.7", at=2 * 3600), later).ban
    assert second is not None and second.ban_count == 2
    udp = Policy(BanPolicy(respond_tcp=Respond.COMMAND, confirm=1), (), Protection([]))
    udp_ban = udp.on_hit(hit("198.51.100.9", UDP), T0).ban
    assert udp_ban is not None and udp.enforced(udp_ban)


@pytest.mark.parametrize(
    ("tcp", "udp", "enforced"),
    [
        (Respond.BAN, Respond.BAN, True),
        (Respond.COMMAND, Respond.BAN, True),
        (Respond.COMMAND, Respond.COMMAND, False),
        (Respond.LOG, Respond.COMMAND, False),
    ],
)
def test_an_admin_ban_reaches_the_kernel_when_any_protocol_bans(
    tcp: Respond, udp: Respond, enforced: bool
) -> None:
    policy = Policy(BanPolicy(respond_tcp=tcp, respond_udp=udp), (), Protection([]))
    (ban,) = policy.ban([ip_network("198.51.100.7/32")], T0)
    assert policy.enforced(ban) is enforced


def test_trap_reasons_round_trip_and_others_are_not_trap_bans() -> None:
    assert trapped_by(trap_reason(UDP, 161)) == (UDP, 161)
    for other in ("manual", "trap:icmp/3", "trap:tcp/", "trap:tcp/x", "port_trap:tcp/23"):
        assert trapped_by(other) is None


# --- [ban] respond: the daemon ----------------------------------------------------------------


def test_every_ban_is_recorded_but_only_enforced_ones_reach_the_kernel(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    firewall, store = MemoryFirewall(clock), MemoryStore()
    config = Config(state_dir=tmp_path, ban=BanPolicy(respond_tcp=Respond.COMMAND, confirm=1))
    shell = make_shell(config, clock, store, firewall)

    async def scenario() -> None:
        shell.feed(Started(frozenset(), []))
        shell.on_hit(hit("198.51.100.7", TCP))  # decided by the command
        shell.on_hit(hit("198.51.100.8", UDP))  # banned in the kernel
        shell.feed(TurnEnded())
        assert [str(e.target) for e in firewall.entries()] == ["198.51.100.8/32"]
        shell.feed(Reconcile())  # a rebuild of the kernel state keeps the command's ban out too
        assert [str(e.target) for e in firewall.entries()] == ["198.51.100.8/32"]
        shell.feed(AdminUnban((ip_network("198.51.100.7/32"),)))

    asyncio.run(scenario())
    shell.writer.close()
    assert {str(b.target) for b in store.active_bans(T0)} == {"198.51.100.8/32"}
    recorded = {str(e.ban.target) for e in store.history() if e.ban is not None}
    assert recorded == {"198.51.100.7/32", "198.51.100.8/32"}  # both were recorded
