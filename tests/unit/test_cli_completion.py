"""`porttrap completion bash|zsh`: the generated scripts, loaded into real shells and asked
what Tab offers. bash: the script's completion function, called as bash calls it, and the
places bash-completion loads it from; zsh: an interactive zsh in tmux, keys typed."""

from __future__ import annotations

import os
import shutil
import subprocess  # noqa: TID251 - runs the shells a person would
from collections.abc import Iterator
from pathlib import Path

import pytest

from porttrap.cli import completion
from porttrap.cli.main import build_parser, main
from waiting import PATIENCE, wait_until

BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


def commands() -> list[str]:
    parser = build_parser()
    sub = parser._subparsers
    assert sub is not None
    return sorted(name for a in sub._group_actions for name in a.choices or ())


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "porttrap"
    path.write_text(completion.script(build_parser(), "bash"))
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory with a file and a subdirectory, to complete names in."""
    (tmp_path / "porttrap.toml").write_text("")
    (tmp_path / "port_trap").mkdir()
    return tmp_path


def _bash(code: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
        cwd=cwd,
        env=env,
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    return result.stdout


# What bash does at Tab: COMP_WORDS holds the line's words, COMP_CWORD the one being completed,
# and the function gets the command, that word and the one before it.
DRIVE = """
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_shtab_porttrap porttrap "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\\n' "${COMPREPLY[@]}"
"""


def tab(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """What Tab offers after `porttrap WORDS...`; the last word is the one being typed."""
    out = _bash(f'source "$0"\n{DRIVE}', str(script), "porttrap", *words, cwd=cwd)
    return sorted(line for line in out.splitlines() if line)


def test_the_command_prints_each_shells_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    bash = capsys.readouterr().out
    assert bash.endswith("\ncomplete -o bashdefault -F _shtab_porttrap porttrap\n")
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("#compdef porttrap\n")
    with pytest.raises(SystemExit) as exit_:
        main(["completion", "tcsh"])
    assert exit_.value.code == 2


def test_commands_complete(bash_script: Path) -> None:
    assert tab(bash_script, "st") == ["status"]
    assert tab(bash_script, "") == commands()
    assert "completion" in commands()


def test_options_complete_per_command(bash_script: Path) -> None:
    offered = tab(bash_script, "ban", "--")
    assert {"--for", "--permanent", "--file", "--config", "--verbose", "--help"} <= set(offered)
    assert "--json" not in offered  # that is status's, bans' and history's
    assert tab(bash_script, "ban", "203.0.113.7", "--p") == ["--permanent"]
    assert tab(bash_script, "--v") == ["--verbose", "--version"]  # -c and -v: before COMMAND too


def test_subcommands_and_choices_complete(bash_script: Path) -> None:
    assert tab(bash_script, "import", "") == ["port-trap", "portsentry"]
    assert tab(bash_script, "import", "port-trap", "--no") == ["--no-history"]
    assert tab(bash_script, "completion", "") == ["bash", "zsh"]


def test_file_arguments_complete_files(bash_script: Path, files: Path) -> None:
    assert tab(bash_script, "check-config", "-c", "port", cwd=files) == [
        "port_trap",
        "porttrap.toml",
    ]
    assert tab(bash_script, "run", "--config", "", cwd=files) == ["port_trap", "porttrap.toml"]
    assert tab(bash_script, "unban", "-f", "p", cwd=files) == ["port_trap", "porttrap.toml"]
    assert tab(bash_script, "import", "portsentry", "-o", "po", cwd=files) == [
        "port_trap",
        "porttrap.toml",
    ]


def test_directory_arguments_complete_only_directories(bash_script: Path, files: Path) -> None:
    assert tab(bash_script, "import", "port-trap", "", cwd=files) == ["port_trap"]
    assert tab(bash_script, "import", "portsentry", "p", cwd=files) == ["port_trap"]
    assert tab(bash_script, "import", "port-trap", "--state-dir", "", cwd=files) == ["port_trap"]


def test_other_values_complete_nothing(bash_script: Path, files: Path) -> None:
    assert tab(bash_script, "history", "-n", "", cwd=files) == []
    assert tab(bash_script, "ban", "--for", "", cwd=files) == []


def _bash_completion() -> Path:
    if not BASH_COMPLETION.is_file():
        pytest.skip(f"{BASH_COMPLETION} missing: apt-get install bash-completion (setup.sh test)")
    return BASH_COMPLETION


@pytest.mark.parametrize(
    ("place", "load"),
    [
        ("compat/porttrap", ""),  # /etc/bash_completion.d: read when bash-completion starts
        ("share/bash-completion/completions/porttrap", "__load_completion porttrap"),  # first Tab
    ],
)
def test_bash_completion_loads_the_script_from_the_documented_places(
    bash_script: Path, tmp_path: Path, place: str, load: str
) -> None:
    """docs/commands.md and `completion --help` name /etc/bash_completion.d/porttrap and
    /usr/local/share/bash-completion/completions/porttrap; here both are moved under tmp_path
    through the variables bash-completion reads them from."""
    installed = tmp_path / place
    installed.parent.mkdir(parents=True)
    (tmp_path / "compat").mkdir(exist_ok=True)
    shutil.copy(bash_script, installed)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "BASH_COMPLETION_COMPAT_DIR": str(tmp_path / "compat"),
        "XDG_DATA_DIRS": str(tmp_path / "share"),
    }
    code = f'source "$0"\n{load}\ncomplete -p porttrap\n{DRIVE}'
    out = _bash(code, str(_bash_completion()), "porttrap", "che", env=env)
    assert out == "complete -o bashdefault -F _shtab_porttrap porttrap\ncheck-config\n"


def _zsh() -> str:
    found = shutil.which("zsh")
    if found is None:
        pytest.skip("zsh not installed: apt-get install zsh (scripts/setup.sh test does)")
    return found


def test_the_zsh_script_is_valid_zsh(tmp_path: Path) -> None:
    script = tmp_path / "_porttrap"
    script.write_text(completion.script(build_parser(), "zsh"))
    result = subprocess.run(
        [_zsh(), "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")


class Terminal:
    """An interactive zsh in a tmux server of its own, with the script in its $fpath."""

    def __init__(self, home: Path) -> None:
        self.tmux = ["tmux", "-L", f"porttrap-test-{os.getpid()}", "-f", "/dev/null"]
        self.home = home

    def start(self, zsh: str) -> None:
        command = f"env HOME={self.home} ZDOTDIR={self.home} {zsh} -i"
        self._run("new-session", "-d", "-x", "160", "-y", "40", command)
        self.wait_for("READY>")

    def type(self, *keys: str) -> None:
        self._run("send-keys", *keys)

    def screen(self) -> str:
        return self._run("capture-pane", "-p")

    def wait_for(self, *texts: str) -> str:
        """The screen once it shows every text; fails after PATIENCE."""
        shown: list[str] = []

        def showing() -> bool:
            shown[:] = [self.screen()]
            return all(text in shown[0] for text in texts)

        try:
            wait_until(showing, PATIENCE, f"{texts} on the terminal")
        except AssertionError:
            pytest.fail(f"the terminal never showed {texts}; it shows:\n{shown[0]}")
        return shown[0]

    def stop(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, check=False)

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            [*self.tmux, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return result.stdout


@pytest.fixture
def zsh_terminal(tmp_path: Path) -> Iterator[Terminal]:
    zsh = _zsh()
    if shutil.which("tmux") is None:
        pytest.skip("tmux not installed: apt-get install tmux (scripts/setup.sh test does)")
    functions = tmp_path / "site-functions"  # as /usr/local/share/zsh/site-functions
    functions.mkdir()
    (functions / "_porttrap").write_text(completion.script(build_parser(), "zsh"))
    (tmp_path / ".zshrc").write_text(
        f"fpath=({functions} $fpath)\nautoload -Uz compinit\n"
        f"compinit -u -d {tmp_path}/.zcompdump\nPROMPT='READY> '\n"
    )
    terminal = Terminal(tmp_path)
    try:
        terminal.start(zsh)
        yield terminal
    finally:
        terminal.stop()


def test_zsh_completes_commands_options_and_subcommands(zsh_terminal: Terminal) -> None:
    zsh_terminal.type("porttrap st", "Tab")
    zsh_terminal.wait_for("READY> porttrap status")
    zsh_terminal.type("C-u", "porttrap ban --", "Tab")
    screen = zsh_terminal.wait_for("--for", "--permanent")
    assert "ban for good" in screen  # each option with its help
    zsh_terminal.type("C-u", "porttrap import ", "Tab", "Tab")
    zsh_terminal.wait_for("portsentry", "port-trap")
