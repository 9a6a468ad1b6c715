"""The hold of a new source's first SYN (porttrap.core.hold) as playbooks: held SYNs in, the
verdicts, releases and hidden-probe records out, on the playbook's clock. First the hold on
its own, then inside the daemon's core (a trap hit there drops the held SYN)."""

from __future__ import annotations

import logging
from ipaddress import ip_address

import pytest

from porttrap.config.loader import load_text
from porttrap.core.commands import (
    Command,
    FlushSoon,
    Log,
    PrepareReload,
    RecordHidden,
    RecordHits,
    Release,
    Schedule,
    Setup,
    StopHolding,
    Verdict,
)
from porttrap.core.core import Core
from porttrap.core.events import (
    Event,
    HitSeen,
    HoldEnded,
    ReloadCommitted,
    ReloadPrepared,
    ReloadRequested,
    Stopping,
    SynHeld,
)
from porttrap.core.hold import BLOCK_LINGER, HoldFigures, Holds
from porttrap.model import Hit, IPAddress, Outcome, Proto
from porttrap.testing.playbook import T0, Playbook, later

HOLD = 0.005
SCANNER = ip_address("203.0.113.7")
CLIENT = ip_address("2001:db8::7")
HOST = ip_address("192.0.2.1")


def syn(packet_id: int, source: IPAddress = SCANNER, port: int = 22, at: float = T0) -> SynHeld:
    return SynHeld(source, port, packet_id, at)


def ended(packet_id: int, at: float = T0) -> HoldEnded:
    return HoldEnded(packet_id, at)


class Hold:
    """Holds as a playbook's core: a trap hit is fed as `HitSeen`, judged BANNED unless the
    test says otherwise (the policy's part, tested elsewhere)."""

    def __init__(self, outcome: Outcome = Outcome.BANNED) -> None:
        self.holds = Holds(HOLD, memory=3600)
        self.outcome = outcome

    def handle(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, SynHeld):
            return self.holds.held(event, now)
        if isinstance(event, HoldEnded):
            return self.holds.ended(event, now)
        if isinstance(event, HitSeen):
            return self.holds.touched(event.hit.source, event.hit.kind, self.outcome, now)
        assert isinstance(event, Stopping)
        return self.holds.stopping()


def trap_hit(source: IPAddress = SCANNER, port: int = 23, kind: str = "syn") -> HitSeen:
    return HitSeen(Hit(T0, source, 40000, HOST, port, Proto.TCP, kind))


def book(outcome: Outcome = Outcome.BANNED) -> Playbook:
    return Playbook(Hold(outcome))


def test_a_held_syn_waits_out_the_hold_then_passes_and_its_source_is_released() -> None:
    assert (
        book()
        >> syn(1)
        << Schedule(HOLD, ended(1))
        >> later(HOLD)
        >> ended(1)
        << Release(SCANNER, 1)
    )


def test_the_hold_counts_from_when_the_syn_was_queued_not_when_it_is_read() -> None:
    waited: float = pytest.approx(HOLD - 0.003, abs=1e-6)  # type: ignore[assignment]
    assert book() >> later(0.003) >> syn(1) << Schedule(waited, ended(1))  # floats 2e-7 apart
    assert book() >> later(1.0) >> syn(1) << Schedule(0.0, ended(1))


def test_a_trap_touched_during_the_hold_drops_the_syn_and_records_a_hidden_probe() -> None:
    assert (
        book()
        >> syn(1, port=22)
        << Schedule(HOLD, ended(1))
        >> later(0.001)
        >> trap_hit(kind="syn")
        << Verdict(1, accept=False)
        << RecordHidden(SCANNER, 22, "syn", T0)
        >> later(HOLD)
        >> ended(1)  # answered already: nothing more
    )


def test_every_held_syn_of_the_source_is_dropped_and_only_its_own() -> None:
    other = ip_address("198.51.100.9")
    assert (
        book()
        >> syn(1, port=22)
        << Schedule(HOLD, ended(1))
        >> syn(2, port=443)
        << Schedule(HOLD, ended(2))
        >> syn(3, source=other, port=80)
        << Schedule(HOLD, ended(3))
        >> trap_hit(kind="fin")
        << [Verdict(1, accept=False), RecordHidden(SCANNER, 22, "fin", T0)]
        << [Verdict(2, accept=False), RecordHidden(SCANNER, 443, "fin", T0)]
        >> ended(3)
        << Release(other, 3)
    )


def test_a_released_source_is_answered_at_once_and_released_again() -> None:
    assert (
        book()
        >> syn(1)
        << Schedule(HOLD, ended(1))
        >> ended(1)
        << Release(SCANNER, 1)
        >> syn(2)  # queued before the kernel's released set had it (or a rebuild emptied it)
        << Release(SCANNER, 2)  # not held: released again, then through the rules once more
    )


def test_a_released_source_is_forgotten_after_the_memory() -> None:
    holds = Holds(HOLD, memory=60)
    holds.held(syn(1), T0)
    holds.ended(ended(1), T0)
    assert holds.held(syn(2, at=T0 + 59), T0 + 59) == [Release(SCANNER, 2)]
    assert holds.held(syn(3, at=T0 + 61), T0 + 61) == [Schedule(HOLD, ended(3, T0 + 61))]
    figures = HoldFigures(seen=3, held=1, released=1, hidden=0, remembered=0, blocked=0)
    assert holds.figures() == figures


def test_a_syn_of_a_source_blocked_moments_ago_is_dropped_at_once() -> None:
    assert (
        book()
        >> trap_hit(kind="xmas")
        >> later(BLOCK_LINGER / 2)
        >> syn(1, at=T0 + BLOCK_LINGER / 2)
        << Verdict(1, accept=False)
        << RecordHidden(SCANNER, 22, "xmas", T0 + BLOCK_LINGER / 2)
        >> later(BLOCK_LINGER)  # the kernel's ban holds it by now: the hold is back to normal
        >> syn(2, at=T0 + 1.5 * BLOCK_LINGER)
        << Schedule(HOLD, ended(2, T0 + 1.5 * BLOCK_LINGER))
    )


def test_a_hit_below_the_ban_trigger_drops_held_syns_and_those_read_just_after() -> None:
    """The kernel blocks a source at its first trap packet, whatever the policy makes of it:
    a SYN of it read after the report was queued before the trap packet (both sockets were
    ready in one turn of the loop, the report's read first). Seen with 5 ms holds."""
    assert (
        book(Outcome.COUNTED)
        >> trap_hit()
        >> syn(1)
        << [Verdict(1, accept=False), RecordHidden(SCANNER, 22, "syn", T0)]
        >> syn(2)
        << [Verdict(2, accept=False), RecordHidden(SCANNER, 22, "syn", T0)]
        >> later(BLOCK_LINGER)
        >> syn(3, at=T0 + BLOCK_LINGER)
        << Schedule(HOLD, ended(3, T0 + BLOCK_LINGER))
    )


def test_a_hit_in_the_name_of_a_protected_source_leaves_its_held_syn_alone() -> None:
    for outcome in (Outcome.ALLOWED, Outcome.CLIENT, Outcome.SESSION, Outcome.OWN_ADDRESS):
        assert (
            book(outcome)
            >> syn(1)
            << Schedule(HOLD, ended(1))
            >> trap_hit()
            >> ended(1)
            << Release(SCANNER, 1)
        )


def test_a_trap_hit_forgets_the_release() -> None:
    assert (
        book(Outcome.COUNTED)
        >> syn(1)
        << Schedule(HOLD, ended(1))
        >> ended(1)
        << Release(SCANNER, 1)
        >> trap_hit()
        >> later(BLOCK_LINGER)
        >> syn(2, at=T0 + BLOCK_LINGER)
        << Schedule(HOLD, ended(2, T0 + BLOCK_LINGER))
    )


def test_a_reused_packet_id_is_not_answered_by_the_old_hold() -> None:
    assert (
        book()
        >> syn(1, at=T0)
        << Schedule(HOLD, ended(1, T0))
        >> trap_hit()
        << [Verdict(1, accept=False), RecordHidden(SCANNER, 22, "syn", T0)]
        >> later(0.001)
        >> syn(1, source=CLIENT, at=T0 + 0.001)  # the queue was bound again: ids restart
        << Schedule(HOLD, ended(1, T0 + 0.001))
        >> ended(1, T0)  # the old hold's end: not this SYN's
        >> later(HOLD)
        >> ended(1, T0 + 0.001)
        << Release(CLIENT, 1)
    )


def test_a_reused_packet_id_replaces_a_syn_the_kernel_dropped_at_the_rebind() -> None:
    assert (
        book()
        >> syn(1, at=T0)
        << Schedule(HOLD, ended(1, T0))
        >> syn(1, source=CLIENT, at=T0)  # the old SYN went with the old queue
        << Schedule(HOLD, ended(1, T0))
        >> trap_hit()  # the scanner's SYN is no longer held: nothing to drop
        >> ended(1, T0)
        << Release(CLIENT, 1)
    )


def test_blocked_sources_are_forgotten_after_the_linger_even_without_syns() -> None:
    holds = Holds(HOLD)
    for number in range(100):
        source = ip_address(f"203.0.113.{number}")
        holds.touched(source, "syn", Outcome.BANNED, T0 + number * BLOCK_LINGER / 4)
    assert holds.figures().blocked == 4  # those of the last linger: the rest are gone


def test_stopping_lets_every_held_syn_through() -> None:
    assert (
        book()
        >> syn(1)
        << Schedule(HOLD, ended(1))
        >> syn(2, source=CLIENT)
        << Schedule(HOLD, ended(2))
        >> Stopping()
        << [Verdict(1, accept=True), Verdict(2, accept=True)]
        >> ended(1)
    )


def test_the_figures_count_what_the_hold_did() -> None:
    holds = Holds(HOLD)
    holds.held(syn(1), T0)
    holds.held(syn(2, source=CLIENT), T0)
    holds.ended(ended(2), T0 + HOLD)
    holds.touched(SCANNER, "syn", Outcome.BANNED, T0)
    holds.counted(5)  # the kernel queued 5 so far: 3 never reached the daemon
    holds.counted(1)  # the table was rebuilt: its counter started again
    figures = holds.figures()
    assert figures == HoldFigures(6, 2, held=0, released=1, hidden=1, remembered=1, blocked=1)
    assert figures.failed_open == 4


# -- inside the daemon's core --------------------------------------------------------------------

# the hold on, in stealth mode with one trap: SYNs are held only then
CONFIG = '[traps]\nmode = "stealth"\ntcp = ["23"]\n[kernel]\nhold = "5ms"\n'
ADVANCED = '[traps]\nmode = "advanced"\n[kernel]\n'


def test_in_the_core_a_trap_hit_drops_the_held_syn_before_the_ban_goes_out() -> None:
    core = Core(load_text(CONFIG, None), T0)
    hold = core.holds.hold
    assert (
        Playbook(core, ignore=[RecordHits])
        >> syn(1)
        << Schedule(hold, ended(1))
        >> trap_hit(kind="connect")
        << Verdict(1, accept=False)
        << FlushSoon()
    )


def test_in_the_core_a_hidden_probe_is_logged() -> None:
    core = Core(load_text(CONFIG, None), T0)
    core.handle(syn(1), T0)
    hidden = Log("hidden", logging.INFO, {"src": SCANNER, "port": 22, "trap": "connect"})
    assert hidden in core.handle(trap_hit(kind="connect"), T0)


def test_in_the_core_a_hidden_probe_is_stored_as_a_hit_of_its_own_outcome() -> None:
    """`history` shows it: the SYN to the served port, dropped, outcome `hidden`."""
    core = Core(load_text(CONFIG, None), T0)
    core.handle(syn(1), T0)
    core.handle(trap_hit(kind="connect"), T0)
    stored = [c for c in core.handle(Stopping(), T0) if isinstance(c, RecordHits)]
    hidden = [(hit, outcome) for c in stored for hit, outcome in c.hits]
    expected = Hit(T0, SCANNER, 0, ip_address("0.0.0.0"), 22, Proto.TCP, "syn")
    assert (expected, Outcome.HIDDEN) in hidden


def test_in_the_core_the_hold_takes_its_settings_from_the_config_and_a_reload() -> None:
    core = Core(load_text(ADVANCED + 'hold = "20ms"\n', None), T0)
    assert (core.holds.hold, core.holds.memory) == (0.02, 3600.0)
    assert core.hold_figures() is not None
    off = load_text('[traps]\ntcp = ["23"]\n', None)  # connect mode: no kernel sensor
    assert Core(off, T0).hold_figures() is None  # off: no figures


def test_in_the_core_stopping_answers_the_held_syns_first() -> None:
    core = Core(load_text(CONFIG, None), T0)
    playbook = Playbook(core, ignore=[RecordHits]) >> syn(1) << Schedule(core.holds.hold, ended(1))
    assert playbook >> Stopping() << Verdict(1, accept=True)


def test_a_reload_that_turns_the_hold_off_lets_the_held_syns_through_and_unbinds() -> None:
    core = Core(load_text(ADVANCED + 'hold = "20ms"\n', None), T0)
    core.handle(syn(1), T0)
    new = load_text(ADVANCED + 'hold = "0"\n', None)
    (prepare,) = core.handle(ReloadRequested(new), T0)
    assert isinstance(prepare, PrepareReload)
    assert any(isinstance(c, Setup) for c in core.handle(ReloadPrepared(), T0))  # rebuilt
    committed = core.handle(ReloadCommitted(), T0)
    assert committed[:2] == [Verdict(1, accept=True), StopHolding()]
    assert core.hold_figures() is None


def test_a_reload_that_changes_the_hold_keeps_the_queue_and_takes_the_new_times() -> None:
    core = Core(load_text(ADVANCED + 'hold = "20ms"\n', None), T0)
    new = load_text(ADVANCED + 'hold = "50ms"\nhold_memory = "10m"\n', None)
    core.handle(ReloadRequested(new), T0)
    core.handle(ReloadPrepared(), T0)
    assert not any(isinstance(c, StopHolding) for c in core.handle(ReloadCommitted(), T0))
    assert (core.holds.hold, core.holds.memory) == (0.05, 600.0)


def test_at_most_limit_released_sources_are_remembered_the_oldest_gives_way() -> None:
    holds = Holds(HOLD, limit=2)
    sources = [ip_address(f"198.51.100.{n}") for n in (1, 2, 3)]
    for packet_id, source in enumerate(sources, 1):
        holds.held(syn(packet_id, source=source), T0)
        holds.ended(ended(packet_id), T0 + HOLD)
    assert holds.figures().remembered == 2
    later = T0 + 1
    assert holds.held(syn(9, sources[2], at=later), later) == [Release(sources[2], 9)]
    assert holds.held(syn(8, sources[0], at=later), later) == [Schedule(HOLD, ended(8, later))]
