"""The pure part of actions: events from hits, bans and unbans; placeholders, quoting, the
environment and the JSON body."""

from __future__ import annotations

import json
import shlex
from ipaddress import ip_address, ip_network

from porttrap.actions import events
from porttrap.actions.events import ActionEvent
from porttrap.config.schema import CommandAction, Event, Modes, TrapMode
from porttrap.model import Ban, Hit, Outcome, Proto, Unban

T0 = 1_800_000_000.0
MODES = Modes(tcp=TrapMode.STEALTH, udp=TrapMode.ADVANCED)


def trap_ban(target: str = "192.0.2.7", *, permanent: bool = False, port: int = 23) -> Ban:
    expires = None if permanent else T0 + 3600
    return Ban(ip_network(target), T0, expires, 3 if permanent else 1, f"trap:tcp/{port}")


def test_mode_names_are_portsentrys() -> None:
    names = {
        (mode, proto): events.mode_name(Modes(tcp=mode, udp=mode), proto)
        for mode in TrapMode
        for proto in Proto
    }
    assert names == {
        (TrapMode.CONNECT, Proto.TCP): "tcp",
        (TrapMode.CONNECT, Proto.UDP): "udp",
        (TrapMode.STEALTH, Proto.TCP): "stcp",
        (TrapMode.STEALTH, Proto.UDP): "sudp",
        (TrapMode.ADVANCED, Proto.TCP): "atcp",
        (TrapMode.ADVANCED, Proto.UDP): "audp",
    }


def test_a_trap_ban_names_its_port_and_mode() -> None:
    event = events.from_ban(trap_ban(), MODES)
    assert event == ActionEvent(
        name=Event.BAN,
        address="192.0.2.7",
        at=T0,
        port=23,
        proto=Proto.TCP,
        mode="stcp",
        reason="trap:tcp/23",
        ban_count=1,
        expires_at=T0 + 3600,
        evidence="verified",
    )
    permanent = events.from_ban(trap_ban(permanent=True), MODES)
    assert permanent.name is Event.PERMANENT_BAN and permanent.permanent


def test_an_admin_ban_has_mode_admin_and_port_0() -> None:
    ban = Ban(ip_network("198.51.100.0/24"), T0, None, 1, "manual")
    event = events.from_ban(ban, MODES)
    assert (event.address, event.port, event.proto, event.mode) == (
        "198.51.100.0/24",
        0,
        None,
        "admin",
    )
    assert events.placeholders(event) == {"TARGET": "198.51.100.0/24", "PORT": "0", "MODE": "admin"}


def test_an_unban_takes_the_lifted_bans_port_and_mode_when_known() -> None:
    unban = Unban(ip_network("192.0.2.7/32"), T0 + 10, "manual")
    known = events.from_unban(unban, trap_ban(port=2323), MODES)
    assert (known.name, known.port, known.mode, known.reason, known.at) == (
        Event.UNBAN,
        2323,
        "stcp",
        "manual",
        T0 + 10,
    )
    unknown = events.from_unban(unban, None, MODES)
    assert (unknown.port, unknown.proto, unknown.mode, unknown.ban_count) == (0, None, "admin", 0)


def test_an_expiry_is_an_unban_with_reason_expired_at_the_end_of_the_ban() -> None:
    event = events.from_expiry(trap_ban(), MODES)
    assert (event.name, event.reason, event.at, event.port) == (
        Event.UNBAN,
        "expired",
        T0 + 3600,
        23,
    )


def test_a_hit_carries_its_kind_outcome_and_the_ban_it_caused() -> None:
    hit = Hit(T0, ip_address("2001:db8::9"), 40000, ip_address("2001:db8::1"), 161, Proto.UDP,
              "udp")  # fmt: skip
    counted = events.from_hit(hit, Outcome.COUNTED, None, MODES)
    assert (counted.mode, counted.kind, counted.outcome, counted.ban_count) == (
        "audp",
        "udp",
        "counted",
        0,
    )
    ban = Ban(ip_network("2001:db8::9/128"), T0, T0 + 60, 2, "trap:udp/161")
    banned = events.from_hit(hit, Outcome.BANNED, ban, MODES)
    assert (banned.outcome, banned.ban_count, banned.expires_at) == ("banned", 2, T0 + 60)


def test_argv_placeholders_are_substituted_inside_arguments_without_a_shell() -> None:
    action = CommandAction(run=("/usr/local/sbin/notify", "--ip=$TARGET$", "$PORT$/$MODE$"))
    assert events.argv(action, events.from_ban(trap_ban(), MODES)) == [
        "/usr/local/sbin/notify",
        "--ip=192.0.2.7",
        "23/stcp",
    ]


def test_a_value_is_never_expanded_again() -> None:
    values = {"TARGET": "$PORT$", "PORT": "23", "MODE": "tcp"}
    assert events.expand("$TARGET$ $PORT$", values) == "$PORT$ 23"


def test_shell_values_are_quoted_so_that_hostile_text_stays_one_word() -> None:
    hostile = "fe80::1%x';touch /tmp/pwned;'$(reboot)`id`"
    values = {"TARGET": hostile, "PORT": "23", "MODE": "tcp"}
    line = events.expand("/usr/bin/logger banned $TARGET$ on $PORT$", values, quote=True)
    assert shlex.split(line) == ["/usr/bin/logger", "banned", hostile, "on", "23"]


def test_a_shell_command_runs_through_bin_sh_c() -> None:
    action = CommandAction(run=("echo $TARGET$ >> /tmp/x",), shell=True)
    event = events.from_ban(trap_ban(), MODES)
    assert events.argv(action, event) == ["/bin/sh", "-c", "echo 192.0.2.7 >> /tmp/x"]


def test_environment() -> None:
    env = events.environment(events.from_ban(trap_ban(), MODES))
    assert env == {
        "PORTTRAP_EVENT": "ban",
        "PORTTRAP_ADDRESS": "192.0.2.7",
        "PORTTRAP_PORT": "23",
        "PORTTRAP_PROTO": "tcp",
        "PORTTRAP_MODE": "stcp",
        "PORTTRAP_KIND": "",
        "PORTTRAP_OUTCOME": "",
        "PORTTRAP_BAN_COUNT": "1",
        "PORTTRAP_EXPIRES_AT": "2027-01-15T09:00:00Z",
        "PORTTRAP_PERMANENT": "0",
        "PORTTRAP_REASON": "trap:tcp/23",
        "PORTTRAP_EVIDENCE": "verified",
    }
    permanent = events.environment(events.from_ban(trap_ban(permanent=True), MODES))
    assert permanent["PORTTRAP_EXPIRES_AT"] == "" and permanent["PORTTRAP_PERMANENT"] == "1"


def test_the_json_body() -> None:
    ban_body = json.loads(events.body(events.from_ban(trap_ban(), MODES), "gw1"))
    assert ban_body == {
        "event": "ban",
        "address": "192.0.2.7",
        "at": "2027-01-15T08:00:00Z",
        "port": 23,
        "proto": "tcp",
        "mode": "stcp",
        "reason": "trap:tcp/23",
        "ban_count": 1,
        "expires_at": "2027-01-15T09:00:00Z",
        "permanent": False,
        "evidence": "verified",
        "kind": None,
        "outcome": None,
        "source_port": None,
        "local": None,
        "host": "gw1",
        "porttrap": "0.1.0",
    }
    hit = Hit(T0, ip_address("192.0.2.7"), 40000, ip_address("203.0.113.1"), 23, Proto.TCP)
    hit_body = json.loads(events.body(events.from_hit(hit, Outcome.LOGGED, None, MODES), "gw1"))
    assert (hit_body["kind"], hit_body["outcome"], hit_body["local"]) == (
        "connect",
        "logged",
        "203.0.113.1",
    )
    assert hit_body["source_port"] == 40000
