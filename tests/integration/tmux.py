"""A private tmux server to drive a full-screen program as a person would: start it in a
detached session of a given size, read the screen, press keys, resize, see how it exited.

The server has its own socket name (`tmux -L`), reads no configuration file, and is killed
by `kill()` (the `with` block's end), whatever happened.
"""

from __future__ import annotations

import secrets
import shlex
import subprocess  # noqa: TID251 - test helper
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from waiting import PATIENCE, wait_until

SESSION = "top"


class Tmux:
    def __init__(self) -> None:
        self.name = f"porttrap-test-{secrets.token_hex(4)}"
        self._dir = tempfile.TemporaryDirectory(prefix="porttrap-tmux-")
        self.status_file = Path(self._dir.name) / "status"
        self._socket: Path | None = None

    def __enter__(self) -> Tmux:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
        self._dir.cleanup()

    def tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["tmux", "-L", self.name, "-f", "/dev/null", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done

    def start(self, argv: Sequence[str], width: int, height: int,
              env: dict[str, str] | None = None) -> None:  # fmt: skip
        """Run `argv` in a detached session `width` x `height`. Its exit status goes to a
        file: tmux 3.3 with libutempter can miss the SIGCHLD of a pane's process, and then
        never learns it (tmux issue #311). The pane stays after the program exits
        (remain-on-exit), so that what the program left on the screen can be read."""
        exports = [f"{key}={shlex.quote(value)}" for key, value in (env or {}).items()]
        command = " ".join([*(["env", *exports] if exports else []), shlex.join(argv)])
        status = shlex.quote(str(self.status_file))
        # The short sleep: remain-on-exit is set before the program can end.
        script = f"sleep 0.5; {command}; echo $? > {status}.new; mv {status}.new {status}"
        self.tmux("-u", "new-session", "-d", "-s", SESSION, "-x", str(width), "-y", str(height),
                  script)  # fmt: skip
        self.tmux("set-option", "-t", SESSION, "remain-on-exit", "on")
        self._socket = Path(self.pane("#{socket_path}"))

    def screen(self, colours: bool = False) -> str:
        """The visible screen, one line per row (with colours: ANSI escapes)."""
        return self.tmux("capture-pane", "-p", *(["-e"] if colours else []), "-t", SESSION).stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", SESSION, *keys)

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", SESSION, "-x", str(width), "-y", str(height))

    def pane(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", SESSION, fmt).stdout.strip()

    def exit_status(self, timeout: float = PATIENCE) -> int:
        """The program's exit status once it has exited (AssertionError: still running after
        `timeout` seconds)."""
        wait_until(self.status_file.exists, timeout, "the program to exit")
        return int(self.status_file.read_text())  # 128 + N: killed by signal N

    def wait_until(self, check: Callable[[str], bool], timeout: float, what: str) -> str:
        """The screen once `check(screen)` holds, polled every 0.1 s for at most `timeout`
        seconds; AssertionError with the last screen otherwise."""
        screens = [""]

        def shows() -> bool:
            screens[0] = self.screen()
            return check(screens[0])

        try:
            wait_until(shows, timeout, what)
        except AssertionError as err:
            raise AssertionError(f"{err}:\n{screens[0]}") from None
        return screens[0]

    def wait_for(self, texts: str | Sequence[str], timeout: float) -> str:
        """The screen once it shows every one of `texts`."""
        wanted = [texts] if isinstance(texts, str) else list(texts)
        return self.wait_until(lambda screen: all(t in screen for t in wanted), timeout,
                               f"{wanted} on the screen")  # fmt: skip

    def wait_gone(self, text: str, timeout: float) -> str:
        """The screen once `text` is not on it."""
        return self.wait_until(lambda screen: text not in screen, timeout, f"{text!r} gone")

    def kill(self) -> None:
        """Stop the server, and remove its socket (kill-server leaves it behind)."""
        self.tmux("kill-server", check=False)
        if self._socket is not None:
            self._socket.unlink(missing_ok=True)
