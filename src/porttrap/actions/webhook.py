"""Webhooks: an HTTP POST of the event as JSON, with a timeout and retries.

The standard library's `urllib.request` does it in a worker thread (one per delivery; the
runner bounds how many run): a webhook is one small POST, not worth a dependency. Redirects
are not followed (urllib would turn the POST into a GET without the body): a 3xx is a failure
that says where the URL points. A 4xx other than 408 and 429 is not retried: asking again
would get the same answer. Everything else (5xx, 408, 429, timeouts, refused connections) is
retried after 1 s, 2 s, 4 s ... The URL is logged without its query, which may hold a token;
headers are never logged.
"""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from porttrap import __version__
from porttrap.actions.process import Ending

USER_AGENT = f"porttrap/{__version__}"
BACKOFF = 1.0  # seconds before the first retry; doubled for each further one
RETRIED_4XX = frozenset({408, 429})  # request timeout, too many requests: worth asking again
_BODY_LIMIT = 65536  # bytes of an answer read (and thrown away) before the connection closes

Post = Callable[[urllib.request.Request, float], int]


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a webhook delivery ended: after how many attempts, and the last error if any."""

    ending: Ending
    attempts: int
    error: str = ""
    status: int | None = None


def retry_delay(retry: int, base: float = BACKOFF) -> float:
    """Seconds before retry number `retry` (1, 2, ...): base, 2 base, 4 base ..."""
    return base * float(2 ** (retry - 1))


def retried(status: int) -> bool:
    """Whether an HTTP error status is worth another attempt."""
    return status >= 500 or status in RETRIED_4XX


def safe_url(url: str) -> str:
    """The URL as logged: without user info, query and fragment (they may hold secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def request(url: str, body: bytes, headers: tuple[tuple[str, str], ...]) -> urllib.request.Request:
    req = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - http(s) only, checked by the config
    req.add_header("Content-Type", "application/json")
    req.add_header("User-Agent", USER_AGENT)
    for name, value in headers:
        req.add_header(name, value)
    return req


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None  # the 3xx then raises HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(req: urllib.request.Request, timeout: float) -> int:
    """Send `req`; the HTTP status of a 2xx answer. Raises HTTPError for the others, URLError
    or OSError when no answer came."""
    with _OPENER.open(req, timeout=timeout) as answer:
        answer.read(_BODY_LIMIT)
        status: int = answer.status
        return status


def deliver(
    req: urllib.request.Request,
    timeout: float,
    retries: int,
    stopping: threading.Event,
    *,
    send: Post = post,
    backoff: float = BACKOFF,
) -> Delivery:
    """Try up to 1 + `retries` times, waiting between attempts; `stopping` set: no more tries
    (the daemon is stopping). Blocks: call it from a worker thread."""
    last = Delivery(Ending.FAILED, 0, "not attempted")
    for attempt in range(1, retries + 2):
        if attempt > 1 and stopping.wait(retry_delay(attempt - 1, backoff)):
            return Delivery(last.ending, last.attempts, f"{last.error} (daemon stopping)")
        last = _attempt(req, timeout, send, attempt)
        if last.ending is Ending.OK or (last.status is not None and not retried(last.status)):
            return last
    return last


def _attempt(req: urllib.request.Request, timeout: float, send: Post, attempt: int) -> Delivery:
    try:
        return Delivery(Ending.OK, attempt, status=send(req, timeout))
    except urllib.error.HTTPError as err:
        return Delivery(Ending.FAILED, attempt, _http_error(err), err.code)
    except urllib.error.URLError as err:
        timed_out = isinstance(err.reason, TimeoutError)
        ending = Ending.TIMED_OUT if timed_out else Ending.FAILED
        return Delivery(ending, attempt, _reason(err.reason, timeout))
    except TimeoutError:
        return Delivery(Ending.TIMED_OUT, attempt, f"no answer within {timeout:g}s")
    except (OSError, http.client.HTTPException, ValueError) as err:
        return Delivery(Ending.FAILED, attempt, str(err) or type(err).__name__)


def _http_error(err: urllib.error.HTTPError) -> str:
    if 300 <= err.code < 400:
        where = err.headers.get("Location", "?") if err.headers else "?"
        return f"HTTP {err.code}: redirected to {where}; set url to the address it points to"
    return f"HTTP {err.code} {err.reason}"


def _reason(reason: object, timeout: float) -> str:
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout:g}s"
    return str(reason)
