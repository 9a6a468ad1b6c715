"""Whether a config that is valid value by value can protect anything at all.

A config with no trap port, a `trigger` no scanner can reach, or a respond mode that does
nothing would start, say OK and never ban anyone: these are errors, like a typo. They are
checked on an otherwise valid config (a bad value in the sections they read would make them
report its default instead).
"""

from __future__ import annotations

from collections.abc import Mapping

from porttrap.config import fields
from porttrap.config.fields import Problems, Table
from porttrap.config.schema import BAN_EVENTS, Actions, Config, Modes, Respond, Trap, TrapMode
from porttrap.model import Proto

SECTIONS = ("traps", "ban", "actions")  # what these checks read: checked once they are valid


def check(problems: Problems, data: Table, config: Config) -> None:
    """Problems for a `config` (read from `data`) that cannot ban anyone: key, and the fix."""
    ban = config.ban
    reachable = reachable_ports(config.traps, config.modes)
    total = sum(reachable.values())
    if total == 0:
        problems.add(fields.traps_key(data, ("tcp", "udp", "port")), _NO_TRAPS)
    elif ban.trigger > total:
        problems.add("ban.trigger", _trigger_message(ban.trigger, reachable))
    idle = [proto for proto in Proto if ban.respond(proto) is Respond.COMMAND]
    if idle and not acts_on_ban(config.actions):
        problems.add("ban.respond", _command_message(idle))


def reachable_ports(traps: tuple[Trap, ...], modes: Modes) -> dict[Proto, int]:
    """The distinct trap ports of each protocol a scanner can touch: the trap ports in
    connect and stealth modes, the watched ports left after the exclusions in advanced mode."""
    found = {}
    for proto in Proto:
        if modes.of(proto) is TrapMode.ADVANCED:
            found[proto] = len(modes.watched(proto) - modes.excluded(proto))
        else:
            found[proto] = len({trap.port for trap in traps if trap.proto is proto})
    return found


def acts_on_ban(actions: Actions) -> bool:
    """Whether any action runs when a source is banned."""
    ons = [command.on for command in actions.commands] + [hook.on for hook in actions.webhooks]
    return actions.hosts_deny is not None or any(on & BAN_EVENTS for on in ons)


_NO_TRAPS = (
    "there is no trap port for TCP nor for UDP, so nothing can ever be banned; list ports "
    'such as tcp = ["1524", "31337"], or leave tcp and udp out for the built-in lists'
)


def _trigger_message(trigger: int, reachable: Mapping[Proto, int]) -> str:
    total = sum(reachable.values())
    counts = ", ".join(f"{count} {proto.value.upper()}" for proto, count in reachable.items())
    return (
        f"trigger = {trigger} bans a source once it touched {trigger} distinct trap ports, "
        f"but there are only {total} ({counts}), so nothing can ever be banned; set trigger "
        f"to {total} or less, or add trap ports"
    )


def _command_message(protos: list[Proto]) -> str:
    names = " and ".join(proto.value for proto in protos)
    verb = "respond" if len(protos) > 1 else "responds"
    return (
        f'{names} {verb} with "command", which bans nothing in the kernel and leaves the ban '
        "to the actions, but no action runs on a ban, so nothing would happen; add an "
        '[[actions.command]] (or [actions.hosts_deny], [[actions.webhook]]) that runs on "ban", '
        'or set respond = "ban"'
    )
