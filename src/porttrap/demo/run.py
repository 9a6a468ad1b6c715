"""One demo from start to end: checks, stale leftovers, the lab, the story, the cleanup.

SIGINT and SIGTERM raise `Interrupted` while the demo runs, so that the cleanup runs as for any
other ending; once the cleanup has begun they are only remembered, so that a second Ctrl-C
cannot cut it short (every step of it is bounded in time).
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

from porttrap.clock import Clock
from porttrap.demo import lab as lab_mod
from porttrap.demo import names, plan
from porttrap.demo.script import DemoFailed, Findings, Narrator, Story
from porttrap.errors import PorttrapError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
NETNS_DIR = Path("/run/netns")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while the demo ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Guard:
    """Turns SIGINT and SIGTERM into `Interrupted` while armed; disarmed, only remembers them."""

    def __init__(self) -> None:
        self.armed = True
        self.pending: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            raise Interrupted(signum)
        self.pending = signum

    def disarm(self) -> None:
        self.armed = False


@contextmanager
def guarded() -> Iterator[Guard]:
    """A `Guard` on SIGINT and SIGTERM for the block; the old handlers afterwards."""
    guard = Guard()
    previous = {sig: signal.signal(sig, guard.handle) for sig in SIGNALS}
    try:
        yield guard
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(settings: plan.Plan, say: Narrator, clock: Clock) -> Findings:
    """The whole demo. Raises PorttrapError when this machine cannot run it, DemoFailed when
    a step failed, Interrupted on SIGINT/SIGTERM; in every case after cleaning up."""
    missing = lab_mod.requirements()
    if missing:
        raise PorttrapError("porttrap demo cannot run here: " + "; ".join(missing))
    owner = names.process(os.getpid())
    assert owner is not None  # this very process
    with guarded() as guard:
        try:
            story = _run(owner, settings, say, clock, guard)
        except BaseException:
            _account(owner, say)
            raise
        left = _account(owner, say)
        if left:
            raise DemoFailed(f"the cleanup left {', '.join(left)} behind")
        if guard.pending is not None:
            raise Interrupted(guard.pending)
    return story.found


def _account(owner: names.Owner, say: Narrator) -> list[str]:
    """What of this demo is still there after the cleanup (nothing, when all went well)."""
    paths = [NETNS_DIR / names.netns_name(owner, role) for role in (names.HOST, names.SCANNER)]
    paths += Path(tempfile.gettempdir()).glob(f"{owner.tag}*")
    left = [str(path) for path in paths if path.exists()]
    if left:
        say.bad(f"the cleanup left {', '.join(left)} behind")
    else:
        say.good("cleaned up: no namespace, process or file of this demo is left")
    return left


def _run(
    owner: names.Owner, settings: plan.Plan, say: Narrator, clock: Clock, guard: Guard
) -> Story:
    with ExitStack() as cleanup:  # undoes everything below, newest first
        try:
            say.section("setting up (nothing outside the demo's own namespaces is touched)")
            if not lab_mod.remove_stale(say.say):
                say.say("no leftovers of an earlier demo")
            lab = lab_mod.Lab(owner, cleanup, say.say)
            lab.build(settings)
            _tell_lab(lab, say)
            story = Story(lab, settings, say, clock)
            _tell(story)
        finally:  # before the ExitStack's cleanup: from here on a signal cannot cut it short
            guard.disarm()
            say.section("cleaning up")
    return story


def _tell(story: Story) -> None:
    try:
        story.run()
    except DemoFailed as err:
        story.say.bad(str(err))
        story.say.output("the daemon's last log lines:\n" + story.log.tail())
        raise
    story.summary()


def _tell_lab(lab: lab_mod.Lab, say: Narrator) -> None:
    say.say(f"network namespace {lab.host}: the protected host, "
            f"{plan.HOST4} and {plan.HOST6}")  # fmt: skip
    say.say(f"network namespace {lab.scanner}: the scanner, "
            f"{plan.SCANNER4} and {plan.SCANNER6}")  # fmt: skip
    say.say(f"joined by a veth pair; config, database and logs in {lab.workdir}")
