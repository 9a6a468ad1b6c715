"""The demo's story: each step done for real, checked, measured, and told to a `Narrator`.

Every wait is bounded; a step that does not see what it should raises `DemoFailed`, which says
which step and what was seen instead. Times are read through `porttrap.clock`: a ban's delay is
from the moment the scanner's handshake with the trap completed to the first listing of the
kernel set that holds the scanner (the set is read every few hundredths of a second, so the
figure is that precise); a ban's length is from that listing to the first one without it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from porttrap.clock import Clock
from porttrap.demo import plan, probes
from porttrap.demo.lab import Lab
from porttrap.errors import PorttrapError

WAIT_START = 30.0  # the daemon's start, CPU-starved CI included
WAIT_SERVICE = 30.0
WAIT_BAN = 30.0  # from a trap's handshake to the ban in the kernel, CPU-starved CI included
WAIT_HIT = 30.0  # a hit recorded, as slow as `porttrap history` can be
BLOCKED_TIMEOUT = 1.0  # a connection that gets no answer this long is dropped (a lost SYN
#   is sent again after 1 s: no answer by then means no SYN-ACK came back)
EXPIRY_SLACK = 30.0  # past a ban's length: deadlines only, each wait ends when its check holds
POLL = 0.01  # between two listings of a kernel set, each ~10 ms itself
POLL_EXPIRY = 0.05
SHOWN_EVENTS = ("event=start", "event=hit", "event=ban", "event=permanent-ban", "event=unban",
                "event=ban-expired")  # fmt: skip


class Narrator(Protocol):
    """Where the story goes: the CLI prints it."""

    def section(self, title: str) -> None:
        """A new step begins."""
        ...

    def say(self, text: str) -> None:
        """What is being done."""
        ...

    def good(self, text: str) -> None:
        """What happened, as it should."""
        ...

    def bad(self, text: str) -> None:
        """What did not."""
        ...

    def output(self, text: str) -> None:
        """What another program printed: porttrap's commands, the daemon's log."""
        ...


class DemoFailed(PorttrapError):
    """A step did not do what it should; the message says which and what was seen."""


@dataclass
class Findings:
    """What the demo measured, for the summary."""

    delays: list[tuple[str, float]] = field(default_factory=list)  # (what, s) touch -> kernel
    lengths: list[tuple[int, float]] = field(default_factory=list)  # (configured s, measured s)
    blocked: float | None = None  # how long the banned scanner's connection got no answer
    permanent: bool = False
    udp_counted: bool = False


class LogTail:
    """The daemon's log, read on from where the last read stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def new_events(self) -> list[str]:
        """The complete lines logged since the last call that show a hit, a ban or a start."""
        text = self.text()
        end = text.rfind("\n") + 1
        lines, self._offset = text[self._offset : end].splitlines(), max(self._offset, end)
        shown = [line for line in lines if any(e in line for e in SHOWN_EVENTS)]
        return [line.removeprefix("level=info ") for line in shown]

    def tail(self, count: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-count:])


class Story:
    """The steps, in order; `run` tells them all and returns what was measured."""

    def __init__(self, lab: Lab, settings: plan.Plan, say: Narrator, clock: Clock) -> None:
        self.lab = lab
        self.plan = settings
        self.say = say
        self.clock = clock
        self.log = LogTail(lab.daemon_log)
        self.found = Findings()
        self._step = 0

    def run(self) -> Findings:
        self.start()
        self.client_reaches_service()
        self.trap_bans(plan.TRAPS_TCP[0], 1)
        self.service_dropped()
        self.ban_runs_out(1)
        self.trap_bans(plan.TRAPS_TCP[1], 2)
        self.ban_runs_out(2)
        self.trap_bans(plan.TRAPS_TCP[2], plan.PERMANENT_AFTER)
        self.udp_probes()
        self.records()
        return self.found

    # -- the steps ------------------------------------------------------------------------

    def start(self) -> None:
        self._section("porttrap starts in the host namespace")
        pid = self.lab.start_service()
        self.say.say(f"a sample service answers on TCP port {plan.SERVICE_PORT} (pid {pid})")
        started = self.clock.monotonic()
        pid = self.lab.start_daemon()
        self.say.say(f"porttrap run -c {self.lab.config} (pid {pid})")
        took = self._wait(self._daemon_started, WAIT_START, "porttrap to start", since=started)
        lengths = ", ".join(f"{self.plan.length(n)} s" for n in range(1, plan.PERMANENT_AFTER))
        traps = [f"tcp/{p}" for p in plan.TRAPS_TCP] + [f"udp/{p}" for p in plan.TRAPS_UDP]
        self.say.good(
            f"porttrap is up after {took:.1f} s: traps {' '.join(traps)}; "
            f"bans of {lengths}, then for good (quadratic escalation)"
        )
        self._show_events()
        self._porttrap("status")

    def client_reaches_service(self) -> None:
        self._section("the scanner reaches the service, like any client")
        seen = self._wait_connect(plan.SCANNER4, plan.HOST4, True, WAIT_SERVICE)
        reply = seen.reply.decode(errors="replace").strip()
        self.say.good(
            f"{plan.SCANNER4} -> {plan.HOST4}:{plan.SERVICE_PORT}: connected in "
            f"{_ms(seen.seconds)}, the service said {reply!r}"
        )

    def trap_bans(self, port: int, n: int) -> None:
        permanent = n >= plan.PERMANENT_AFTER
        titles = {1: "the scanner touches a trap port", 2: "caught again: a longer ban"}
        self._section(titles.get(n, "third time: banned for good"))
        target = f"{plan.HOST4}:{port}"
        self.say.say(f"{plan.SCANNER4} connects to {target}, a port no client has a reason to use")
        touch = self._connect(plan.SCANNER4, plan.HOST4, port, BLOCKED_TIMEOUT)
        if not touch.connected:
            raise DemoFailed(f"the trap on {target} did not answer: {touch.error}")
        self.say.say("the trap completed the handshake (a source that does that is not forged)")
        delay, listing = self._until_listed("ban_v4", plan.SCANNER4, touch.at)
        self.found.delays.append((f"tcp/{port} -> ban {n}", delay))
        self._banned_at = touch.at + delay
        timeout = listing[plan.SCANNER4]
        self._check_length(n, timeout, permanent)
        self._show_events()
        if permanent:
            self.found.permanent = True
            self.say.good(f"ban {n} is permanent: {plan.SCANNER4} in ban_v4 with no timeout "
                          f"(within {_ms(delay)} of the handshake)")  # fmt: skip
            return
        self.say.good(
            f"ban {n}: {plan.SCANNER4} in the kernel set ban_v4 within {_ms(delay)} of the "
            f"handshake, for {timeout} s ({self._formula(n)})"
        )
        if n == 2:  # long enough to read the bans before it ends, on a busy machine too
            self._porttrap("bans")

    def service_dropped(self) -> None:
        self._section("the banned scanner tries the service again")
        seen = self._connect(plan.SCANNER4, plan.HOST4, plan.SERVICE_PORT, BLOCKED_TIMEOUT)
        if seen.connected and plan.SCANNER4 not in self.lab.ban_set("ban_v4"):
            raise DemoFailed(
                f"ban 1 ({self.plan.length(1)} s) was over before the service could be tried: "
                "this machine is too busy for these short bans (without --quick they are longer)"
            )
        if seen.connected:
            raise DemoFailed(f"{plan.SCANNER4} still reached the service while banned")
        self.found.blocked = seen.seconds
        self.say.good(
            f"{plan.SCANNER4} -> {plan.HOST4}:{plan.SERVICE_PORT}: {seen.error} after "
            f"{seen.seconds:.1f} s; its packets are dropped, even to the service it used a "
            "moment ago"
        )

    def ban_runs_out(self, n: int) -> None:
        length = self.plan.length(n)
        self._section(f"ban {n} runs out by itself after {length} s")
        self.say.say("nothing to do: the kernel drops the element when its timeout ends")
        lasted = self._wait(lambda: plan.SCANNER4 not in self.lab.ban_set("ban_v4"),
                            length + EXPIRY_SLACK, f"ban {n} to end in the kernel",
                            since=self._banned_at, poll=POLL_EXPIRY)  # fmt: skip
        self.found.lengths.append((length, lasted))
        seen = self._wait_connect(plan.SCANNER4, plan.HOST4, True, WAIT_SERVICE)
        self.say.good(
            f"the kernel lifted ban {n} after {lasted:.1f} s ({length} s set); "
            f"{plan.SCANNER4} reaches the service again (connected in {_ms(seen.seconds)})"
        )
        self._show_events()

    def udp_probes(self) -> None:
        self._section("UDP probes, over IPv6")
        dest = f"[{plan.HOST6}]:{plan.TRAPS_UDP[0]}"
        self.say.say(f"{plan.SCANNER6} sends one datagram to the trap {dest}")
        probes.send_udp(self.lab.scanner, plan.SCANNER6, plan.HOST6, plan.TRAPS_UDP[0], b"probe")
        outcomes: list[str] = []
        self._wait(lambda: bool(self._hit_outcomes(plan.SCANNER6, outcomes)), WAIT_HIT,
                   "porttrap to record the first UDP hit", poll=0.1)  # fmt: skip
        if outcomes != ["counted"] or plan.SCANNER6 in self.lab.ban_set("ban_v6"):
            raise DemoFailed(f"one datagram banned {plan.SCANNER6} (hit outcome {outcomes}): "
                             "confirm = 2 wants two")  # fmt: skip
        self.found.udp_counted = True
        self.say.good("porttrap history: the hit is recorded as 'counted', no ban: a "
                      "datagram's source can be forged, so porttrap waits for a second one "
                      "([ban] confirm = 2)")  # fmt: skip
        self.say.say(f"{plan.SCANNER6} sends a second datagram")
        probes.send_udp(self.lab.scanner, plan.SCANNER6, plan.HOST6, plan.TRAPS_UDP[0], b"probe")
        delay, _ = self._until_listed("ban_v6", plan.SCANNER6, self.clock.monotonic())
        self.found.delays.append((f"udp/{plan.TRAPS_UDP[0]} -> ban 1 (IPv6)", delay))
        seen = self._connect(plan.SCANNER6, plan.HOST6, plan.SERVICE_PORT, BLOCKED_TIMEOUT)
        if seen.connected:
            raise DemoFailed(f"{plan.SCANNER6} still reached the service while banned")
        self._show_events()
        self.say.good(
            f"banned: {plan.SCANNER6} in the kernel set ban_v6 within {_ms(delay)} of the "
            f"second datagram; the service does not answer it either ({seen.error} after "
            f"{seen.seconds:.1f} s)"
        )

    def records(self) -> None:
        self._section("what porttrap recorded")
        self._porttrap("history", "-n", "20")
        self._porttrap("status")

    def summary(self) -> None:
        """What was measured, one line each."""
        self.say.section("summary")
        found = self.found
        for what, delay in found.delays:
            self.say.good(f"trap to kernel ban: {what} within {_ms(delay)}")
        for n, (length, lasted) in enumerate(found.lengths, start=1):
            self.say.good(f"ban {n}: {length} s set, {lasted:.1f} s measured ({self._formula(n)})")
        if found.permanent:
            self.say.good(f"ban {plan.PERMANENT_AFTER}: permanent")
        if found.blocked is not None:
            self.say.good(f"service while banned: no answer for {found.blocked:.1f} s (dropped)")
        if found.udp_counted:
            self.say.good("UDP: the first datagram counted, the second banned")

    # -- helpers --------------------------------------------------------------------------

    def _section(self, title: str) -> None:
        self._step += 1
        self.say.section(f"{self._step}. {title}")

    def _formula(self, n: int) -> str:
        return f"{self.plan.ban_time} s x {n}^2" if n > 1 else "the first ban's time"

    def _check_length(self, n: int, timeout: int | None, permanent: bool) -> None:
        if permanent and timeout is not None:
            raise DemoFailed(f"ban {n} should be permanent, but has a timeout of {timeout} s")
        if not permanent and timeout is None:
            raise DemoFailed(f"ban {n} should last {self.plan.length(n)} s, but is permanent")

    def _daemon_started(self) -> bool:
        daemon = self.lab.daemon
        if daemon is not None and daemon.poll() is not None:
            raise DemoFailed(f"porttrap run exited with status {daemon.returncode}")
        return "event=start" in self.log.text()

    def _hit_outcomes(self, address: str, into: list[str]) -> list[str]:
        """The outcomes of `address`'s hits, as `porttrap history --json` lists them."""
        code, text = self.lab.porttrap("history", address, "--json")
        if code != 0:
            raise DemoFailed(f"`porttrap history {address} --json` exited {code}: {text}")
        into[:] = [e["outcome"] for e in json.loads(text) if e["what"] == "hit"]
        return into

    def _show_events(self) -> None:
        for line in self.log.new_events():
            self.say.output(f"porttrap logged: {line}")

    def _porttrap(self, *args: str) -> None:
        code, text = self.lab.porttrap(*args)
        self.say.output(f"$ porttrap {' '.join(args)}\n{text}")
        if code != 0:
            raise DemoFailed(f"`porttrap {' '.join(args)}` exited {code}")

    def _until_listed(
        self, set_name: str, address: str, since: float
    ) -> tuple[float, dict[str, int | None]]:
        """Seconds from `since` to the first listing of kernel set `set_name` that holds
        `address`, and that listing."""
        listing: dict[str, int | None] = {}

        def listed() -> bool:
            listing.update(self.lab.ban_set(set_name))
            return address in listing

        what = f"{address} in the kernel set {set_name}"
        return self._wait(listed, WAIT_BAN, what, since=since), listing

    def _connect(self, source: str, dest: str, port: int, timeout: float) -> probes.Connection:
        return probes.connect(self.clock, self.lab.scanner, source, dest, port, timeout=timeout)

    def _wait_connect(
        self, source: str, dest: str, expect: bool, timeout: float
    ) -> probes.Connection:
        """Connect to the service until it answers (or the bound runs out)."""
        seen: list[probes.Connection] = []

        def answered() -> bool:
            seen.append(self._connect(source, dest, plan.SERVICE_PORT, BLOCKED_TIMEOUT))
            return seen[-1].connected is expect

        self._wait(answered, timeout, f"{source} to reach the service on {dest}", poll=0.1)
        return seen[-1]

    def _wait(
        self,
        check: Callable[[], bool],
        timeout: float,
        what: str,
        since: float | None = None,
        poll: float = POLL,
    ) -> float:
        """Poll `check` until it holds, at most `timeout` s; the seconds from `since` (default:
        now) to the first time it held. DemoFailed when it never did."""
        start = self.clock.monotonic() if since is None else since
        deadline = self.clock.monotonic() + timeout
        while True:
            if check():
                return self.clock.monotonic() - start
            if self.clock.monotonic() >= deadline:
                raise DemoFailed(f"gave up after {timeout:g} s waiting for {what}")
            time.sleep(poll)


def _ms(seconds: float) -> str:
    """Seconds as a short reading: '0.4 ms', '28 ms', '1.52 s'."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
