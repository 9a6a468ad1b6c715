"""No test depends on timing luck: a test that sleeps hopes that something has happened by
then, and on a CPU-starved machine it has not. Tests wait on conditions through
tests/waiting.py (`wait_until`, `eventually`, `holds_for`, `pause` with its reason), the one
module that may call `time.sleep`. An `asyncio.sleep` of more than 0 s outside a loop is the
same hope on an event loop (inside a loop it is a poll; `asyncio.sleep(0)` yields a turn)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
HELPER = TESTS / "waiting.py"


def _sources() -> list[Path]:
    return sorted(path for path in TESTS.rglob("*.py") if path != HELPER)


def _is_call(node: ast.AST, module: str, name: str, aliases: set[str]) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == name:
        return isinstance(func.value, ast.Name) and func.value.id == module
    return isinstance(func, ast.Name) and func.id in aliases


def _aliases(tree: ast.Module, module: str, name: str) -> set[str]:
    """The local names of `from module import name [as alias]`."""
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == module
        for alias in node.names
        if alias.name == name
    }


def _zero(call: ast.Call) -> bool:
    arg = call.args[0] if call.args else None
    return isinstance(arg, ast.Constant) and arg.value == 0


def _in_loop(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.While | ast.For | ast.AsyncFor):
            return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
    return False


def sleeps(source: str) -> list[str]:
    """`time.sleep` calls, and `asyncio.sleep(x > 0)` calls outside a loop: 'line: code'."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    time_sleep = _aliases(tree, "time", "sleep")
    asyncio_sleep = _aliases(tree, "asyncio", "sleep")
    found = []
    for node in ast.walk(tree):
        hope = _is_call(node, "time", "sleep", time_sleep) or (
            _is_call(node, "asyncio", "sleep", asyncio_sleep)
            and not _zero(node)  # type: ignore[arg-type]
            and not _in_loop(node, parents)
        )
        if hope:
            found.append(f"{node.lineno}: {ast.get_source_segment(source, node)}")  # type: ignore[attr-defined]
    return found


def test_only_the_waiting_helpers_sleep() -> None:
    offenders = {
        str(path.relative_to(TESTS)): found
        for path in _sources()
        if (found := sleeps(path.read_text()))
    }
    assert offenders == {}, (
        "tests must not sleep and hope: wait on a condition with waiting.wait_until / "
        f"eventually, check 'nothing happens' with holds_for, or say why with pause: {offenders}"
    )


def test_the_rule_sees_each_form_of_sleep() -> None:
    source = (
        "import asyncio, time\nfrom time import sleep as nap\n"
        "time.sleep(1)\nnap(2)\n"
        "async def f():\n    await asyncio.sleep(0.05)\n    await asyncio.sleep(0)\n"
        "    while True:\n        await asyncio.sleep(0.01)\n"
    )
    assert sleeps(source) == ["3: time.sleep(1)", "4: nap(2)", "6: asyncio.sleep(0.05)"]


def test_hypothesis_times_no_example() -> None:
    """Hypothesis's deadline (200 ms an example) and too_slow check are timing luck on a
    starved machine: tests/conftest.py turns both off for every property test."""
    from hypothesis import HealthCheck, settings

    loaded = settings.default
    assert loaded is not None
    assert loaded.deadline is None
    assert HealthCheck.too_slow in loaded.suppress_health_check


def test_this_checkouts_runs_have_their_own_temporary_root(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Not the /tmp/pytest-of-<user> that every checkout on the machine shares (conftest)."""
    base = tmp_path_factory.getbasetemp().resolve()
    assert re.fullmatch("pt[0-9a-f]{3}", base.parent.parent.name), base
