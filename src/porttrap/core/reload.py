"""What a reload changes, and what only a restart can: the daemon compares the running
configuration with the one just read, section by section (pure)."""

from __future__ import annotations

from dataclasses import fields

from porttrap.config.schema import Config
from porttrap.model import Proto
from porttrap.sensorspec import SensorSpec, spec_from_config


def changed(old: Config, new: Config) -> list[str]:
    """The top-level keys and sections whose values differ ("traps", "ban", "allow"...)."""
    return [f.name for f in fields(Config) if f.name != "source" and _differs(old, new, f.name)]


def _differs(old: Config, new: Config, name: str) -> bool:
    return bool(getattr(old, name) != getattr(new, name))


def needs_restart(old: Config, new: Config) -> list[str]:
    """What in `new` a running daemon cannot take, each with why: the reload is refused then,
    and the running configuration stays (a half-applied one would be worse)."""
    found = []
    if old.state_dir != new.state_dir:
        found.append(
            f"state_dir: {old.state_dir} -> {new.state_dir} (the database and the control "
            "socket stay where the daemon opened them)"
        )
    if old.firewall.backend != new.firewall.backend:
        found.append(f"[firewall] backend: {old.firewall.backend} -> {new.firewall.backend}")
    if old.firewall.table != new.firewall.table:
        found.append(
            f"[firewall] table: {old.firewall.table} -> {new.firewall.table} (the bans live "
            "in the old one)"
        )
    if old.modes.kernel != new.modes.kernel:
        found.append(
            "[traps] mode: the kernel sensor would be turned "
            f"{'on' if new.modes.kernel else 'off'} (stealth and advanced modes use it, "
            "connect mode does not)"
        )
    if old.fleet != new.fleet:
        found.append(
            "[fleet]: the daemon's link to the fleet's database is made at start (a changed "
            "url, name or password_file, joining or leaving)"
        )
    for key in ("nflog_group", "queue"):
        before, after = getattr(old.kernel, key), getattr(new.kernel, key)
        if before != after and new.modes.kernel:
            found.append(f"[kernel] {key}: {before} -> {after}")
    queues = old.kernel.hold_queue, new.kernel.hold_queue
    if queues[0] != queues[1] and spec_from_config(old).hold and spec_from_config(new).hold:
        found.append(
            f"[kernel] hold_queue: {queues[0]} -> {queues[1]} (the SYNs held now wait in the "
            "old queue)"
        )
    return found


def kernel_changed(old: Config, new: Config) -> bool:
    """Whether porttrap's table must be built again: the rules of the kernel sensor or of the
    watch (every mode: the marks of connect-mode UDP traps) changed, or which bans belong in
    the kernel did (`[ban] respond`)."""
    responds = any(old.ban.respond(p) != new.ban.respond(p) for p in Proto)
    return responds or _in_table(spec_from_config(old)) != _in_table(spec_from_config(new))


def _in_table(spec: SensorSpec) -> tuple[object, ...]:
    """What of `spec` porttrap's table holds: everything of the protocols the sensor watches;
    of connect mode, only the UDP trap ports (whose datagrams the watch marks)."""
    watched = tuple((p, spec.ports[p], spec.at[p], spec.exclude[p]) for p in spec.protos)
    allow = spec.allow if spec.protos else ()
    return (dict(spec.modes), watched, allow, spec.connect_udp, spec.kernel)
