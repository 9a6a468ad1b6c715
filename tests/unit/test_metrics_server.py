"""The metrics endpoint over real TCP on 127.0.0.1 (binding a loopback port changes no firewall):
what each request gets, and that slow, greedy or broken clients cost the daemon nothing."""

from __future__ import annotations

import asyncio
import gzip
import logging
import socket
import struct
import subprocess  # noqa: TID251 - a fresh interpreter, to see what it imports
import sys
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import ip_address

import pytest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from ports import free_ports
from porttrap.config.schema import Listen
from porttrap.daemon import metrics_server
from porttrap.daemon.metrics_server import MetricsServer, parse_head
from porttrap.errors import PorttrapError
from waiting import eventually

LOOPBACK = Listen(ip_address("127.0.0.1"), 0)  # port 0: the kernel picks a free one
SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"


class Scrapes(Collector):
    """Counts the scrapes; `fail` makes the next one raise, `padding` makes the text large."""

    def __init__(self) -> None:
        self.count = 0
        self.fail = False
        self.padding = 0

    def collect(self) -> Iterator[Metric]:
        if self.fail:
            raise RuntimeError("a bug in a collector")
        self.count += 1
        family = CounterMetricFamily("porttrap_scrapes", "x" * self.padding or "Scrapes.")
        family.add_metric([], self.count)
        yield family


def registry() -> tuple[CollectorRegistry, Scrapes]:
    scrapes = Scrapes()
    made = CollectorRegistry()
    made.register(scrapes)
    return made, scrapes


Test = Callable[[MetricsServer, Scrapes], Awaitable[None]]


def serve(test: Test) -> None:
    """Run `test` against a server listening on 127.0.0.1, closed afterwards whatever happens."""

    async def main() -> None:
        made, scrapes = registry()
        server = MetricsServer(lambda: made)
        await server.start(LOOPBACK)
        try:
            async with asyncio.timeout(20):
                await test(server, scrapes)
        finally:
            await server.close()

    asyncio.run(main())


async def exchange(server: MetricsServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request`, read until the server closes; (status, headers, body)."""
    assert server.address is not None
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert int(headers["Content-Length"]) == len(body) or request.startswith(b"HEAD")
    return int(lines[0].split(" ")[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server ended the connection (EOF or a reset) without a response."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


def test_get_metrics_gives_the_registry_in_prometheus_text() -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        status, headers, body = await exchange(server, SCRAPE)
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert headers["Connection"] == "close"
        (family,) = text_string_to_metric_families(body.decode())
        assert (family.name, family.samples[0].value) == ("porttrap_scrapes", 1)

    serve(test)


def test_the_format_is_the_one_the_scraper_asks_for_gzipped_when_accepted() -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        accept = b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        request = b"GET /metrics HTTP/1.1\r\nAccept: %s\r\nAccept-Encoding: gzip\r\n\r\n" % accept
        status, headers, body = await exchange(server, request)
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(body).decode()
        assert "porttrap_scrapes_total 1.0" in text and text.endswith("# EOF\n")

    serve(test)


def test_head_gives_the_headers_alone_and_absolute_targets_and_queries_are_understood() -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        status, headers, body = await exchange(server, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert (status, body) == (200, b"")
        assert int(headers["Content-Length"]) > 0
        request = b"GET http://127.0.0.1:9477/metrics?x=1 HTTP/1.1\r\n\r\n"
        assert (await exchange(server, request))[0] == 200

    serve(test)


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 404, b"nothing at /: porttrap's metrics are at /metrics\n"),
        (b"GET /metrics/ HTTP/1.1\r\n\r\n", 404, b"nothing at /metrics/"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, b"POST is not allowed"),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405, b"use GET"),
        (b"GET /metrics\r\n\r\n", 400, b"not an HTTP/1 request"),  # HTTP/0.9
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, b"not an HTTP/1"),  # TLS
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400, b"not an HTTP/1"),
    ],
)
def test_what_is_not_a_scrape_gets_its_status(
    request_bytes: bytes, status: int, says: bytes
) -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        got, headers, body = await exchange(server, request_bytes)
        assert (got, says in body) == (status, True)
        if status == 405:
            assert headers["Allow"] == "GET, HEAD"
        assert scrapes.count == 0  # nothing was collected for it

    serve(test)


def test_an_oversized_request_head_gets_431_without_being_read_whole() -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * (metrics_server.MAX_HEAD * 4)
        status, _, body = await exchange(server, huge + b"\r\n\r\n")
        assert (status, body) == (431, b"request head over 8192 bytes\n")
        assert (await exchange(server, SCRAPE))[0] == 200

    serve(test)


def test_a_client_that_sends_nothing_is_cut_off_while_others_are_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_server, "READ_TIMEOUT", 0.3)

    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        assert server.address is not None
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # ...and never the rest
        started = loop.time()
        assert (await exchange(server, SCRAPE))[0] == 200  # meanwhile, a scrape is answered
        assert await closed_by_server(reader)
        assert 0.25 <= loop.time() - started < 2
        writer.close()

    serve(test)


def test_a_client_that_does_not_read_its_answer_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_server, "TIMEOUT", 0.5)

    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        assert server.address is not None
        scrapes.padding = 16 * 1024 * 1024  # far more than the socket buffers hold
        sock = socket.create_connection(server.address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(SCRAPE)
        # the connection is dropped, its buffers freed
        await eventually(lambda: not server._clients, what="the stuck client dropped")
        sock.close()
        scrapes.padding = 0
        assert (await exchange(server, SCRAPE))[0] == 200

    serve(test)


def test_connections_past_the_limit_are_closed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_server, "MAX_CLIENTS", 2)

    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        assert server.address is not None
        idle = [await asyncio.open_connection(*server.address) for _ in range(2)]
        await eventually(lambda: len(server._clients) == 2, what="both accepted")
        reader, writer = await asyncio.open_connection(*server.address)
        writer.write(SCRAPE)
        assert await closed_by_server(reader)
        assert server.refused == 1
        for _, idle_writer in idle:
            idle_writer.close()
        await eventually(lambda: not server._clients, what="both closed")
        assert (await exchange(server, SCRAPE))[0] == 200

    serve(test)


def test_a_client_that_resets_mid_request_harms_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        assert server.address is not None
        for _ in range(5):
            sock = socket.create_connection(server.address)
            sock.sendall(SCRAPE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, likely before the answer is written
        await eventually(lambda: not server._clients, what="the reset connections gone")
        assert (await exchange(server, SCRAPE))[0] == 200
        assert not server._clients

    with caplog.at_level(logging.DEBUG, logger="porttrap"):
        serve(test)
    assert "metrics-failed" not in caplog.text


def test_a_failing_collector_gives_500_and_a_logged_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        scrapes.fail = True
        status, _, body = await exchange(server, SCRAPE)
        assert (status, body) == (500, b"collecting the metrics failed: see porttrap's log\n")
        scrapes.fail = False
        assert (await exchange(server, SCRAPE))[0] == 200

    serve(test)
    assert "event=metrics-failed" in caplog.text and "a bug in a collector" in caplog.text


def test_an_address_in_use_is_refused_with_the_address_the_error_and_the_fix() -> None:
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as taken:
            port = taken.getsockname()[1]
            server = MetricsServer(lambda: registry()[0])
            with pytest.raises(PorttrapError) as caught:
                await server.start(Listen(ip_address("127.0.0.1"), port))
            assert server.address is None
        assert str(caught.value) == (
            f"cannot listen for metrics on 127.0.0.1:{port} ([metrics] listen): Address already "
            "in use; another program (or another porttrap) holds this port: give [metrics] "
            "listen another port, or stop that program (`ss -ltnp` shows which)"
        )

    asyncio.run(main())


def test_an_address_the_host_does_not_have_is_refused_with_the_fix() -> None:
    async def main() -> None:
        server = MetricsServer(lambda: registry()[0])
        with pytest.raises(PorttrapError) as caught:
            await server.start(Listen(ip_address("192.0.2.77"), 9477))
        assert str(caught.value) == (
            "cannot listen for metrics on 192.0.2.77:9477 ([metrics] listen): Cannot assign "
            "requested address; no interface of this host has this address: give [metrics] "
            "listen one it has, such as 127.0.0.1"
        )

    asyncio.run(main())


def test_restart_moves_the_listener_and_falls_back_when_the_new_address_fails() -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        (free,) = free_ports(1)
        moved = Listen(ip_address("127.0.0.1"), free)
        await server.restart(moved)
        assert server.address == ("127.0.0.1", free)
        assert (await exchange(server, SCRAPE))[0] == 200
        with pytest.raises(PorttrapError, match=r"192\.0\.2\.77:9477"):
            await server.restart(Listen(ip_address("192.0.2.77"), 9477))
        assert server.listen == moved and server.address == ("127.0.0.1", free)  # back there
        assert (await exchange(server, SCRAPE))[0] == 200
        await server.restart(None)
        assert server.address is None

    serve(test)


def test_close_cuts_open_connections_and_frees_the_port() -> None:
    async def test(server: MetricsServer, scrapes: Scrapes) -> None:
        assert server.address is not None
        host, port = server.address
        reader, writer = await asyncio.open_connection(host, port)
        await eventually(lambda: len(server._clients) == 1, what="the connection accepted")
        await server.close()
        assert await closed_by_server(reader)
        writer.close()
        await server.start(Listen(ip_address(host), port))  # the same port again at once
        assert (await exchange(server, SCRAPE))[0] == 200

    serve(test)


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"GET /metrics HTTP/1.1\r\nAccept: a\r\naccept: b\r\n\r\n",
         ("GET", "/metrics", {"accept": "a, b"})),
        (b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n", ("GET", "/metrics", {})),
        (b"GET /metrics HTTP/2\r\n\r\n", None),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", None),
        (b"GET /metrics HTTP/1.1\r\n Folded: x\r\n\r\n", None),
    ],
)  # fmt: skip
def test_request_heads(head: bytes, parsed: tuple[str, str, dict[str, str]] | None) -> None:
    request = parse_head(head)
    got = None if request is None else (request.method, request.path, request.headers)
    assert got == parsed


def test_the_client_library_is_imported_only_when_an_endpoint_starts() -> None:
    """It takes about 0.1 s to import: the CLI's commands (which import the daemon) and a
    daemon without [metrics] do not pay it."""
    code = "import sys, porttrap.cli.main; print('prometheus_client' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout == "False\n"
