"""PortSentry's responses besides the block (KILL_HOSTS_DENY, KILL_RUN_CMD, KILL_RUN_CMD_FIRST and
a KILL_ROUTE that is not a block) as porttrap actions, and the context every part of a
PortSentry import shares: the parsed file, the notes, and where each setting came from."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from porttrap.config.legacy import tomlout
from porttrap.config.legacy.notes import Note
from porttrap.config.legacy.portsentry_files import Conf, Setting

# Programs whose KILL_ROUTE blocks the host: porttrap's own firewall ban replaces them.
_BLOCKERS = {
    "route",
    "ip",
    "iptables",
    "ip6tables",
    "iptables-legacy",
    "iptables-nft",
    "ipchains",
    "ipfwadm",
    "ipfw",
    "pfctl",
    "ipf",
    "nft",
    "nftables",
    "ipset",
    "firewall-cmd",
    "ufw",
}
_SHELL_SYNTAX = set("|&;<>()$`\\'\"*?[]{}~#!\n")
_PLACEHOLDER = re.compile(r"\$(TARGET|PORT|MODE)\$")
_OTHER_PLACEHOLDER = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*\$")
_NUMBER = re.compile(r"\s*([+-]?[0-9]{1,18})")  # digits past the 18th: C's atoi overflowed


@dataclass
class Context:
    """The parsed portsentry.conf, the notes so far, and the settings looked at."""

    conf: Conf
    notes: list[Note]
    used: set[str] = field(default_factory=set)

    def note(self, key: str, message: str, setting: Setting | None = None) -> None:
        line = setting.line if setting else None
        self.notes.append(Note(self.conf.name, line, key, message))

    def setting(self, key: str) -> Setting | None:
        self.used.add(key)
        return self.conf.get(key)

    def where(self, key: str) -> str:
        found = self.conf.get(key)
        name = Path(self.conf.name).name
        return f"{name}:{found.line}: {key}" if found else f"{key} not set"

    def actions(self, responds: set[str]) -> list[str]:
        """The actions, given what the watched protocols respond with."""
        lines = self._hosts_deny("ban" in responds, "command" in responds)
        lines += self._kill_route("ban" in responds)
        lines += self._run_cmd(responds)
        return lines

    def _hosts_deny(self, blocking: bool, commanding: bool) -> list[str]:
        found = self.setting("KILL_HOSTS_DENY")
        if found is None:
            return []
        if not blocking:
            self.note(
                "KILL_HOSTS_DENY",
                'PortSentry used it only with BLOCK_x="1", which no '
                "watched protocol has: not carried over",
                found,
            )
            return []
        if "$TARGET$" not in found.value:
            self.note(
                "KILL_HOSTS_DENY",
                "has no $TARGET$, so PortSentry skipped it: not carried over",
                found,
            )
            return []
        if commanding:
            self.note(
                "KILL_HOSTS_DENY",
                'PortSentry wrote it for BLOCK_x="1" only; porttrap writes it on every ban, '
                'those of the protocol with BLOCK_x="2" (respond "command") too',
                found,
            )
        lines = ["", f"[actions.hosts_deny]  # {self.where('KILL_HOSTS_DENY')}"]
        lines += [f"line = {tomlout.string(found.value)}", 'file = "/etc/hosts.deny"']
        lines += tomlout.comment(
            "PortSentry never removed its lines, and every ban here is permanent, so a line "
            "stays as long as its ban: until 'porttrap unban', which then lifts it too."
        )
        lines.append("keep = false")
        self.note(
            "KILL_HOSTS_DENY",
            "PortSentry never removed its lines; porttrap removes a "
            "ban's line when the ban is lifted (keep = false), which with every ban "
            "permanent happens only at 'porttrap unban'",
            found,
        )
        return lines

    def _kill_route(self, blocking: bool) -> list[str]:
        found = self.setting("KILL_ROUTE")
        if found is None:
            return []
        if not blocking:
            self.note(
                "KILL_ROUTE",
                'PortSentry ran it only with BLOCK_x="1", which no '
                "watched protocol has: not carried over",
                found,
            )
            return []
        words = found.value.replace("|", " ").split()
        if any(posixpath.basename(word) in _BLOCKERS for word in words):
            target = re.search(r"-j\s+(\S+)", found.value)
            how = (
                f"; it answered with -j {target.group(1)}, porttrap drops"
                if target and target.group(1) not in ("DROP", "DENY")
                else ""
            )
            self.note(
                "KILL_ROUTE",
                "replaced by porttrap's own firewall ban (an nftables set "
                f"before every other rule){how}: not carried over",
                found,
            )
            return []
        self.note(
            "KILL_ROUTE",
            "not a route or packet filter command porttrap knows: carried "
            "over as a command run on every ban; remove it if porttrap's own ban makes it "
            "redundant",
            found,
        )
        return self._command(found, first=False)

    def _run_cmd(self, responds: set[str]) -> list[str]:
        found = self.setting("KILL_RUN_CMD")
        first = self.setting("KILL_RUN_CMD_FIRST")
        if found is None:
            if first is not None:
                self.note(
                    "KILL_RUN_CMD_FIRST", "without KILL_RUN_CMD: nothing to carry over", first
                )
            return []
        if not responds & {"ban", "command"}:
            self.note(
                "KILL_RUN_CMD",
                'PortSentry ran it only with BLOCK_x="1" or "2", which '
                "no watched protocol has: not carried over",
                found,
            )
            return []
        before = first is not None and number(first.value) == 1 and "ban" in responds
        return self._command(found, first=before)

    def _command(self, found: Setting, first: bool) -> list[str]:
        text = found.value.strip()
        odd = _OTHER_PLACEHOLDER.findall(_PLACEHOLDER.sub("", text))
        if odd:
            self.note(
                found.key,
                f"{', '.join(odd)} would be read as porttrap placeholders, "
                "which they are not: not carried over; add it by hand with ${NAME}$",
                found,
            )
            return []
        lines = ["", f"[[actions.command]]  # {self.where(found.key)}"]
        lines.append('on = ["ban", "permanent-ban"]')
        plain = _PLACEHOLDER.sub("", text)
        words = text.split()
        if _SHELL_SYNTAX & set(plain) or "=" in words[0]:
            lines += [f"run = {tomlout.string(text)}", "shell = true  # it uses shell syntax"]
        else:
            if "/" in words[0] and not words[0].startswith("/"):
                words[0] = posixpath.normpath("/" + words[0])
                self.note(
                    found.key, f"a relative program, which PortSentry ran from /: {words[0]}", found
                )
            lines.append(f"run = {tomlout.strings(words)}")
        if first:
            lines.append('first = true  # KILL_RUN_CMD_FIRST="1": before the ban')
        lines.append('timeout = "30s"  # PortSentry waited for it, however long it took')
        return lines


def number(text: str) -> int:
    """C's atoi: the leading number, 0 when there is none."""
    match = _NUMBER.match(text)
    return int(match.group(1)) if match else 0
