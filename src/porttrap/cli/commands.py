"""One function per command: arguments in, exit code out."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from porttrap import log, sshsession
from porttrap.cli import output
from porttrap.clock import SystemClock
from porttrap.config import loader as config_mod
from porttrap.config.fleet import tls_warning
from porttrap.config.metrics import exposure_warning
from porttrap.config.schema import Config, LogConfig, Respond, TrapMode
from porttrap.core.views import ban_json
from porttrap.daemon import control, wiring
from porttrap.daemon.notify import Notifier
from porttrap.errors import DaemonNotRunning, NoDatabase, Refused, UsageError
from porttrap.firewall import registry
from porttrap.firewall.base import FirewallBackend
from porttrap.firewall.claim import claim
from porttrap.firewall.select import make_backend
from porttrap.model import IPNetwork, Proto, parse_target
from porttrap.store import open_store
from porttrap.units import TooLong, parse_duration

EXIT_NOT_RUNNING = 3
EXIT_NOT_RECORDED = 4  # ban/unban: done in the kernel, not yet in the store (a full disk)
EXIT_REFUSED = 5  # understood and declined (main.EXIT_REFUSED): here, an address still held
MAX_FILE_PROBLEMS = 10  # bad lines of `-f FILE` listed; the count covers all


def _config(args: argparse.Namespace) -> Config:
    return config_mod.load(args.config)


def run(args: argparse.Namespace) -> int:
    notifier = Notifier.from_environment()  # first: no hook may inherit systemd's variables
    try:
        cfg = _config(args)  # an invalid config stops here, before anything touches the kernel
        log.configure(cfg, args.verbose)  # so does a log file or syslog that cannot be opened
        log_admin_session(cfg, os.environ.get("SSH_CONNECTION"))
        wiring.run(
            cfg,
            notifier=notifier,
            config_path=args.config,
            verbose=args.verbose,
            flush_on_exit=args.flush_on_exit,
        )
    finally:
        notifier.close()
    return 0


def log_admin_session(cfg: Config, ssh_connection: str | None) -> None:
    """The daemon's first line, when run from an SSH session: whether its peer is safe from
    bans (a warning when not, with the fix)."""
    session = sshsession.parse_ssh_connection(ssh_connection)
    if session is None:
        return
    ports = sshsession.ssh_ports(cfg.protect.ssh_ports)
    result = sshsession.admin_session(session, ports, cfg.allow)
    level = logging.INFO if result.protected else logging.WARNING
    log.event("admin-session", level, **sshsession.fields(result, ports))


def reload(args: argparse.Namespace) -> int:
    """Ask the daemon to apply its configuration again; its refusal lists every problem."""
    cfg = _config(args)  # checked here first: an invalid file is refused without asking
    try:
        answer = control.request(cfg.control_socket, {"cmd": "reload"}, timeout=120.0)
    except DaemonNotRunning as err:
        print(f"porttrap: {err}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    changed = answer.get("changed") or []
    what = ", ".join(changed) if changed else "nothing changed"
    print(f"reloaded in {answer.get('seconds')} s: {what}")
    for trap in answer.get("traps", {}).get("skipped", []):
        print(f"  trap skipped: {trap['proto']}/{trap['port']} on {trap['address']}: "
              f"{trap['reason']}")  # fmt: skip
    return 0


def check_config(args: argparse.Namespace) -> int:
    cfg = _config(args)
    source = cfg.source or "built-in defaults"
    traps = "; ".join(_traps_summary(cfg, proto) for proto in Proto)
    allowed = len(cfg.allow.networks) + len(cfg.allow.patterns)
    print(f"{source}: OK ({traps}; {allowed} allow-list entries, backend {cfg.firewall.backend})")
    for line in _response_summary(cfg):
        print(f"  {line}")
    return 0


def _response_summary(cfg: Config) -> list[str]:
    """What differs from "ban, log to stderr, no metrics": respond, actions, log outputs and
    the metrics endpoint, a line each."""
    lines = []
    responds = {proto: cfg.ban.respond(proto) for proto in Proto}
    if set(responds.values()) != {Respond.BAN}:
        lines.append("respond: " + ", ".join(f"{p.value} {r}" for p, r in responds.items()))
    actions = cfg.actions
    done = [f"{len(actions.commands)} command(s)"] if actions.commands else []
    done += [f"hosts.deny lines in {actions.hosts_deny.file}"] if actions.hosts_deny else []
    done += [f"{len(actions.webhooks)} webhook(s)"] if actions.webhooks else []
    done += [f"{len(actions.notify)} notification(s)"] if actions.notify else []
    if done:
        lines.append("actions: " + ", ".join(done))
    if cfg.log.outputs != LogConfig().outputs:
        lines.append("log: " + ", ".join(f"{o.to} ({o.format})" for o in cfg.log.outputs))
    if cfg.metrics.listen is not None:
        lines.append(f"metrics: {cfg.metrics.url}")
        if warning := exposure_warning(cfg.metrics.listen):
            lines.append(f"warning: {warning}")
    if (fleet := cfg.fleet) is not None:
        shares = "publishes and accepts" if fleet.publish and fleet.accept else (
            "publishes" if fleet.publish else "accepts" if fleet.accept else "neither publishes "
            "nor accepts")  # fmt: skip
        lines.append(f"fleet: {fleet.url} as {fleet.name or 'this host name'}; {shares} bans")
        if warning := tls_warning(fleet.url):
            lines.append(f"warning: {warning}")
    return lines


def _traps_summary(cfg: Config, proto: Proto) -> str:
    """'TCP: 4 trap ports, connect mode' or 'UDP: advanced mode, 65531 ports watched'."""
    mode = cfg.modes.of(proto)
    name = proto.value.upper()
    if mode is TrapMode.ADVANCED:
        watched = cfg.modes.watched(proto) - cfg.modes.excluded(proto)
        return f"{name}: advanced mode, {len(watched)} ports watched unless served"
    count = sum(1 for t in cfg.traps if t.proto is proto)
    return f"{name}: {count} trap ports, {mode} mode"


def status(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        answer: dict[str, Any] = control.request(cfg.control_socket, {"cmd": "status"})
        answer.pop("ok", None)
    except DaemonNotRunning:
        answer = {"running": False, "bans": _stored_counts(cfg)}
    if args.json:
        output.emit_json(answer)
    else:
        print(output.status_text(answer))
    return 0 if answer.get("running") else EXIT_NOT_RUNNING


def _stored_counts(cfg: Config) -> dict[str, int] | None:
    """The bans the store holds, for `status` while the daemon is stopped; None before
    porttrap has ever run (no database yet)."""
    try:
        store = open_store(cfg, readonly=True)
    except NoDatabase:
        return None
    try:
        active, permanent = store.counts(SystemClock().now())
    finally:
        store.close()
    return {"active": active, "permanent": permanent}


def bans(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.fleet:
        from porttrap.cli import fleetview  # psycopg: only for the fleet

        return fleetview.bans(cfg, args.json)
    store = open_store(cfg, readonly=True)
    try:
        active = store.active_bans(SystemClock().now())
    finally:
        store.close()
    active.sort(key=lambda b: b.banned_at, reverse=True)
    if args.json:
        output.emit_json([ban_json(b) for b in active])
    else:
        print(output.bans_table(active))
    return 0


def history(args: argparse.Namespace) -> int:
    cfg = _config(args)
    target = _parse_target(args.address) if args.address else None
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.fleet:
        if target is None:
            raise UsageError("history --fleet needs an ADDRESS")
        from porttrap.cli import fleetview  # psycopg: only for the fleet

        return fleetview.history(cfg, target, args.limit, args.json)
    store = open_store(cfg, readonly=True)
    try:
        entries = store.history(target, args.limit)
    finally:
        store.close()
    if args.json:
        output.emit_json([output.history_json(e) for e in entries])
    else:
        print(output.history_table(entries))
    return 0


def ban(args: argparse.Namespace) -> int:
    cfg = _config(args)
    request: dict[str, Any] = {"cmd": "ban", "targets": _gather_targets(args)}
    if args.duration:
        request["for"] = _duration(args.duration)
    request["permanent"] = args.permanent
    if args.reason is not None:
        request["reason"] = args.reason
    answer = control.request(cfg.control_socket, request)
    for item in answer["bans"]:
        until = item["expires_at"] or "permanent"
        print(f"banned {item['address']} until {until} (ban #{item['ban_count']})")
    if answer["count"] > len(answer["bans"]):
        print(f"... and {answer['count'] - len(answer['bans'])} more")
    return _not_recorded(answer, "the ban is in the kernel")


def _not_recorded(answer: dict[str, Any], done: str) -> int:
    """0 when the store holds what the daemon did; else a warning and EXIT_NOT_RECORDED."""
    if answer.get("recorded", True):
        return 0
    print(
        f"porttrap: warning: {done} but not yet on disk: the store cannot write "
        f"({answer.get('store_error')}); the daemon tries again until it can (see `porttrap "
        "status`): free space in (or fix) the state_dir",
        file=sys.stderr,
    )
    return EXIT_NOT_RECORDED


def unban(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.all:
        request: dict[str, Any] = {"cmd": "unban", "all": _confirm_all(args)}
    else:
        request = {"cmd": "unban", "targets": _gather_targets(args), "fleet": args.fleet}
    answer = control.request(cfg.control_socket, request)
    held_by: dict[str, str] = answer.get("held_by", {})
    _print_unbans(answer, held_by, everything=args.all)
    if args.fleet:
        print("published: every host of the fleet lifts its bans on these too")
    if not answer.get("recorded", True):
        return _not_recorded(answer, "the unban is in the kernel (a restart before the disk "
                             "takes it would put the ban back)")  # fmt: skip
    return EXIT_REFUSED if held_by else 0


def _print_unbans(answer: dict[str, Any], held_by: dict[str, str], everything: bool) -> None:
    """A line per target; an address inside a banned network says which one holds it and
    how to lift that."""
    was = set(answer["were_banned"])
    for address in answer["unbanned"]:
        if address in was:
            print(f"unbanned {address}")
        elif address in held_by:
            print(_held(address, held_by[address], answer.get("prefix_bans", {})))
        else:
            print(f"{address} was not banned")
    count = answer.get("count", len(answer["unbanned"]))
    if count > len(answer["unbanned"]):
        print(f"... and {count - len(answer['unbanned'])} more")
    if everything:
        print(f"lifted {count} ban(s)" if count else "nothing to lift: there were no active bans")


def _held(address: str, net: str, prefix_bans: dict[str, str]) -> str:
    """What to do about an address a network ban holds: lift that network; for a prefix ban
    (its whole prefix, every CIDR its carve-outs left), or leave the address out of it."""
    if net not in prefix_bans:
        return (f"{address} is still banned: it is inside the ban on {net}, which holds it; "
                f"lift that with `porttrap unban {net}` (and ban the rest again)")  # fmt: skip
    return (f"{address} is still banned: it is inside the ban on {net} ({prefix_bans[net]}), "
            f"which holds it; lift it all with `porttrap unban {net}`, or add "
            f"{address} to [allow] addresses and reload to leave it out of the ban")  # fmt: skip


def _confirm_all(args: argparse.Namespace) -> bool:
    """`unban --all` lifts every ban: with --yes, or a "yes" typed at a terminal. Without a
    terminal and without --yes it is refused (a script must say it means it)."""
    if args.addresses or args.file or args.fleet:
        raise UsageError("unban --all takes no ADDRESS, --file nor --fleet")
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise Refused("unban --all lifts every active ban: add --yes to confirm (stdin is no "
                      "terminal to ask on)")  # fmt: skip
    try:
        answer = input("Lift every active ban of this host? Type 'yes' to confirm: ")
    except EOFError:  # Ctrl-D at the prompt: no "yes"
        answer = ""
    if answer.strip().lower() != "yes":
        raise Refused("unban --all: not confirmed, nothing lifted")
    return True


def flush(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if control.ping(cfg.control_socket):
        raise Refused(
            "porttrap is running: stop it first (or run it with --flush-on-exit); "
            "a running daemon would put its bans back"
        )
    backend = make_backend(cfg.firewall.backend, cfg.firewall.table, SystemClock())
    info = registry.get(backend.name)
    with claim(backend.name, cfg.firewall.table):  # a daemon of another state_dir owns it?
        held = _kernel_bans(backend) if info.in_kernel else None
        backend.teardown()
    what = info.removes(cfg.firewall.table)
    if held is None:
        print(f"nothing to remove: {what} not in the kernel (bans stay in the database)")
    else:
        print(f"removed {what}, holding {held} ban(s) (bans stay in the database)")
    return 0


def _kernel_bans(backend: FirewallBackend) -> int | None:
    """How many bans porttrap's objects in the kernel hold; None when none of them is there."""
    if backend.present():
        return backend.inspect(count=True).count or 0
    entries = backend.entries()  # what is left of a half-removed ruleset (ipset's sets)
    return len(entries) if entries else None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except TooLong as err:
        raise UsageError(f"--for: {err} (--permanent)") from err
    except ValueError as err:
        raise UsageError(f"--for: {err}") from err


def _parse_target(text: str) -> IPNetwork:
    try:
        return parse_target(text)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _gather_targets(args: argparse.Namespace) -> list[str]:
    """Addresses from the command line and from --file (checked here, so that an error names
    its line); the daemon validates them all again."""
    items = list(args.addresses)
    if args.file:
        items += _read_list(args.file)
    if not items:
        raise UsageError("give at least one ADDRESS, or --file FILE ('-' for stdin)")
    return items


def _read_list(name: str) -> list[str]:
    """The addresses of FILE, one a line ('#' starts a comment); every bad line is reported
    as FILE:LINE (up to MAX_FILE_PROBLEMS), and none is sent."""
    shown = "<stdin>" if name == "-" else name
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{shown}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UsageError(f"cannot read {shown}: {err.strerror}") from None
    items, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            parse_target(item)
        except ValueError as err:
            problems.append(f"{shown}:{number}: {err}")
        items.append(item)
    if problems:
        more = len(problems) - MAX_FILE_PROBLEMS
        listed = problems[:MAX_FILE_PROBLEMS] + ([f"... and {more} more"] if more > 0 else [])
        raise UsageError("; ".join(listed) + " (nothing was sent: fix these lines)")
    return items
