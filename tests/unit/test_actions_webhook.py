"""Webhooks against a real HTTP server on loopback: the JSON body and headers, a retry after a
500, none after a 400, a timeout, no redirect followed; and the retry policy itself."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from typing import Any

import pytest

from porttrap.actions import events, webhook
from porttrap.actions.jobs import WebhookJob
from porttrap.actions.process import Ending
from porttrap.config.schema import Modes, WebhookAction
from porttrap.model import Ban
from waiting import pause

T0 = 1_800_000_000.0


class Hook:
    """A webhook receiver: answers each POST with the next status of `answers` (then 204)."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.delay = 0.0
        self.received: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.received.append(
                    {"path": self.path, "headers": dict(self.headers),
                     "body": json.loads(self.rfile.read(length))}
                )  # fmt: skip
                pause(hook.delay, "a server that is slow to answer")
                status = hook.answers.pop(0) if hook.answers else 204
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "https://elsewhere.example.org/hook")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/porttrap?token=secret"


@pytest.fixture
def hook() -> Iterator[Hook]:
    made = Hook()
    thread = threading.Thread(target=made.server.serve_forever, daemon=True)
    thread.start()
    yield made
    made.server.shutdown()
    made.server.server_close()


def ban_event() -> events.ActionEvent:
    ban = Ban(ip_network("192.0.2.7/32"), T0, T0 + 3600, 1, "trap:tcp/23")
    return events.from_ban(ban, Modes())


def deliver(action: WebhookAction) -> Ending:
    async def scenario() -> Ending:
        job = WebhookJob(action, ban_event(), "gw1", threading.Event(), backoff=0.01)
        return await job.start(asyncio.get_running_loop())

    return asyncio.run(scenario())


def test_the_event_is_posted_as_json_with_the_headers(hook: Hook) -> None:
    action = WebhookAction(url=hook.url, headers=(("Authorization", "Bearer xyz"),))
    assert deliver(action) is Ending.OK
    (received,) = hook.received
    assert received["path"] == "/porttrap?token=secret"
    headers = received["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == "porttrap/0.1.0"
    assert headers["Authorization"] == "Bearer xyz"
    assert received["body"]["event"] == "ban" and received["body"]["address"] == "192.0.2.7"
    assert received["body"]["host"] == "gw1"


def test_a_500_is_retried(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger="porttrap")
    hook.answers = [500, 503]
    assert deliver(WebhookAction(url=hook.url, retries=3)) is Ending.OK
    assert len(hook.received) == 3
    assert "event=action-done action=webhook on=ban address=192.0.2.7" in caplog.text
    assert "status=204 attempts=3" in caplog.text


def test_a_400_is_not_retried_and_the_failure_is_logged_without_secrets(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    hook.answers = [400]
    assert deliver(WebhookAction(url=hook.url, retries=3)) is Ending.FAILED
    assert len(hook.received) == 1
    port = hook.server.server_address[1]
    assert (
        "event=action-failed action=webhook on=ban address=192.0.2.7 "
        f"url=http://127.0.0.1:{port}/porttrap status=400 attempts=1 "
        'error="HTTP 400 Bad Request"'
    ) in caplog.text
    assert "secret" not in caplog.text


def test_429_is_retried_and_retries_end(hook: Hook) -> None:
    hook.answers = [429, 500, 500]
    assert deliver(WebhookAction(url=hook.url, retries=2)) is Ending.FAILED
    assert len(hook.received) == 3  # the first and two retries


def test_a_slow_receiver_times_out(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="porttrap")
    hook.delay = 1.0
    assert deliver(WebhookAction(url=hook.url, timeout=0.2, retries=1)) is Ending.TIMED_OUT
    assert len(hook.received) == 2
    assert 'attempts=2 error="no answer within 0.2s"' in caplog.text


def test_a_redirect_is_not_followed(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="porttrap")
    hook.answers = [302]
    assert deliver(WebhookAction(url=hook.url)) is Ending.FAILED
    assert len(hook.received) == 1
    assert "redirected to https://elsewhere.example.org/hook; set url to" in caplog.text


def test_nobody_listening_is_retried_then_failed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="porttrap")
    hook = Hook()  # bound, never served, then closed: the port refuses
    url = hook.url
    hook.server.server_close()
    assert deliver(WebhookAction(url=url, retries=1)) is Ending.FAILED
    assert "attempts=2" in caplog.text and "Connection refused" in caplog.text


def test_backoff_doubles_and_stopping_ends_the_retries() -> None:
    assert [webhook.retry_delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert webhook.retried(500) and webhook.retried(408) and webhook.retried(429)
    assert not webhook.retried(400) and not webhook.retried(404)

    attempts: list[float] = []

    def refuse(_request: object, _timeout: float) -> int:
        attempts.append(0)
        raise OSError(111, "Connection refused")

    stopping = threading.Event()
    stopping.set()
    req = webhook.request("https://hooks.example.org/", b"{}", ())
    delivery = webhook.deliver(req, 1.0, 5, stopping, send=refuse, backoff=60.0)
    assert len(attempts) == 1  # no 60 s wait: the daemon is stopping
    assert delivery.ending is Ending.FAILED and "daemon stopping" in delivery.error


def test_safe_url_drops_secrets() -> None:
    assert webhook.safe_url("https://user:pw@hooks.example.org:8443/p?token=x#f") == (
        "https://hooks.example.org:8443/p"
    )
    assert webhook.safe_url("http://[2001:db8::1]/p") == "http://[2001:db8::1]/p"
