"""Both downstream transports against real servers on loopback: a raw HTTP/1.1 server that
answers in every framing (and misbehaves on request), and the aiohttp-based local predictor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import tracemalloc
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from infergraph.predictors import processes
from infergraph.router.engine.errors import UpstreamConnectionError, UpstreamTimeout
from infergraph.router.engine.transport import Reply, StepCall, parse_target
from infergraph.router.http.aiohttp_client import AiohttpTransport
from infergraph.router.http.fast_client import FastTransport, _HeadCache
from infergraph.router.observability.metrics import RouterMetrics
from infergraph.testing.watch import watched_send

JSON_HEADERS = (("Content-Type", "application/json"),)


FLOOD_BYTES = 48 * 1024 * 1024


class RawServer:
    """Answers by path: /length, /chunked, /close-delimited, /garbage, /hang, /drop-reused,
    /endless-header (a header that goes on until the client leaves, 64 MiB at most),
    /flood (48 MiB of chunks as fast as the client takes them)."""

    def __init__(self) -> None:
        self.connections = 0
        self.header_bytes_sent = 0
        self.flood_bytes_sent = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.eof_seen = asyncio.Event()
        self.request_seen = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _events(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Five server-sent events 50 ms apart; notes when the client goes away."""
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(5):
                event = b"data: %d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(0.05)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            if await reader.read(1) == b"":
                self.eof_seen.set()
        except ConnectionError:
            self.eof_seen.set()

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"f" * 65536 + b"\r\n"
        while self.flood_bytes_sent < FLOOD_BYTES:
            writer.write(chunk)
            self.flood_bytes_sent += 65536
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async def _endless_header(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: ")
        while self.header_bytes_sent < 64 * 1024 * 1024:
            writer.write(b"b" * 65536)
            self.header_bytes_sent += 65536
            await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name(f"fixture:raw-server-{self.connections}")
        self.tasks.add(task)
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers.get("Content-Length", "0")))
                self.requests.append((path, headers, body))
                self.request_seen.set()
                if path == "/drop-reused" and served > 0:
                    writer.close()
                    return
                served += 1
                if path in ("/length", "/drop-reused"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                        % (len(body), body)
                    )
                elif path == "/chunked":
                    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
                    writer.write(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for chunk in chunks:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                elif path == "/close-delimited":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
                    await writer.drain()
                    writer.close()
                    return
                elif path == "/endless-header":
                    await self._endless_header(writer)
                elif path == "/flood":
                    await self._flood(writer)
                elif path == "/garbage":
                    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
                elif path == "/hang":
                    if await reader.read(1) == b"":
                        self.eof_seen.set()
                    return
                elif path == "/sse":
                    await self._events(reader, writer)
                    return
                elif path == "/status":
                    writer.write(
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            return  # stopped by the fixture; ending normally keeps Python 3.11's server quiet
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    yield server
    await server.stop()


TRANSPORTS: dict[str, Callable[[], Any]] = {"fast": FastTransport, "aiohttp": AiohttpTransport}


@pytest.fixture(params=sorted(TRANSPORTS))
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    instance = TRANSPORTS[request.param]()
    await instance.start()
    yield instance
    await instance.close()


def call(
    url: str, body: bytes = b'{"x": 1}', timeout: float | None = 5.0, headers: Any = JSON_HEADERS
) -> StepCall:
    return StepCall(target=parse_target(url), body=body, headers=headers, timeout=timeout)


async def test_keep_alive_reuses_one_connection(transport: Any, raw_server: RawServer) -> None:
    for i in range(10):
        reply = await transport.send(call(raw_server.url("/length"), b'{"i": %d}' % i))
        assert reply == Reply(200, b'{"i": %d}' % i, "application/json")
    assert raw_server.connections == 1
    path, headers, _ = raw_server.requests[0]
    assert path == "/length"
    assert headers["Content-Type"] == "application/json"
    assert headers["Host"] == f"127.0.0.1:{raw_server.port}"


async def test_chunked_response_is_reassembled(transport: Any, raw_server: RawServer) -> None:
    body = b'{"data": "' + b"x" * 100 + b'"}'
    reply = await transport.send(call(raw_server.url("/chunked"), body))
    assert (reply.status, reply.body) == (201, body)
    again = await transport.send(call(raw_server.url("/chunked"), b"{}"))
    assert again.body == b"{}"
    assert raw_server.connections == 1


async def test_body_delimited_by_connection_close(transport: Any, raw_server: RawServer) -> None:
    for _ in range(2):
        reply = await transport.send(call(raw_server.url("/close-delimited"), b"abc"))
        assert (reply.status, reply.body) == (200, b"abc")
    assert raw_server.connections == 2


async def test_error_status_is_a_reply_not_an_exception(
    transport: Any, raw_server: RawServer
) -> None:
    reply = await transport.send(call(raw_server.url("/status")))
    assert (reply.status, reply.body) == (503, b"busy")


async def test_malformed_response_is_a_connection_error(
    transport: Any, raw_server: RawServer
) -> None:
    with pytest.raises(UpstreamConnectionError, match=raw_server.url("/garbage")):
        await transport.send(call(raw_server.url("/garbage")))


async def test_a_header_that_never_ends_is_cut_at_10_mib(
    transport: Any, raw_server: RawServer
) -> None:
    """llhttp reports a header only once it ends: the fast client took in 64 MiB of one (at a
    cost growing with its square, the event loop held for seconds) and waited for the rest.
    Now a reply's head is cut at Go's MaxResponseHeaderBytes, 10 MiB (aiohttp's client cuts a
    header line at 8 KiB)."""
    with pytest.raises(UpstreamConnectionError, match=raw_server.url("/endless-header")):
        await transport.send(call(raw_server.url("/endless-header")))
    assert raw_server.header_bytes_sent < 16 * 1024 * 1024


async def test_timeout_raises_and_closes_the_connection(
    transport: Any, raw_server: RawServer
) -> None:
    with pytest.raises(UpstreamTimeout, match="deadline exceeded"):
        await transport.send(call(raw_server.url("/hang"), timeout=0.2))
    await asyncio.wait_for(raw_server.eof_seen.wait(), 2)


async def test_cancellation_closes_the_connection(transport: Any, raw_server: RawServer) -> None:
    task = asyncio.ensure_future(transport.send(call(raw_server.url("/hang"), timeout=None)))
    await asyncio.wait_for(raw_server.request_seen.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(raw_server.eof_seen.wait(), 2)


async def test_connection_refused_names_the_url(transport: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamConnectionError, match=f'Post "http://127.0.0.1:{port}/x"'):
        await transport.send(call(f"http://127.0.0.1:{port}/x"))


async def test_a_request_the_server_read_and_dropped_is_not_sent_again(
    transport: Any, raw_server: RawServer
) -> None:
    """The server read the second request on its keep-alive connection and closed it: it may
    have acted on it, so (as Go's net/http for a POST) the call fails and nothing is resent."""
    first = await transport.send(call(raw_server.url("/drop-reused"), b"1"))
    with pytest.raises(UpstreamConnectionError, match=raw_server.url("/drop-reused")):
        await transport.send(call(raw_server.url("/drop-reused"), b"2"))
    third = await transport.send(call(raw_server.url("/drop-reused"), b"3"))
    assert (first.body, first.attempts, third.body, third.attempts) == (b"1", 1, b"3", 1)
    assert [body for _, _, body in raw_server.requests] == [b"1", b"2", b"3"]
    assert raw_server.connections == 2


async def test_a_failed_call_is_not_counted_as_a_retry(raw_server: RawServer) -> None:
    metrics = RouterMetrics()
    inner = FastTransport()
    try:
        for body in (b"1", b"2", b"3"):
            step = dataclasses.replace(
                call(raw_server.url("/drop-reused"), body), graph="g", node="root", step="s"
            )
            with contextlib.suppress(UpstreamConnectionError):
                await watched_send(inner, metrics, step)
    finally:
        await inner.close()
    labels = {"graph": "g", "node": "root", "step": "s"}
    assert metrics.registry.get_sample_value("infergraph_retries_total", labels) is None
    assert len(raw_server.requests) == 3


@pytest.fixture(scope="module")
def echo_port() -> Any:
    port = processes.free_port()
    with processes.predictor(port):
        yield port


async def test_large_bodies_round_trip(transport: Any, echo_port: int) -> None:
    body = b'{"blob": "' + random.Random(7).randbytes(5 * 1024 * 1024).hex().encode() + b'"}'
    reply = await transport.send(call(f"http://127.0.0.1:{echo_port}/echo", body, timeout=30))
    assert reply.status == 200
    assert reply.body == body


async def test_many_concurrent_calls_each_get_their_own_reply(
    transport: Any, echo_port: int
) -> None:
    url = f"http://127.0.0.1:{echo_port}/echo"
    replies = await asyncio.gather(
        *(transport.send(call(url, b'{"n": %d}' % i)) for i in range(300))
    )
    assert [r.body for r in replies] == [b'{"n": %d}' % i for i in range(300)]


async def test_propagated_headers_reach_the_server(transport: Any, raw_server: RawServer) -> None:
    headers = (("X-Request-Id", "abc"), ("Content-Type", "text/plain"))
    await transport.send(call(raw_server.url("/length"), b"hi", headers=headers))
    _, received, body = raw_server.requests[0]
    assert (received["X-Request-Id"], received["Content-Type"], body) == (
        "abc",
        "text/plain",
        b"hi",
    )


async def test_stream_delivers_chunks_as_they_arrive(transport: Any, raw_server: RawServer) -> None:
    stream_call = StepCall(
        parse_target(raw_server.url("/sse")), b"{}", JSON_HEADERS, 5.0, stream=True
    )
    reply = await transport.send(stream_call)
    assert (reply.status, reply.content_type, reply.body) == (200, "text/event-stream", b"")
    assert reply.stream is not None
    loop = asyncio.get_running_loop()
    arrivals = [(loop.time(), chunk) async for chunk in reply.stream]
    assert b"".join(c for _, c in arrivals) == b"".join(b"data: %d\n\n" % i for i in range(5))
    assert len(arrivals) >= 4
    assert arrivals[-1][0] - arrivals[0][0] >= 0.15  # spread over the server's pauses


async def test_leaving_a_stream_early_closes_the_connection(
    transport: Any, raw_server: RawServer
) -> None:
    stream_call = StepCall(
        parse_target(raw_server.url("/sse")), b"{}", JSON_HEADERS, 5.0, stream=True
    )
    reply = await transport.send(stream_call)
    assert reply.stream is not None
    first = await reply.stream.__anext__()
    assert first.startswith(b"data: 0")
    await reply.stream.aclose()
    await asyncio.wait_for(raw_server.eof_seen.wait(), 2)


async def test_a_stream_read_slowly_holds_the_server_back(
    transport: Any, raw_server: RawServer
) -> None:
    """A reader that stops taking a streamed reply (a slow client behind the router) stops
    the reading from the model server, so TCP holds the server back: the fast client kept
    reading into an unbounded queue, all 48 MiB of it. Read on, the stream is whole."""
    stream_call = StepCall(
        parse_target(raw_server.url("/flood")), b"{}", JSON_HEADERS, 30.0, stream=True
    )
    reply = await transport.send(stream_call)
    assert reply.stream is not None
    received = len(await reply.stream.__anext__())
    await asyncio.sleep(0.5)
    sent_while_waiting = raw_server.flood_bytes_sent
    async for chunk in reply.stream:
        received += len(chunk)
    assert sent_while_waiting < FLOOD_BYTES // 2, sent_while_waiting
    assert received == FLOOD_BYTES


def test_the_head_cache_keeps_no_large_header_blocks() -> None:
    """Header sets are the clients' (with an id per request they never repeat): the cache of
    encoded header blocks held every one, up to 4,096 of them, 8 GiB of 1 MiB headers. Now a
    block over 2 KiB is built on each call, and 100 such calls leave nothing behind."""
    heads = _HeadCache()
    target = parse_target("http://127.0.0.1:9/v1/models/m:predict")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            value = f"{i}-" + "x" * 1024 * 1024
            head = heads.head(target, (("X-Request-Id", value),), 2)
            assert head.endswith(b"X-Request-Id: %s\r\n\r\n" % value.encode())
            del value, head
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1024 * 1024, kept
    small = (("X-Request-Id", "r-1"),)
    assert heads.head(target, small, 2) == heads.head(target, small, 2)
