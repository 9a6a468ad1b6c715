"""The documentation does not contradict the code, where a test can tell: every config key of the
reference (docs/configuration.md) is one the loader accepts and the other way round; every
command and option the docs show exists in the argument parser; every relative link of the
README and docs/ reaches a file (and its anchor); the README keeps its quick start; and every
example configuration in docs/examples/ passes `porttrap check-config`."""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from porttrap.cli.main import build_parser, main
from porttrap.config import loader
from porttrap.config.fields import Section
from porttrap.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "configuration.md"
EXAMPLES = sorted((DOCS / "examples").glob("*.toml"))
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^```(\S*)\n(.*?)^```\s*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.M)
ANCHOR = re.compile(r'<a\s+(?:id|name)="([^"]+)"')


def _prose(text: str) -> str:
    """`text` without its fenced code blocks (kept as blank lines) and inline code."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return INLINE.sub("", text)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- the configuration reference against the loader -----------------------------------------

# Tables whose keys are the user's own (header names), not porttrap's.
FREE_FORM = frozenset({"actions.webhook.headers"})

# Every table the loader can read in its fullest form: an array of tables with one entry, a
# per-protocol key written as a table. Which keys each accepts is what the loader says.
_FULLEST = """
[traps]
mode = {}
[[traps.port]]
[ban]
respond = {}
[actions.hosts_deny]
[[actions.command]]
[[actions.webhook]]
[[actions.notify]]
[[log.output]]
[fleet]
"""


def _schema_keys(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every dotted key the loader accepts, from the `check_keys` calls of a load of every
    table (its problems, such as the required keys left out here, do not matter)."""
    seen: set[str] = set()
    check = Section.check_keys

    def record(self: Section, known: Collection[str]) -> None:
        prefix = re.sub(r"\[\d+\]", "", self.key)
        seen.update(f"{prefix}.{name}" if prefix else name for name in known)
        check(self, known)

    monkeypatch.setattr(Section, "check_keys", record)
    with pytest.raises(ConfigError):
        loader.load_text(_FULLEST, None)
    return seen


def _flatten(table: object, prefix: str = "") -> Iterator[str]:
    if isinstance(table, list):
        for item in table:
            yield from _flatten(item, prefix)
        return
    if not isinstance(table, dict) or prefix in FREE_FORM:
        return
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        yield key
        yield from _flatten(value, key)


def _reference_keys() -> set[str]:
    """Every key set in a TOML block of the reference (each block is a TOML file of its own)."""
    keys: set[str] = set()
    for match in FENCE.finditer(REFERENCE.read_text()):
        if match.group(1) == "toml":
            keys.update(_flatten(tomllib.loads(match.group(2))))
    return keys


def test_the_configuration_reference_has_every_key_of_the_loader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = sorted(_schema_keys(monkeypatch) - _reference_keys())
    assert not missing, (
        f"keys the loader accepts that no TOML block of {_rel(REFERENCE)} shows: {missing}; "
        "add each, with its default and what it does"
    )


def test_every_key_of_the_configuration_reference_is_one_the_loader_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unknown = sorted(_reference_keys() - _schema_keys(monkeypatch))
    assert not unknown, f"{_rel(REFERENCE)} shows keys the loader refuses: {unknown}"


def test_every_toml_block_of_the_docs_loads_as_a_configuration() -> None:
    """A snippet on any page (a section of the reference, an action, a log output, the fleet)
    is a valid configuration by itself: no misspelt key, no value the loader refuses."""
    blocks = [
        (page, match.group(2))
        for page in PAGES
        for match in FENCE.finditer(page.read_text())
        if match.group(1) == "toml"
    ]
    assert len(blocks) >= 7
    for page, block in blocks:
        try:
            loader.load_text(block, None)
        except ConfigError as err:
            pytest.fail(f"a TOML block of {_rel(page)} does not load: {err}")


# -- commands and options shown in the docs against the parser ------------------------------

COMMAND = re.compile(r"(?<![\w/.\-\[@$])porttrap[ \t]+(?=[-a-z])([^\n]*)")
SHELL_BLOCKS = frozenset({"sh", "bash", "console", "shell"})
STOP = re.compile(r"^(\||\|\||&&|;|>>?|<|#.*|2>.*)$")


def _shown_commands() -> Iterator[tuple[Path, str]]:
    """(page, the words after `porttrap`) for each command line in a shell block or in inline
    code of the docs."""
    for page in PAGES:
        text = page.read_text()
        code = [m.group(2) for m in FENCE.finditer(text) if m.group(1) in SHELL_BLOCKS]
        code += INLINE.findall(FENCE.sub("", text))
        for snippet in code:
            for match in COMMAND.finditer(snippet):
                yield page, match.group(1)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {opt: action for action in parser._actions for opt in action.option_strings}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def _words(line: str) -> Iterator[str]:
    for raw in line.split():
        if STOP.match(raw):
            return
        word = raw.strip("[](){}\"',.:;`").replace("\\|", "|")
        if word:
            yield word


def _problems_of(line: str, root: argparse.ArgumentParser) -> Iterator[str]:
    """What in `porttrap LINE` the parser does not have: a command or an option."""
    parser, skip = root, 0
    for word in _words(line):
        if skip:
            skip -= 1
            continue
        if word.startswith("-"):
            for flag in word.split("|"):
                action = _options(parser).get(flag.split("=")[0]) or _options(root).get(flag)
                if action is None:
                    yield f"no option {flag} in {parser.prog}"
                elif "=" not in flag and action.nargs != 0:
                    skip = 1
            continue
        children = _subcommands(parser)
        if children is None:
            continue  # an argument of a command
        if not re.fullmatch(r"[a-z][a-z0-9-]*(\|[a-z][a-z0-9-]*)*", word):
            return  # a placeholder (COMMAND, ...): nothing more to check
        for name in word.split("|"):
            if name not in children:
                yield f"no command {name!r} in {parser.prog}"
                return
        parser = children[word.split("|")[0]]


def test_every_command_and_option_in_the_docs_exists() -> None:
    root = build_parser()
    found = [
        f"{_rel(page)}: `porttrap {line.strip()}`: {problem}"
        for page, line in _shown_commands()
        for problem in _problems_of(line, root)
    ]
    assert not found, "\n".join(found)


# Options of other programs that the docs show on their own: ipset's and iptables' SET -exist,
# python3 -m venv's and pipx's --system-site-packages (docs/install.md).
# The benchmarks page is left out: its spans are nmap's, hping3's and the bench scripts'.
OTHER_PROGRAMS = frozenset({"--exist", "-exist", "--system-site-packages"})
LONE_OPTION = re.compile(r"(--?[a-zA-Z][\w-]*)(?:[ =]\S+)?")


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    found = set(_options(parser))
    for child in (_subcommands(parser) or {}).values():
        found |= _all_options(child)
    return found


def test_every_option_shown_on_its_own_exists() -> None:
    """`--keep-database`, `-n 5`: an option named in the text without its command is one of
    some command's."""
    known = _all_options(build_parser()) | OTHER_PROGRAMS
    found = [
        f"{_rel(page)}: `{span}`"
        for page in PAGES
        if page.name != "BENCHMARKS.md"
        for span in INLINE.findall(FENCE.sub("", page.read_text()))
        if (lone := LONE_OPTION.fullmatch(span)) and lone.group(1) not in known
    ]
    assert not found, f"options no command has: {found}"


def test_the_command_check_sees_the_commands() -> None:
    """The check above is not vacuous: it reads the docs' commands and catches a wrong one."""
    root = build_parser()
    assert len(list(_shown_commands())) > 100
    assert list(_problems_of("unban --al 192.0.2.7", root)) == ["no option --al in porttrap unban"]
    assert list(_problems_of("fleet add-hots web-1", root)) == [
        "no command 'add-hots' in porttrap fleet"
    ]
    assert list(_problems_of("ban -c /x 192.0.2.7 --for 1h", root)) == []


def test_every_command_has_its_place_in_the_commands_page() -> None:
    page = (DOCS / "commands.md").read_text()
    children = _subcommands(build_parser())
    assert children is not None
    missing = [name for name in children if f"`porttrap {name}" not in page]
    assert not missing, f"docs/commands.md does not show: {missing}"


# -- links ------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    found, counts = set(ANCHOR.findall(text)), dict[str, int]()
    for heading in HEADING.findall(FENCE.sub("", text)):
        slug = _slug(heading)
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _broken_links(page: Path, text: str) -> Iterator[str]:
    for target in LINK.findall(_prose(text)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto: ...
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve()
        if not path:
            if anchor not in _anchors(text):
                yield f"{_rel(page)}: {target}: no heading or anchor #{anchor} on this page"
        elif not dest.exists():
            yield f"{_rel(page)}: {target}: no such file"
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            yield f"{_rel(page)}: {target}: no heading or anchor #{anchor} in {_rel(dest)}"


def test_every_relative_link_reaches_its_file_and_anchor() -> None:
    broken = [problem for page in PAGES for problem in _broken_links(page, page.read_text())]
    assert not broken, "\n".join(broken)


def test_the_link_check_catches_a_broken_link() -> None:
    """A page in docs/ (not written: its text is given) with three broken links and two good
    ones; a link in inline code is no link."""
    assert "trap-modes-connect-stealth-advanced" in _anchors((DOCS / "trap-modes.md").read_text())
    text = (
        "## A `[b]` section (2)\n[a](trap-modes.md#no-such) [b](nowhere.md) [c](#configuration)"
        " `[d](x.md)` [e](#a-b-section-2) [f](trap-modes.md#trap-modes-connect-stealth-advanced)\n"
    )
    assert list(_broken_links(DOCS / "probe.md", text)) == [
        "docs/probe.md: trap-modes.md#no-such: no heading or anchor #no-such in docs/trap-modes.md",
        "docs/probe.md: nowhere.md: no such file",
        "docs/probe.md: #configuration: no heading or anchor #configuration on this page",
    ]


def test_the_readme_stays_a_landing_page() -> None:
    """Under 15 KB, and the two quick-start commands exactly as they were: they are the
    project's contract (CI runs the second, `.ci/run`)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 15_000
    assert "./scripts/setup.sh run     # installs everything" in readme
    assert "./scripts/setup.sh test    # installs everything" in readme
    assert "bash scripts/setup.sh test" in (ROOT / ".ci" / "run").read_text()


# -- the examples -----------------------------------------------------------------------------


def test_there_is_an_example_for_each_kind_of_host() -> None:
    names = {path.stem for path in EXAMPLES}
    assert names >= {
        "ssh-only", "web-server", "mail-server", "docker-host", "behind-load-balancer",
    }  # fmt: skip


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_each_example_passes_check_config(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check-config", "-c", str(example)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "warning" not in out + err, out + err


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_each_example_explains_its_choices(example: Path) -> None:
    """Commented: a header that says what host it is for, and a comment beside or above each
    setting."""
    lines = example.read_text().splitlines()
    assert lines[0].startswith("# "), "the first line says what host this is for"
    settings = [n for n, line in enumerate(lines) if re.match(r"^[a-z_]+\s*=", line)]
    bare = [
        lines[n]
        for n in settings
        if "#" not in lines[n] and not lines[n - 1].lstrip().startswith("#")
    ]
    assert not bare, f"settings with no comment: {bare}"


# -- log events -------------------------------------------------------------------------------

SOURCE = ROOT / "src" / "porttrap"
LOGGING = DOCS / "logging.md"
# An event's name as the code writes it: log.event("name", ...), fields("name", ...) for lines
# logged with a traceback, the core's Log("name", ...), the policy's Note("name", ...) of a
# prefix ban (logged by the core); a watcher's FailureLog("name") logs name-failed and
# name-recovered.
EVENT_CALL = re.compile(r"(?<![\w.])(?:log\.)?(?:event|fields|Log|Note)\(\s*\"([a-z][a-z0-9-]*)\"")
FAILURE_LOG = re.compile(r"FailureLog\(\"([a-z-]+)\"")
# Names the code builds: the ban lines (effects.log_change), the summaries of bulk batches.
BUILT = {"ban", "permanent-ban", "bulk-ban", "bulk-permanent-ban", "bulk-unban"}


def _code_events() -> set[str]:
    names: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        text = path.read_text()
        names.update(EVENT_CALL.findall(text))
        for name in FAILURE_LOG.findall(text):
            names.update({f"{name}-failed", f"{name}-recovered"})
    return names


def _documented_events() -> set[str]:
    """The events named in the catalog of docs/logging.md (the table `| about | events |`)."""
    text = LOGGING.read_text()
    table = text[text.index("| about | events |") :].split("\n\n")[0]
    return set(re.findall(r"`([a-z][a-z0-9-]*)`", table))


def test_every_event_the_code_logs_is_in_the_catalog() -> None:
    missing = sorted(_code_events() - _documented_events())
    assert len(_code_events()) > 100, "the event pattern no longer finds the code's events"
    assert not missing, f"events logged by the code, not in docs/logging.md's table: {missing}"


def test_every_event_of_the_catalog_is_logged_by_the_code() -> None:
    unknown = sorted(_documented_events() - _code_events() - BUILT)
    assert not unknown, f"docs/logging.md names events the code never logs: {unknown}"
