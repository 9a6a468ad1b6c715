"""The inputs fuzzing once found to break a parser (tests/data/fuzz/<parser>/), replayed on
every run through the same property that found them: each fuzz module's PROPERTIES names its
parsers' folders. Each case has a .note beside it saying what it triggered and what fixed it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzzing import CASES, Case, cases

MODULES = sorted(
    p.stem for p in Path(__file__).parent.glob("test_fuzz_*.py") if p.stem != Path(__file__).stem
)
PROPERTIES: dict[str, Callable[[bytes], None]] = {
    parser: check
    for module in MODULES
    for parser, check in getattr(importlib.import_module(module), "PROPERTIES", {}).items()
}
RECORDED = [
    (folder.name, case) for folder in sorted(CASES.iterdir()) for case in cases(folder.name)
]


def test_every_folder_of_cases_names_a_fuzzed_parser() -> None:
    assert {folder.name for folder in CASES.iterdir()} <= set(PROPERTIES)


@pytest.mark.parametrize(("parser", "case"), RECORDED, ids=[f"{p}/{c.id}" for p, c in RECORDED])
def test_a_recorded_case_keeps_the_property(parser: str, case: Case) -> None:
    assert case.note.is_file(), f"{case.path}: say what it triggered in {case.note.name}"
    PROPERTIES[parser](case.read())
