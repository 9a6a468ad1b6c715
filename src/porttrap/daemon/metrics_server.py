"""The Prometheus endpoint: a small HTTP/1.1 server on the daemon's own event loop.

Not prometheus_client's `start_http_server`: it serves from a thread, which would read the
daemon's dicts while the loop changes them. Here a scrape is collected on the loop, between two
events, and costs the loop what building the text costs (see bench/metrics_scrape.py).

What it answers: GET (or HEAD) /metrics with the registry's text, in the format the scraper
asks for (the client library's own negotiation: Prometheus text or OpenMetrics), gzipped when
accepted; 404 for another path, 405 for another method, 400 for what is not HTTP, 431 for a
request head over MAX_HEAD bytes. One request per connection. A client that sends its request
too slowly, or reads the answer too slowly, is cut off after TIMEOUT seconds, and at most
MAX_CLIENTS connections are served at once (more are closed at once): whatever a client does,
the daemon only spends a bounded amount of memory and time on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from porttrap import log
from porttrap.config.metrics import exposure_warning
from porttrap.config.schema import Listen
from porttrap.errors import PorttrapError

if TYPE_CHECKING:  # the client library is imported when an endpoint starts (see snapshot_registry)
    from prometheus_client.registry import Collector

    from porttrap.core.snapshot import Snapshot

PATH = "/metrics"
MAX_HEAD = 8192  # bytes of request line and headers (a scraper sends about 300)
MAX_CLIENTS = 16  # connections served at once
READ_TIMEOUT = 5.0  # seconds for the request head to arrive
TIMEOUT = 15.0  # seconds for a whole exchange (Prometheus's default scrape timeout is 10 s)
CLOSE_TIMEOUT = 2.0  # seconds for the listener to close when the daemon stops
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error"}  # fmt: skip
_BIND_FIXES = {
    errno.EADDRINUSE: "another program (or another porttrap) holds this port: give [metrics] "
    "listen another port, or stop that program (`ss -ltnp` shows which)",
    errno.EADDRNOTAVAIL: "no interface of this host has this address: give [metrics] listen "
    "one it has, such as 127.0.0.1",
    errno.EACCES: "ports below 1024 need the CAP_NET_BIND_SERVICE capability: give [metrics] "
    "listen a port above 1023, such as 9477",
    errno.EAFNOSUPPORT: "this host has no IPv6: give [metrics] listen an IPv4 address",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, *, with_body: bool) -> bytes:
        head = [f"HTTP/1.1 {self.status} {REASONS[self.status]}"]
        headers = {"Content-Type": "text/plain; charset=utf-8", **self.headers}
        headers |= {"Content-Length": str(len(self.body)), "Connection": "close"}
        head += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (
            self.body if with_body else b""
        )


def text(status: int, message: str, **headers: str) -> Response:
    return Response(status, f"{message}\n".encode(), headers)


def snapshot_registry(snapshot: Callable[[], Snapshot]) -> Callable[[], Collector]:
    """The registry of the daemon's snapshots, made when an endpoint first starts: importing
    the client library takes about 0.1 s, which a daemon without metrics need not pay."""

    def make() -> Collector:
        from porttrap.daemon.metrics import registry_for

        return registry_for(snapshot)

    return make


class MetricsServer:
    """Serves the registry `make_registry` gives on the address of `[metrics] listen`; off
    until `start` is given one.

    `start(listen)` and `close()` may be called again (a reload with another address); the
    connection limits hold for each listener."""

    def __init__(self, make_registry: Callable[[], Collector]) -> None:
        self._make_registry = make_registry
        self._registry: Collector | None = None
        self.listen: Listen | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.refused = 0  # connections closed at once: MAX_CLIENTS were being served

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound address and port (with port 0 asked, the one the kernel chose)."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, listen: Listen | None) -> None:
        """Listen on `listen` (None: stay off). Raises PorttrapError, with the address and the
        fix, when the address cannot be bound."""
        if listen is None:
            return
        if self._server is not None:
            raise RuntimeError(f"the metrics endpoint already listens on {self.listen}")
        if self._registry is None:
            self._registry = self._make_registry()
        try:
            self._server = await asyncio.start_server(
                self._serve, str(listen.host), listen.port, limit=MAX_HEAD, reuse_address=True
            )
        except OSError as err:
            raise PorttrapError(bind_error(listen, err)) from err
        self.listen = listen
        log.event("metrics-listening", url=f"http://{listen}{PATH}")
        if warning := exposure_warning(listen):
            log.event("metrics-exposed", logging.WARNING, hint=warning)

    async def restart(self, listen: Listen | None) -> None:
        """Move to `listen` (a reload): close, then listen there. When it cannot be bound, the
        old address is taken again (if it still can be) and the error raised."""
        old = self.listen
        if listen == old:
            return
        await self.close()
        try:
            await self.start(listen)
        except PorttrapError:
            with contextlib.suppress(PorttrapError):
                await self.start(old)
            raise

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        server, self._server, self.listen = self._server, None, None
        if server is None:
            return
        server.close()
        for writer in list(self._clients):
            writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await server.wait_closed()

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            self.refused += 1
            writer.transport.abort()
            return
        self._clients.add(writer)
        try:
            async with asyncio.timeout(TIMEOUT):
                await self._exchange(reader, writer)
                writer.close()
                await writer.wait_closed()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # gone, or too slow: cut off below
        except Exception:  # a bug here must not reach the loop's other work
            log.LOGGER.exception(log.fields("metrics-failed"))
        finally:
            self._clients.discard(writer)
            writer.transport.abort()  # a no-op once closed

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            request, response = None, text(431, f"request head over {MAX_HEAD} bytes")
        else:
            request = parse_head(head)
            response = self.answer(request)
        writer.write(response.encode(with_body=request is None or request.method != "HEAD"))
        await writer.drain()

    def answer(self, request: Request | None) -> Response:
        if request is None:
            return text(400, "not an HTTP/1 request")
        if request.method not in ("GET", "HEAD"):
            return text(405, f"{request.method} is not allowed here: use GET", Allow="GET, HEAD")
        if request.path != PATH:
            return text(404, f"nothing at {request.path[:100]}: porttrap's metrics are at {PATH}")
        try:
            return self._metrics(request)
        except Exception:  # a bug in the collector: the scrape fails, the daemon goes on
            log.LOGGER.exception(log.fields("metrics-failed"))
            return text(500, "collecting the metrics failed: see porttrap's log")

    def _metrics(self, request: Request) -> Response:
        from prometheus_client.exposition import choose_encoder, gzip_accepted

        assert self._registry is not None  # made by start()
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        body = encode(self._registry)
        headers = {"Content-Type": content_type}
        if gzip_accepted(request.headers.get("accept-encoding", "")):
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        return Response(200, body, headers)


def parse_head(head: bytes) -> Request | None:
    """The request line and headers; None when they are not HTTP/1.x."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
        return None
    method, target, _version = parts
    try:
        path = urlsplit(target).path  # also the absolute form: http://host:9477/metrics
    except ValueError:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not line:
            continue
        if not colon or not name or name != name.strip():
            return None
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return Request(method, path, headers)


def bind_error(listen: Listen, err: OSError) -> str:
    fix = _BIND_FIXES.get(err.errno or 0, "check [metrics] listen")
    why = os.strerror(err.errno) if err.errno else str(err)  # asyncio rewords strerror
    return f"cannot listen for metrics on {listen} ([metrics] listen): {why}; {fix}"
