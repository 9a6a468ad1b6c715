"""Notifications through Apprise (`[[actions.notify]]`): the config, the message of a burst,
one message per burst however many bans (a scan), the rate limit, and a send that never holds
up the daemon's loop. Apprise really sends: to a JSON endpoint this test serves on 127.0.0.1
(`json://`), so nothing leaves the machine."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest

from porttrap.actions.dispatch import Dispatcher
from porttrap.actions.events import from_ban
from porttrap.actions.notify import Burst, Notices, message
from porttrap.config.loader import load
from porttrap.config.schema import Actions, Event, Modes, NotifyAction
from porttrap.errors import ConfigError
from porttrap.model import Ban

T0 = 1_800_000_000.0
PATIENCE = 30.0  # seconds: generous, for a loaded machine


def bans(count: int, at: float = T0) -> list[Ban]:
    return [Ban(ip_network(address(n)), at, at + 3600, 1, "trap:tcp/23") for n in range(count)]


def address(n: int) -> str:
    return f"203.0.113.{n % 250}" if n < 250 else f"198.51.100.{n % 250}"


class Endpoint:
    """An HTTP server on 127.0.0.1 that keeps the JSON body of every POST."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, str]] = []
        self.arrived = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                self.send_response(200)
                self.end_headers()
                with outer.arrived:
                    outer.bodies.append(body)
                    outer.arrived.notify_all()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/porttrap"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.bodies) >= count, PATIENCE):
                raise AssertionError(f"{len(self.bodies)} messages arrived, not {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    yield served
    served.close()


def dispatcher(
    url: str, group: float = 0.2, every: float = 3600.0, tmp: Path = Path()
) -> Dispatcher:
    action = NotifyAction(urls=(url,), group=group, every=every)
    return Dispatcher(Actions(notify=(action,)), Modes(), tmp, host="web-1")


def test_a_scan_of_a_thousand_bans_is_one_message(endpoint: Endpoint, tmp_path: Path) -> None:
    async def scenario() -> None:
        actions = dispatcher(endpoint.url, tmp=tmp_path)
        for ban in bans(1000):  # in batches, as the kernel takes them
            actions.after_kernel([ban])
        await asyncio.to_thread(endpoint.wait_for, 1)
        await actions.close()

    asyncio.run(scenario())
    assert len(endpoint.bodies) == 1
    body = endpoint.bodies[0]
    assert body["title"] == "porttrap on web-1: 1000 ban"
    lines = body["message"].splitlines()
    assert lines[0] == "1000 ban" and len(lines) == 22
    assert lines[1] == (
        "2027-01-15T08:00:00Z ban 203.0.113.0 until 2027-01-15T09:00:00Z (ban #1, trap:tcp/23)"
    )
    assert lines[-1] == "... and 980 more (porttrap history)"


def test_after_a_message_the_next_waits_for_every(endpoint: Endpoint, tmp_path: Path) -> None:
    async def scenario() -> None:
        actions = dispatcher(endpoint.url, every=3600.0, tmp=tmp_path)
        actions.after_kernel(bans(1))
        await asyncio.to_thread(endpoint.wait_for, 1)
        actions.after_kernel(bans(3, T0 + 60))  # a second burst, within the hour
        notices = actions._notices[0]
        assert notices._timer is not None
        loop = asyncio.get_running_loop()
        assert notices._timer.when() - loop.time() > 3000  # held back, not sent at once
        assert len(endpoint.bodies) == 1
        await actions.close()  # stopping: what is pending goes now, as one message

    asyncio.run(scenario())
    titles = [body["title"] for body in endpoint.bodies]
    assert titles == ["porttrap on web-1: 1 ban", "porttrap on web-1: 3 ban"]


def test_a_slow_service_never_holds_up_the_loop(tmp_path: Path) -> None:
    release, started = threading.Event(), threading.Event()
    delivered: list[str] = []

    def slow(title: str, body: str) -> bool:
        started.set()
        release.wait(PATIENCE)
        delivered.append(title)
        return True

    async def scenario() -> None:
        notices = Notices(NotifyAction(urls=("json://127.0.0.1/",), group=0.0), "web-1", slow)
        notices.add(from_ban(bans(1)[0], Modes()))
        await asyncio.to_thread(started.wait, PATIENCE)  # the send is under way, blocked
        notices.add(from_ban(bans(2)[1], Modes()))  # the loop goes on meanwhile
        assert len(notices._burst) == 1 and not delivered
        release.set()
        await notices.close()

    asyncio.run(scenario())
    assert delivered == ["porttrap on web-1: 1 ban", "porttrap on web-1: 1 ban"]


def test_a_failed_delivery_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = Endpoint()
    url = endpoint.url
    endpoint.close()  # nobody listens there any more

    async def scenario() -> Notices:
        notices = Notices(NotifyAction(urls=(url,), group=0.0), "web-1")
        notices.add(from_ban(bans(1)[0], Modes()))
        await asyncio.sleep(0)  # the timer of group 0 fires
        await notices.close()
        return notices

    notices = asyncio.run(scenario())
    assert (notices.sent, notices.failed) == (0, 1)
    assert "event=action-failed" in caplog.text and "action=notify" in caplog.text


def never(title: str, body: str) -> bool:
    raise AssertionError(f"sent {title}: {body}")


def test_events_not_listened_to_are_ignored() -> None:
    notices = Notices(NotifyAction(urls=("json://x/",), on=frozenset({Event.UNBAN})), "h", never)
    notices.add(from_ban(bans(1)[0], Modes()))
    assert len(notices._burst) == 0


def test_the_message_of_a_mixed_burst() -> None:
    burst = Burst()
    for ban in bans(2):
        burst.add(from_ban(ban, Modes()))
    title, body = message(burst, "scanners at $HOST$", "mail-1")
    assert title == "scanners at mail-1: 2 ban"
    assert body.splitlines()[0] == "2 ban" and len(body.splitlines()) == 3


def test_the_config_of_a_notification(tmp_path: Path) -> None:
    path = tmp_path / "porttrap.toml"
    path.write_text(
        '[[actions.notify]]\nurls = "json://127.0.0.1:9/x"\non = ["permanent-ban"]\n'
        'group = "30s"\nevery = "1h"\n'
    )
    (action,) = load(path).actions.notify
    assert action == NotifyAction(("json://127.0.0.1:9/x",), frozenset({Event.PERMANENT_BAN}),
                                  30.0, 3600.0)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('urls = ["bogus://token"]', "[actions.notify[0].urls] bogus:// is not a service Apprise"),
        ('urls = ["no scheme"]', "an Apprise URL starts with its service"),
        ("urls = []", "expected Apprise URLs such as"),
        ('urls = "json://x/"\ngroup = "soon"', "[actions.notify[0].group]"),
        ('urls = "json://x/"\nwhen = "now"', "[actions.notify[0].when]"),
        ('on = ["ban"]', 'missing "urls"'),
    ],
)
def test_a_bad_notification_is_a_config_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "porttrap.toml"
    path.write_text(f"[[actions.notify]]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert problem in str(err.value)
    assert "token" not in str(err.value)  # the rest of an Apprise URL may be a secret
