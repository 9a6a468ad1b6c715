"""Commands really run: a script records its argv and environment; placeholders expanded in
argv and shell forms, hostile values staying one word; timeouts end the whole process group;
failures are logged with the argv and never raised."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from porttrap.actions import events, process
from porttrap.actions.events import ActionEvent
from porttrap.actions.jobs import CommandJob
from porttrap.actions.process import Ending
from porttrap.config.schema import CommandAction, Event, Modes, TrapMode
from porttrap.model import Ban, Proto
from scripts import python_script
from waiting import wait_until

T0 = 1_800_000_000.0
RECORDER = """\
import json, os, sys
with open({record!r}, "a") as out:
    env = {{k: v for k, v in os.environ.items() if k.startswith("PORTTRAP_")}}
    out.write(json.dumps({{"argv": sys.argv[1:], "env": env, "stdin": sys.stdin.read()}}) + "\\n")
"""


def recorder(tmp_path: Path) -> tuple[Path, Callable[[], list[dict[str, Any]]]]:
    """A script that appends its arguments, PORTTRAP_* variables and stdin to a file."""
    record = tmp_path / "record.jsonl"
    script = tmp_path / "record-hook"
    python_script(script, RECORDER.format(record=str(record)))

    def calls() -> list[dict[str, Any]]:
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    return script, calls


def ban_event(address: str = "192.0.2.7", port: int = 23) -> ActionEvent:
    ban = Ban(ip_network(address), T0, T0 + 3600, 2, f"trap:tcp/{port}")
    return events.from_ban(ban, Modes(tcp=TrapMode.ADVANCED))


def run(action: CommandAction, event: ActionEvent) -> Ending:
    async def scenario() -> Ending:
        # the daemon's own environment, without PORTTRAP_* variables of the test run's
        # (setup.sh exports PORTTRAP_FAIL2BAN), so that those the hook sees are the event's
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PORTTRAP_")}
        job = CommandJob(action, event, inherited)
        return await job.start(asyncio.get_running_loop())

    return asyncio.run(scenario())


def test_the_argv_form_gets_placeholders_and_the_environment(tmp_path: Path) -> None:
    script, calls = recorder(tmp_path)
    action = CommandAction(run=(str(script), "$TARGET$", "$PORT$", "$MODE$", "ip=$TARGET$"))
    assert run(action, ban_event()) is Ending.OK
    (call,) = calls()
    assert call["argv"] == ["192.0.2.7", "23", "atcp", "ip=192.0.2.7"]
    assert call["stdin"] == ""  # /dev/null
    assert call["env"] == {
        "PORTTRAP_EVENT": "ban",
        "PORTTRAP_ADDRESS": "192.0.2.7",
        "PORTTRAP_PORT": "23",
        "PORTTRAP_PROTO": "tcp",
        "PORTTRAP_MODE": "atcp",
        "PORTTRAP_KIND": "",
        "PORTTRAP_OUTCOME": "",
        "PORTTRAP_BAN_COUNT": "2",
        "PORTTRAP_EXPIRES_AT": "2027-01-15T09:00:00Z",
        "PORTTRAP_PERMANENT": "0",
        "PORTTRAP_REASON": "trap:tcp/23",
        "PORTTRAP_EVIDENCE": "verified",
    }


def test_the_shell_form_gets_placeholders(tmp_path: Path) -> None:
    script, calls = recorder(tmp_path)
    action = CommandAction(run=(f"{script} $TARGET$ $PORT$ $MODE$ < /dev/null",), shell=True)
    assert run(action, ban_event("2001:db8::/48")) is Ending.OK
    (call,) = calls()
    assert call["argv"] == ["2001:db8::/48", "23", "atcp"]


@pytest.mark.parametrize("shell", [False, True])
def test_hostile_values_cannot_inject(tmp_path: Path, shell: bool) -> None:
    """An address comes from a packet: an IPv6 scope (an interface name) may hold ; $ ` '."""
    script, calls = recorder(tmp_path)
    pwned = tmp_path / "pwned"
    hostile = f"fe80::1%x';touch {pwned};'$(touch {pwned})`touch {pwned}`\"$HOME\""
    event = ActionEvent(Event.HIT, hostile, T0, 23, Proto.TCP, "tcp", "trap:tcp/23")
    run_ = (f"{script} $TARGET$ x$TARGET$x",) if shell else (str(script), "$TARGET$")
    assert run(CommandAction(run=run_, shell=shell, on=frozenset({Event.HIT})), event) is Ending.OK
    (call,) = calls()
    assert call["argv"] == ([hostile, f"x{hostile}x"] if shell else [hostile])
    assert call["env"]["PORTTRAP_ADDRESS"] == hostile
    assert not pwned.exists()


def test_a_failing_command_is_logged_with_its_argv_and_output(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    action = CommandAction(run=("/bin/sh", "-c", "echo no route to $0 >&2; exit 3", "$TARGET$"))
    assert run(action, ban_event()) is Ending.FAILED
    assert (
        "event=action-failed action=command on=ban address=192.0.2.7 "
        "argv=\"/bin/sh -c 'echo no route to $0 >&2; exit 3' 192.0.2.7\" exit=3 "
        'output="no route to 192.0.2.7"'
    ) in caplog.text


def test_a_program_that_cannot_start_is_a_failure_not_an_exception(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    assert run(CommandAction(run=(str(tmp_path / "missing"),)), ban_event()) is Ending.FAILED
    assert run(CommandAction(run=("porttrap-no-such-program",)), ban_event()) is Ending.FAILED
    assert 'error="cannot start: No such file or directory"' in caplog.text
    assert "argv=porttrap-no-such-program" in caplog.text


def test_a_timeout_ends_the_whole_process_group(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    child = tmp_path / "child.pid"
    line = f"sleep 60 & echo $! > {child}; wait"
    action = CommandAction(run=(line,), shell=True, timeout=0.3)
    assert run(action, ban_event()) is Ending.TIMED_OUT
    pid = int(child.read_text())
    assert _ends_within(pid, 5.0)  # the background child went with it (a signal takes a moment)
    assert "event=action-failed action=command" in caplog.text
    assert 'error="timed out after 0.3s" signal=SIGTERM' in caplog.text


def test_a_command_that_ignores_sigterm_gets_sigkill(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    monkeypatch.setattr(process, "KILL_AFTER", 0.2)
    action = CommandAction(run=("trap '' TERM; sleep 60",), shell=True, timeout=0.2)
    assert run(action, ban_event()) is Ending.TIMED_OUT
    assert "signal=SIGKILL" in caplog.text


def test_output_is_kept_up_to_a_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="porttrap")
    action = CommandAction(run=("head -c 100000 /dev/zero | tr '\\0' x; exit 1",), shell=True)
    assert run(action, ban_event()) is Ending.FAILED
    (line,) = [r.getMessage() for r in caplog.records if "action-failed" in r.getMessage()]
    assert f"output={'x' * process.OUTPUT_LIMIT} [...]" in line.replace('"', "")


def test_success_is_logged_at_debug_with_the_output(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="porttrap")
    assert run(CommandAction(run=("/bin/echo", "banned", "$TARGET$")), ban_event()) is Ending.OK
    assert 'event=action-done action=command on=ban address=192.0.2.7 argv="/bin/echo banned ' in (
        caplog.text
    )
    assert 'output="banned 192.0.2.7"' in caplog.text


def test_without_pidfd_a_thread_waits_for_the_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_pidfd(_pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    script, calls = recorder(tmp_path)
    assert run(CommandAction(run=(str(script), "$PORT$")), ban_event()) is Ending.OK
    assert calls()[0]["argv"] == ["23"]
    assert run(CommandAction(run=("/bin/false",)), ban_event()) is Ending.FAILED


def _ends_within(pid: int, seconds: float) -> bool:
    try:
        wait_until(lambda: not _alive(pid), seconds, f"pid {pid} gone")
    except AssertionError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie waiting for its (re)parent to reap it has ended too
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"


def test_a_command_inherits_no_descriptor_of_the_daemon() -> None:
    """Python opens everything close-on-exec; a C library (libnftables) may not."""
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        check = f"test ! -e /proc/self/fd/{write_end} && test ! -e /proc/self/fd/{read_end}"
        assert run(CommandAction(run=(f"exec /bin/sh -c '{check}'",), shell=True),
                   ban_event()) is Ending.OK  # fmt: skip
    finally:
        os.close(read_end)
        os.close(write_end)
