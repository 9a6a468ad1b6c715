"""What `porttrap --help` and `porttrap COMMAND --help` say beyond the one-line summaries:
each command's description and examples, the top-level workflow, files and exit codes; and
the formatter that prints them (prose reflowed, examples as written)."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Collection, Iterator
from typing import NamedTuple


class Formatter(argparse.HelpFormatter):
    """Reflows each paragraph of a description or epilog to the terminal's width, and keeps
    every indented line (examples, tables) and blank line exactly as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(fill(text, width, indent))


def fill(text: str, width: int, indent: str = "") -> list[str]:
    """`text`'s lines: runs of unindented lines joined and wrapped to `width`, indented and
    blank lines as they are; each line prefixed with `indent`."""
    lines: list[str] = []
    paragraph: list[str] = []

    def wrap() -> None:
        if paragraph:
            words = " ".join(paragraph)
            lines.extend(
                textwrap.wrap(words, width, initial_indent=indent, subsequent_indent=indent)
            )
            paragraph.clear()

    for line in text.splitlines():
        if line and not line[0].isspace():
            paragraph.append(line.strip())
            continue
        wrap()
        lines.append(indent + line.rstrip() if line.strip() else "")
    wrap()
    return lines


def _text(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


DESCRIPTION = _text("""
    Trap ports that no legitimate client touches (telnet, RDP, VNC ...) and ban every address
    that touches one in the kernel firewall (nftables, or ipset and iptables): first for a
    while, then longer, then for good. The host's own addresses, loopback and the allow list
    are never banned.
    """)

# (command, example, what it does): a line shows only when its command exists.
_WORKFLOW = (
    ("check-config", "porttrap check-config", "check /etc/porttrap/porttrap.toml"),
    ("install-service", "porttrap install-service", "install and start the service"),
    ("run", "porttrap run", "or run the daemon in the foreground"),
    ("status", "porttrap status", "is it running; traps, hits, bans"),
    ("top", "porttrap top", "live view of hits and bans"),
    ("bans", "porttrap bans", "the active bans"),
    ("history", "porttrap history 203.0.113.7", "what one address did, newest first"),
    ("ban", "porttrap ban 203.0.113.7 --for 1d", "ban by hand, now"),
    ("unban", "porttrap unban 203.0.113.7", "lift a ban"),
    ("reload", "porttrap reload", "apply an edited config, keep bans"),
    ("report", "porttrap report --since 7d -o report.html", "charts, in one HTML file"),
    ("demo", "porttrap demo", "see it work, in network namespaces"),
    ("fleet", "porttrap fleet init --admin-url URL", "share bans with other hosts"),
)

_FILES_AND_EXIT_CODES = _text("""
    files:
      /etc/porttrap/porttrap.toml  the configuration; optional (built-in defaults
                                   without it); -c FILE reads another
      /var/lib/porttrap/           state_dir: porttrap.db (hits and bans), and
                                   control.sock, through which commands talk to
                                   the running daemon

    exit codes:
      0    success
      1    failed: one line on stderr saying what failed and how to fix it
           (-v adds a traceback)
      2    usage: an invalid command line, or an invalid configuration with every
           problem listed (reload: the daemon found it invalid)
      3    not running: the command needs the daemon and none answers
      4    ban, unban: done in the kernel, not yet in the database (its disk is full
           or failing); the daemon keeps trying, see porttrap status
      5    refused: understood and declined (a protected target, a running daemon in
           the way, unban --all unconfirmed, a change that needs a restart)
      130  interrupted (Ctrl-C)

    Each command's exit codes are listed in porttrap's docs/cli.md. -c FILE and -v go before
    or after the command.

    More: porttrap COMMAND --help for each command; every configuration key is described
    in porttrap's docs/configuration.md.
    """)


def finish(parser: argparse.ArgumentParser) -> None:
    """Once every command is added: the top-level epilog (the workflow with the commands
    there are), and `Formatter` for every parser that did not choose a formatter."""
    commands: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands += action.choices
    parser.epilog = top_epilog(commands)
    for each in parsers(parser):
        if each.formatter_class is argparse.HelpFormatter:
            each.formatter_class = Formatter


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and the parsers of its subcommands, at any depth."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from parsers(child)


def top_epilog(commands: Collection[str]) -> str:
    """The epilog of `porttrap --help`: the typical workflow, with the commands this build
    has, then files and exit codes."""
    steps = [f"  {example:<42} {what}" for name, example, what in _WORKFLOW if name in commands]
    tips = []
    if "completion" in commands:
        tips.append("Shell completion: porttrap completion --help.")
    workflow = "typical use, as root:\n" + "\n".join(steps)
    return "\n\n".join([workflow, _FILES_AND_EXIT_CODES, *tips])


class About(NamedTuple):
    """What `porttrap COMMAND --help` says above and below the options."""

    description: str
    epilog: str


def _command(description: str, examples: str) -> About:
    return About(_text(description), "examples:\n" + textwrap.indent(_text(examples), "  "))


COMMANDS = {
    "reload": _command(
        """
        Make the running daemon read its configuration file again and apply it: trap
        sockets (kept when unchanged, so no trap is ever missing), the kernel sensor's rules
        and the ban sets (rebuilt in one transaction, with every active ban), the ban policy,
        the allow list (active bans it now protects are lifted), actions, log outputs and
        metrics. Every ban, the escalation counts and the counters carry over.

        An invalid configuration is refused with every problem listed (exit 2) and the
        daemon goes on with the one it runs. So is (exit 5) a change that needs a restart:
        state_dir,
        [firewall] backend or table, turning the kernel sensor on or off, [kernel]
        nflog_group or queue. SIGHUP does the same (and reopens the log files), and
        `systemctl reload porttrap` runs this command. Needs root and the running daemon
        (exit 3 when none answers).
        """,
        """
          porttrap check-config && porttrap reload
          systemctl reload porttrap
          kill -HUP "$(systemctl show -p MainPID --value porttrap)"
        """,
    ),
    "run": _command(
        """
        Run the daemon in the foreground: set the traps, ban whoever touches them in the
        kernel firewall, keep hits and bans in state_dir/porttrap.db and answer status, ban
        and unban on state_dir/control.sock. Logs go to stderr, or where [log] says.

        Needs root (CAP_NET_ADMIN for the firewall, CAP_NET_BIND_SERVICE for trap ports
        below 1024). An invalid configuration stops it before it touches the kernel (exit
        2), and so (exit 1) do a state_dir another user could change (it must be root's,
        and not writable by group or others, nor may its parents be unless sticky as /tmp)
        and a firewall table another live porttrap in this network namespace owns (the
        error names its PID). At start the active bans of the database go back into the
        kernel. SIGHUP reloads the configuration and reopens the log files. SIGTERM or
        SIGINT stop it; its bans stay in the kernel and expire by themselves unless
        --flush-on-exit.
        """,
        """
          porttrap run                    /etc/porttrap/porttrap.toml, or the defaults
          porttrap run -c test.toml -v    another configuration, debug logging
          porttrap run --flush-on-exit    take every kernel ban away when stopping
        """,
    ),
    "check-config": _command(
        """
        Read the configuration (-c FILE, else /etc/porttrap/porttrap.toml when present, else
        the built-in defaults), check every key, and print a summary: the traps of each
        protocol, the allow list, the firewall backend, and responses, actions and log
        outputs that differ from the defaults.

        An invalid configuration lists every problem at once, each with file, line, key and
        what is expected, and exits 2. Needs neither root nor the daemon; changes nothing.
        """,
        """
          porttrap check-config
          porttrap check-config -c porttrap.toml.new    before moving it into place
        """,
    ),
    "status": _command(
        """
        Ask the running daemon (through state_dir/control.sock) whether it runs, which traps
        are set and which were skipped (a port in use), its hits, active and permanent bans,
        and actions run, failed and dropped.

        When no daemon answers it says so, with the ban counts of the database, and exits 3.
        Needs root: the control socket and the database are root's.
        """,
        """
          porttrap status
          porttrap status --json
          porttrap status > /dev/null || echo "porttrap is not running"
        """,
    ),
    "bans": _command(
        """
        List the active bans, newest first: the address or network, when it was banned, when
        the ban expires ("permanent": never), the how-manieth ban of that address it is, and
        why. --json gives a list of objects with address, banned_at, expires_at (ISO 8601 UTC;
        null when permanent), permanent, ban_count and reason.

        Reads the database (state_dir/porttrap.db) itself, so it works whether or not the
        daemon runs. Needs read access to state_dir (root).

        --fleet lists every host's active bans instead, from the fleet's database (with the
        [fleet] settings of the configuration): which host banned whom, and why.
        """,
        """
          porttrap bans
          porttrap bans --fleet
          porttrap bans --json | jq -r '.[] | select(.permanent) | .address'
        """,
    ),
    "history": _command(
        """
        Hits, bans and lifted bans, newest first: of every address, or only of ADDRESS (an
        address, or a network: everything inside it), with the bans of the networks
        holding it.

        Reads the database (state_dir/porttrap.db) itself, so it works whether or not the
        daemon runs. Needs read access to state_dir (root). --fleet ADDRESS reads the fleet's
        shared log instead: every host's bans and unbans of ADDRESS, the networks holding it
        or the addresses inside it, with the host and the reason.
        """,
        """
          porttrap history                   the 50 newest entries
          porttrap history 203.0.113.7       one address
          porttrap history --fleet 203.0.113.7
          porttrap history 198.51.100.0/24 -n 500 --json
        """,
    ),
    "ban": _command(
        """
        Ban addresses or networks now, through the running daemon (state_dir/control.sock,
        root only). The ban reaches the kernel and the database as any other: without --for
        or --permanent the escalation of [ban] decides how long, counting earlier bans.
        --for takes at most 3650d (10 years); a ban that should never end is --permanent.
        An IPv4-mapped address (::ffff:192.0.2.7) is banned as the IPv4 address it names.

        --reason TEXT is kept with the ban as "manual: TEXT", and shown by bans, history,
        report and --json. -f FILE is checked first: every bad line is named FILE:LINE,
        and nothing is sent (exit 2).

        Refuses (exit 5), and bans nothing, when any target is protected (the host's own
        addresses, loopback, the allow list), or when a network overlaps an active network
        ban (unban that one first). Without a running daemon it says so and exits 3.

        Answers once the database holds the ban. When the database cannot be written (a
        full state_dir), it answers at once: the ban is in the kernel but not yet on disk
        (a warning, exit 4); the daemon tries the write again until it succeeds, and a
        restart meanwhile keeps the ban from the kernel.
        """,
        """
          porttrap ban 203.0.113.7
          porttrap ban 198.51.100.0/24 2001:db8::/32 --for 1d
          porttrap ban --permanent -f blocklist.txt      one address or network a line
          porttrap ban 203.0.113.7 --reason "scanned the mail server"
        """,
    ),
    "unban": _command(
        """
        Lift bans now, through the running daemon (state_dir/control.sock, root only): out
        of the kernel, and a lifted ban no longer counts toward escalation. An address that
        was not banned is reported as such; that is no error. An address inside a banned
        network stays banned: it says which network holds it and how to lift that (exit 5).
        --all lifts every active ban, after a "yes" at a terminal, or with --yes (without a
        terminal and without --yes it is refused, exit 5). Without a running daemon it
        says so and exits 3. In a fleet, the unban is published: the other hosts lift their
        copies of this host's ban (never a ban their own policy decided); with --fleet every
        host lifts every ban on the address, its own included.
        """,
        """
          porttrap unban 203.0.113.7
          porttrap unban --all --yes
          porttrap unban --fleet 203.0.113.7
          porttrap unban -f - < addresses.txt
          porttrap bans --json | jq -r '.[].address' | porttrap unban -f -
        """,
    ),
    "flush": _command(
        """
        Remove porttrap's own objects from the kernel firewall and nothing else: its nftables
        table ([firewall] table, default inet porttrap), or with the ipset backend its sets
        and chains. The bans stay in the database, and go back into the kernel when porttrap
        starts again.

        Says what it removed and how many bans it held, or that there was nothing.
        Needs root, and refuses (exit 5) while the daemon runs (it would put its bans
        back), or while
        any live porttrap in this network namespace owns the table (another state_dir's):
        stop it first.
        """,
        """
          porttrap flush
          systemctl stop porttrap && porttrap flush
        """,
    ),
}
