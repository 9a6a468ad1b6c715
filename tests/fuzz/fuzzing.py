"""What the fuzz tests share: the budget, the limits every parser must keep, the recorded
regression cases, and structure-aware mutators of netlink datagrams.

The budget: each test runs `examples` inputs times PORTTRAP_FUZZ_SCALE (default 1: all of
tests/fuzz took 60-65 s on this 2-CPU machine shared at a load of 5). At scale 1 the inputs are
the same at every run (derandomized): CI is deterministic, and a red CI means the change broke
something, never that the fuzzer was lucky. A campaign draws new inputs at every run:

    PORTTRAP_FUZZ_SCALE=100 .venv/bin/pytest tests/fuzz -p no:cacheprovider --timeout=0

(PORTTRAP_FUZZ_RANDOM=1 draws new inputs at scale 1 too.) Random runs of the CI budget found two
crashes after the fuzzers first went in (config 006, portsentry 005): run a campaign before a
release, and after a change to a parser.

Hypothesis keeps what it found in .hypothesis/ and replays it first on the next run. A crash
becomes a recorded case (see `cases`) beside the others, replayed on every run.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

T = TypeVar("T")

CASES = Path(__file__).parent.parent / "data" / "fuzz"
SCALE = int(os.environ.get("PORTTRAP_FUZZ_SCALE", "1"))
RANDOM = SCALE > 1 or bool(os.environ.get("PORTTRAP_FUZZ_RANDOM"))
HANG_SECONDS = 20  # one parse of one small input; far beyond any real one, even on a busy CPU
MEMORY_BYTES = 256 * 1024 * 1024  # more address space than one parse of a small input may take

settings.register_profile(
    "porttrap-fuzz",
    deadline=None,  # a noisy 2-CPU machine: a slow example is no failure (hangs are, below)
    print_blob=True,  # a failure prints the line that reproduces it
    derandomize=not RANDOM,  # CI: the same inputs every run (see above)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # Under CI, a failure is reported as found: shrinking it can outlast pytest-timeout, which
    # would hide it. Reproduce it locally (the printed line, or --hypothesis-seed) to shrink.
    phases=[p for p in Phase if p is not Phase.shrink or not os.environ.get("CI")],
)
_BASE = settings.get_profile("porttrap-fuzz")


def budget(examples: int) -> settings:
    """The settings of one fuzz test: `examples` inputs per run, scaled by PORTTRAP_FUZZ_SCALE."""
    return settings(_BASE, max_examples=max(1, examples * SCALE))


class Hang(Exception):
    """A parse ran past HANG_SECONDS."""


def _hang(_signum: int, _frame: FrameType | None) -> None:
    raise Hang(f"still parsing after {HANG_SECONDS} s: a hang")


@contextmanager
def bounded(memory: int = MEMORY_BYTES) -> Iterator[None]:
    """Fails the test when the code inside runs for HANG_SECONDS, or needs more than `memory`
    bytes of address space beyond what the process has (an address-space limit: a runaway
    allocation fails at once with MemoryError, rather than after it has eaten the machine;
    cheap, where tracemalloc slowed every parse six times)."""
    previous = signal.signal(signal.SIGALRM, _hang)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)  # pytest-timeout's, if set
    started = time.perf_counter()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    pages = int(Path("/proc/self/statm").read_text().split()[0])
    limit = pages * resource.getpagesize() + memory
    resource.setrlimit(
        resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard)
    )
    try:
        yield
    except MemoryError:
        raise AssertionError(f"one parse needed over {memory} bytes more memory") from None
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # pytest-timeout's alarm goes on, less the time spent here
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.perf_counter() - started), 1e-3))


def call(parse: Callable[[], T], memory: int = MEMORY_BYTES) -> T:
    """`parse()` within the limits of `bounded`."""
    with bounded(memory):
        return parse()


# The longest address text a trap hit can have: every [allow] pattern is matched against such
# texts, one per hit, so a config whose pattern takes long on it wedges the daemon.
LONGEST_ADDRESS = "2001:db8:1234:5678:9abc:def0:1234:5678"


def patterns_match_quickly(patterns: Iterable[str]) -> None:
    """Each pattern matched as the daemon does (policy/protect.py), within `bounded`."""
    for pattern in patterns:
        for text in (LONGEST_ADDRESS, "255.255.255.255"):
            call(lambda: re.fullmatch(pattern, text))  # noqa: B023


# -- recorded regression cases -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """One input that once broke a parser: tests/data/fuzz/<parser>/NNN-name.<ext>, with
    NNN-name.note saying what it triggered and what fixed it."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def note(self) -> Path:
        return self.path.with_suffix(".note")

    def read(self) -> bytes:
        return self.path.read_bytes()


def cases(parser: str) -> list[Case]:
    """The recorded cases of `parser` (its directory under tests/data/fuzz), in name order."""
    folder = CASES / parser
    return sorted((Case(p) for p in folder.iterdir() if p.suffix != ".note"), key=lambda c: c.id)


# -- netlink datagrams, mutated from recorded ones -----------------------------------------------

NLMSGHDR = struct.Struct("=IHHII")
NLATTR = struct.Struct("=HH")


def messages(datagram: bytes) -> list[tuple[bytes, bytes]]:
    """(header, body) of each well-framed message of a recorded datagram."""
    found, offset = [], 0
    while len(datagram) - offset >= NLMSGHDR.size:
        length = NLMSGHDR.unpack_from(datagram, offset)[0]
        if length < NLMSGHDR.size or offset + length > len(datagram):
            break
        found.append((datagram[offset : offset + 16], datagram[offset + 16 : offset + length]))
        offset += (length + 3) & ~3
    return found


def split_attributes(data: bytes) -> list[tuple[int, bytes]]:
    """(type, value) of each attribute, as far as they are well formed."""
    found, offset = [], 0
    while len(data) - offset >= NLATTR.size:
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            break
        found.append((kind, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return found


def pack_attribute(kind: int, value: bytes, length: int | None = None) -> bytes:
    size = NLATTR.size + len(value)
    header = NLATTR.pack(size if length is None else length, kind)
    return header + value + b"\0" * (-size % 4)


def pack_message(header: bytes, body: bytes, length: int | None = None) -> bytes:
    _, kind, flags, seq, port = NLMSGHDR.unpack(header)
    size = NLMSGHDR.size + len(body)
    packed = NLMSGHDR.pack(size if length is None else length, kind, flags, seq, port)
    return packed + body + b"\0" * (-size % 4)


_U16 = st.integers(0, 0xFFFF)


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes, max_size: int = 64) -> bytes:
    """`data` with a few bytes changed, cut short, lengthened or replaced outright."""
    how = draw(st.sampled_from(["keep", "flip", "cut", "extend", "replace", "empty"]))
    if how == "keep":
        return data
    if how == "flip" and data:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "cut":
        return data[: draw(st.integers(0, len(data)))]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=max_size))
    if how == "empty":
        return b""
    return draw(st.binary(max_size=max_size))


@st.composite
def mutated_attributes(draw: st.DrawFn, data: bytes, kinds: list[int], depth: int = 1) -> bytes:
    """Type-length-value attributes from `data`, each perhaps changed: its value (or, `depth`
    levels down, the attributes nested in it), its length field, its type (one of `kinds`
    or any); some dropped, some repeated, some added."""
    attrs = split_attributes(data)
    out = []
    actions = ["keep", "keep", "value", "nested", "length", "type", "drop", "twice"]
    for recorded_kind, recorded in attrs:
        action = draw(st.sampled_from(actions))
        if action == "drop":
            continue
        value, kind = recorded, recorded_kind
        if action == "value":
            value = draw(mutated_bytes(recorded))
        if action == "nested" and depth > 0:
            value = draw(mutated_attributes(recorded, kinds, depth - 1))
        if action == "type":
            kind = draw(st.sampled_from(kinds) | _U16)
        length = draw(_U16) if action == "length" else None
        out.append(pack_attribute(kind, value, length))
        if action == "twice":
            out.append(pack_attribute(kind, draw(mutated_bytes(value))))
    if draw(st.booleans()):
        added = draw(st.sampled_from(kinds) | _U16)
        out.insert(
            draw(st.integers(0, len(out))), pack_attribute(added, draw(st.binary(max_size=40)))
        )
    return b"".join(out)


@st.composite
def mutated_datagram(
    draw: st.DrawFn,
    samples: list[bytes],
    fixed: int,
    kinds: list[int],
    types: list[int],
) -> bytes:
    """A netlink datagram made from recorded ones: messages picked from `samples`, each with
    its `fixed`-byte header (after the netlink one) and its attributes (types `kinds`)
    mutated, its length or type (one of `types`, or any) perhaps wrong; then perhaps cut or
    trailed by junk."""
    pool = [m for sample in samples for m in messages(sample)]
    picked = draw(st.lists(st.sampled_from(pool), min_size=0, max_size=6))
    out = []
    for recorded_header, body in picked:
        head = draw(mutated_bytes(body[:fixed], max_size=fixed))
        tail = draw(mutated_attributes(body[fixed:], kinds)) if len(body) > fixed else b""
        header = recorded_header
        if draw(st.integers(0, 3)) == 0:
            kind = draw(st.sampled_from(types) | _U16)
            header = header[:4] + struct.pack("=H", kind) + header[6:]
        wrong = draw(st.integers(0, 5)) == 0
        length = draw(st.integers(0, 0xFFFFFFFF) | st.integers(0, 200)) if wrong else None
        out.append(pack_message(header, head + tail, length))
    datagram = b"".join(out)
    ending = draw(st.sampled_from(["whole", "cut", "junk"]))
    if ending == "cut":
        return datagram[: draw(st.integers(0, len(datagram)))]
    if ending == "junk":
        return datagram + draw(st.binary(max_size=40))
    return datagram
