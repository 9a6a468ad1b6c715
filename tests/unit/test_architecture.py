"""The architecture's nevers, read from the source: which package may import which.

    policy  -> model, config                    (decisions; no I/O of any kind)
    core    -> policy, model, config, sensorspec (events in, commands out; no I/O)
    sensors -> model, config, netlink            (they only report: never the firewall)
    cli     -> daemon.wiring (to run it), daemon.control (to talk to it), the store factory,
               the firewall registry only for `flush`

Every import counts, those inside functions and under TYPE_CHECKING too, and the packages
whose `__init__` an import runs; what a module imports is checked with everything it imports in
turn (the closure), so a new indirection cannot hide a forbidden edge. (The standard library
is checked by its top-level names only: `logging`, which the core uses for level numbers,
imports threading itself, and that is not the core's I/O.)
"""

from __future__ import annotations

import ast
import subprocess  # noqa: TID251 - a fresh interpreter shows what an import really loads
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent.parent / "src"
PACKAGE = SRC / "porttrap"

# No I/O, thread, event loop, process or clock in the pure parts (socket is for the address
# conversions of model.py only, checked separately below).
IO_MODULES = {"asyncio", "threading", "subprocess", "selectors", "time", "concurrent", "signal"}
IO_PACKAGES = (
    "porttrap.firewall",
    "porttrap.store",
    "porttrap.sensors",
    "porttrap.daemon",
    "porttrap.actions",
    "porttrap.cli",
    "porttrap.log",
    "porttrap.clock",
    "porttrap.logoutputs",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports(name: str) -> frozenset[str]:
    """Every module `name` imports, by its full name (porttrap's and the standard library's
    top-level names); `from porttrap.x import y` counts porttrap.x.y when that is a module."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            modules = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
            found.update(modules)
            if len(modules) < len(node.names):  # names defined in `base` itself
                found.add(base)
    return frozenset(_with_parents(_ours_or_top(found)))


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _ours_or_top(names: Iterable[str]) -> Iterable[str]:
    for name in names:
        if name.startswith("porttrap"):
            yield name
        else:
            yield name.split(".")[0]


def _with_parents(names: Iterable[str]) -> Iterable[str]:
    """Importing porttrap.a.b runs porttrap/__init__ and porttrap/a/__init__ first: they count."""
    for name in names:
        yield name
        parts = name.split(".")
        yield from (
            ".".join(parts[:n]) for n in range(1, len(parts)) if name.startswith("porttrap")
        )


@cache
def closure(name: str) -> frozenset[str]:
    """`name` and everything it imports, in turn, within porttrap (and the outside modules
    met on the way)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [m for m in imports(current) if m in MODULES]
        seen.update(m for m in imports(current) if m not in MODULES)
    return frozenset(seen)


def within(prefix: str) -> list[str]:
    return [name for name in MODULES if name == prefix or name.startswith(f"{prefix}.")]


def forbidden(name: str, packages: Iterable[str]) -> list[str]:
    return forbidden_among(closure(name), packages)


def forbidden_among(modules: Iterable[str], packages: Iterable[str]) -> list[str]:
    """The modules that are one of `packages` or inside one."""
    packages = tuple(packages)
    return sorted(m for m in modules for p in packages if m == p or m.startswith(f"{p}."))


def test_the_module_list_is_read() -> None:
    assert {"porttrap.core.core", "porttrap.policy.engine", "porttrap.daemon.shell"} <= set(MODULES)
    assert "porttrap.model" in imports("porttrap.policy.engine")


@pytest.mark.parametrize("name", within("porttrap.policy") + within("porttrap.core"))
def test_the_policy_and_the_core_do_no_io(name: str) -> None:
    """policy never imports firewall, store, sensors (nor any I/O); the core neither."""
    assert forbidden(name, IO_PACKAGES) == []
    assert sorted(closure(name) & IO_MODULES) == []


@pytest.mark.parametrize("name", within("porttrap.policy") + within("porttrap.core"))
def test_only_model_uses_socket_and_only_to_convert_addresses(name: str) -> None:
    users = sorted(m for m in closure(name) if m in MODULES and "socket" in imports(m))
    assert users in ([], ["porttrap.model"])
    text = MODULES["porttrap.model"].read_text()
    calls = {
        node.attr
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "socket"
    }
    assert calls <= {"inet_pton", "inet_ntop", "AF_INET", "AF_INET6"}


@pytest.mark.parametrize("name", within("porttrap.sensors"))
def test_sensors_only_report_and_never_touch_the_firewall(name: str) -> None:
    assert forbidden(name, ["porttrap.firewall", "porttrap.core", "porttrap.daemon"]) == []


# statedir: `import port-trap` writes into the daemon's state directory, checked as run checks it
CLI_DAEMON = {"porttrap.daemon.wiring", "porttrap.daemon.control", "porttrap.daemon.notify",
              "porttrap.daemon.statedir"}  # fmt: skip
CLI_FIREWALL = {  # flush removes the table itself; --version says which parts are installed
    "porttrap.cli.commands": {
        "porttrap.firewall",
        "porttrap.firewall.claim",  # ... but never one a live daemon owns
        "porttrap.firewall.select",
        "porttrap.firewall.registry",
        "porttrap.firewall.base",  # the interface: flush counts what it removes
    },
    "porttrap.cli.version": {
        "porttrap.firewall",
        "porttrap.firewall.kernel",
        "porttrap.firewall.ipset",
    },
}


@pytest.mark.parametrize("name", within("porttrap.cli"))
def test_the_cli_reaches_the_daemon_through_its_wiring_only(name: str) -> None:
    direct = imports(name)
    daemon = {m for m in direct if m.startswith("porttrap.daemon")} - {"porttrap.daemon"}
    assert daemon <= CLI_DAEMON
    assert not {m for m in direct if m.startswith(("porttrap.core.core", "porttrap.sensors"))}
    firewall = {m for m in direct if m.startswith("porttrap.firewall")}
    assert firewall <= CLI_FIREWALL.get(name, set())
    stores = {m for m in direct if m.startswith("porttrap.store.")}
    assert stores <= {"porttrap.store.base"}


def test_the_wiring_is_one_function_the_cli_calls() -> None:
    callers = [name for name in within("porttrap.cli") if "porttrap.daemon.wiring" in imports(name)]
    assert callers == ["porttrap.cli.commands"]
    tree = ast.parse(MODULES["porttrap.cli.commands"].read_text())
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "wiring"
    }
    assert used == {"run"}


def test_importing_the_pure_parts_loads_no_io_package() -> None:
    """At run time too: a fresh interpreter that imports the core has loaded no firewall,
    store, sensor, daemon or action module (a package `__init__` cannot sneak one in)."""
    code = (
        "import sys, porttrap.core.core, porttrap.policy.engine\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('porttrap'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = done.stdout.split()
    assert "porttrap.core.core" in loaded
    assert forbidden_among(loaded, IO_PACKAGES) == []


def test_a_forbidden_edge_would_be_seen() -> None:
    """The check itself: a module of the policy that imported the firewall would fail it."""
    fake = "porttrap.policy._probe"
    MODULES[fake] = PACKAGE / "firewall" / "nftables.py"  # a module that imports firewall
    try:
        imports.cache_clear()
        closure.cache_clear()
        assert forbidden(fake, IO_PACKAGES)
    finally:
        del MODULES[fake]
        imports.cache_clear()
        closure.cache_clear()
