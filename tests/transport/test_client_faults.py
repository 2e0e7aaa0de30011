"""Both downstream transports against the fault-injecting server (``infergraph.testing.faults``):
short streams that arrive in one read, per-backend connection limits, POSTs that must not be
sent twice, idle keep-alive connections that expire before the server closes them, and a
retry that is safe because the request provably never left."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from infergraph.predictors import processes
from infergraph.router.engine.errors import (
    UpstreamConnectionError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from infergraph.router.engine.transport import Reply, StepCall, parse_target
from infergraph.router.http.factory import ManagedTransport, make_transport
from infergraph.router.http.fast_client import FastTransport
from infergraph.router.observability.metrics import RouterMetrics
from infergraph.router.settings import Client, GraphSource, RouterSettings
from infergraph.testing import faults
from infergraph.testing.faults import FaultServer
from infergraph.testing.watch import watched_send

JSON_HEADERS = (("Content-Type", "application/json"),)
CLIENTS: tuple[Client, ...] = ("fast", "aiohttp")


def call(
    url: str, body: bytes = b'{"x": 1}', timeout: float | None = 5.0, stream: bool = False
) -> StepCall:
    return StepCall(parse_target(url), body, JSON_HEADERS, timeout, stream=stream)


@contextlib.asynccontextmanager
async def transport(client: Client, **settings: Any) -> AsyncIterator[ManagedTransport]:
    """The transport the router would build from these settings (the factory's wiring)."""
    built = make_transport(RouterSettings(GraphSource(graph_json="{}"), client=client, **settings))
    await built.start()
    try:
        yield built
    finally:
        await built.close()


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as started:
        yield started


async def read_stream(reply: Reply) -> bytes:
    assert reply.stream is not None
    return b"".join([chunk async for chunk in reply.stream])


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stream_that_arrives_in_one_write_is_delivered_whole(
    client: Client, server: FaultServer
) -> None:
    """The head, every event and the last chunk in one TCP write: often one read."""
    async with transport(client) as http:
        for _ in range(50):
            reply = await http.send(call(server.url("/sse?events=4&one_write=1"), stream=True))
            assert (reply.status, reply.content_type) == (200, "text/event-stream")
            assert await asyncio.wait_for(read_stream(reply), 2) == faults.sse_body(4)
    assert server.counts["/sse"] == 50


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_hung_backend_does_not_hold_up_the_others(client: Client) -> None:
    async with (
        FaultServer() as hung,
        FaultServer() as healthy,
        transport(client, max_connections=2, pool_timeout=0.3) as http,
    ):
        stalled = [asyncio.ensure_future(http.send(call(hung.url("/stall"), timeout=None)))]
        stalled.append(asyncio.ensure_future(http.send(call(hung.url("/stall"), timeout=None))))
        try:
            await hung.delivered("/stall", 2)
            # Another backend has its own connections: it answers at once.
            started = time.monotonic()
            reply = await asyncio.wait_for(http.send(call(healthy.url("/ok"), b"{}")), 1)
            assert (reply.status, reply.body) == (200, b"{}")
            assert time.monotonic() - started < 0.25
            # The hung one has no connection left: the third call waits pool_timeout, then 503.
            started = time.monotonic()
            with pytest.raises(UpstreamOverloaded) as failure:
                await http.send(call(hung.url("/stall"), timeout=None))
            waited = time.monotonic() - started
            assert 0.28 <= waited < 1.0, waited
            assert failure.value.status == 503
            assert failure.value.cause == (
                f'Post "{hung.url("/stall")}": no connection to http://127.0.0.1:{hung.port} '
                "became free within 0.3 s (2 in use)"
            )
            assert hung.counts["/stall"] == 2  # it never reached the server
        finally:
            for task in stalled:
                task.cancel()
            await asyncio.gather(*stalled, return_exceptions=True)
        # Cancelled calls give their connections back.
        with pytest.raises(UpstreamTimeout):
            await http.send(call(hung.url("/stall"), timeout=0.2))
        assert hung.counts["/stall"] == 3


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stream_holds_its_connection_until_it_ends(client: Client) -> None:
    async with (
        FaultServer() as server,
        transport(client, max_connections=1, pool_timeout=0.2) as http,
    ):
        slow = server.url("/sse?events=3&interval_ms=100")
        reply = await http.send(call(slow, stream=True))
        with pytest.raises(UpstreamOverloaded):
            await http.send(call(server.url("/ok")))
        assert await read_stream(reply) == faults.sse_body(3)
        # Read to the end, left early, or never iterated at all: the connection is given back.
        for leave in ("read", "early", "unread"):
            reply = await http.send(call(slow, stream=True))
            assert reply.stream is not None
            if leave == "read":
                await read_stream(reply)
            elif leave == "early":
                await reply.stream.__anext__()
            await reply.stream.aclose()
            assert (await asyncio.wait_for(http.send(call(server.url("/ok"))), 1)).status == 200
        assert server.counts["/sse"] == 4


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_stream_read_to_its_end_leaves_its_connection_for_the_next_call(
    client: Client,
) -> None:
    """As Go's client does once a body reaches EOF: no TCP connection per streamed call. A
    stream left early is aborted, so its connection is not reused."""
    async with FaultServer() as server, transport(client) as http:
        url = server.url("/sse?events=2&interval_ms=10")
        for _ in range(3):
            assert await read_stream(await http.send(call(url, stream=True))) == faults.sse_body(2)
        assert (await http.send(call(server.url("/ok")))).status == 200
        assert server.connections == 1
        reply = await http.send(call(url, stream=True))
        assert reply.stream is not None
        await reply.stream.__anext__()
        await reply.stream.aclose()
        assert await read_stream(await http.send(call(url, stream=True))) == faults.sse_body(2)
        assert server.connections == 2
        assert server.counts["/sse"] == 5


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_post_the_server_read_is_never_sent_again(client: Client) -> None:
    """The server reads the second request of every connection, then closes without an
    answer: as Go's net/http, the client reports it and does not send the POST again."""
    async with FaultServer() as server, transport(client) as http:
        url = server.url("/close-after-read?nth=2")
        outcomes: list[int | str] = []
        for i in range(20):
            try:
                outcomes.append((await http.send(call(url, b"%d" % i))).status)
            except UpstreamConnectionError as exc:
                outcomes.append(exc.cause.split(": ", 1)[0])
    assert server.counts["/close-after-read"] == 20
    assert outcomes == [200, f'Post "{url}"'] * 10
    assert server.connections == 10


@pytest.mark.parametrize("client", CLIENTS)
async def test_idle_connections_expire_before_the_server_closes_them(client: Client) -> None:
    """The server drops connections idle for 1 s; the client stops reusing them at 0.5 s."""
    async with (
        FaultServer(keepalive=1.0) as server,
        transport(client, idle_connection_seconds=0.5) as http,
    ):
        for i in range(3):
            if i:
                await asyncio.sleep(0.8)
            reply = await http.send(call(server.url("/ok"), b"%d" % i))
            assert (reply.status, reply.body, reply.attempts) == (200, b"%d" % i, 1)
        # Without a pause the connection is reused.
        await http.send(call(server.url("/ok")))
    assert server.connections == 3
    assert server.counts["/ok"] == 4


FAULTS = {
    "/reset": UpstreamConnectionError,
    "/garbage": UpstreamConnectionError,
    "/close-after-headers": UpstreamConnectionError,
    "/close-after-read": UpstreamConnectionError,
    "/stall": UpstreamTimeout,
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("path", sorted(FAULTS))
async def test_each_fault_on_a_reused_connection_is_reported_once(
    client: Client, path: str, server: FaultServer
) -> None:
    async with transport(client) as http:
        assert (await http.send(call(server.url("/ok")))).status == 200
        with pytest.raises(FAULTS[path], match=f'Post "{server.url(path)}"'):
            await http.send(call(server.url(path), timeout=0.5))
        assert (await http.send(call(server.url("/ok")))).status == 200
    assert server.counts == {"/ok": 2, path: 1}


@pytest.mark.parametrize("client", CLIENTS)
async def test_slow_trickling_and_failing_answers(client: Client) -> None:
    async with FaultServer(seed=7) as server, transport(client) as http:
        started = time.monotonic()
        assert (await http.send(call(server.url("/slow?ms=150"), b"[1]"))).body == b"[1]"
        assert time.monotonic() - started >= 0.15
        started = time.monotonic()
        body = b'{"text": "%s"}' % (b"x" * 40)
        assert (await http.send(call(server.url("/trickle?bytes_per_s=200"), body))).body == body
        assert time.monotonic() - started >= 0.2
        statuses = [(await http.send(call(server.url("/fail?rate=0.5")))).status for _ in range(20)]
    draws = random.Random(7)
    assert statuses == [503 if draws.random() < 0.5 else 200 for _ in range(20)]
    assert server.counts == {"/slow": 1, "/trickle": 1, "/fail": 20}


def test_fast_client_resends_only_what_never_left() -> None:
    """The server resets an idle connection while the client's loop is busy; the next write
    on it fails at once, so the request never left and is sent on a new connection."""

    async def scenario(url: str) -> tuple[Reply, Reply, float | None]:
        metrics = RouterMetrics()
        inner = FastTransport()
        try:
            first = await watched_send(inner, metrics, call(url, b"1"))
            time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop: the reset arrives but is not processed
            second = await watched_send(inner, metrics, call(url, b"2"))
        finally:
            await inner.close()
        labels = {"graph": "", "node": "", "step": ""}
        return first, second, metrics.registry.get_sample_value("infergraph_retries_total", labels)

    with FaultServer().in_thread() as server:
        first, second, retries = asyncio.run(scenario(server.url("/ok?reset_after_ms=20")))
        assert (first.body, first.attempts) == (b"1", 1)
        assert (second.body, second.attempts) == (b"2", 2)
        assert retries == 1
        assert server.counts["/ok"] == 2
        assert server.connections == 2


def test_the_fault_server_runs_as_a_process() -> None:
    """The process form for black-box tests: a default mode for paths that name none."""
    port = processes.free_port()
    base = f"http://127.0.0.1:{port}"

    def post(path: str) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, b"{}")) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    with faults.fault_process(port, "fail?status=503&rate=1"):
        assert [post("/v1/models/m:predict"), post("/v1/models/m:predict"), post("/ok")] == [
            503,
            503,
            200,
        ]
        assert faults.counts(base) == {"/v1/models/m:predict": 2, "/ok": 1}
        assert faults.counts(base, reset=True) == {}
        assert faults.counts(base) == {}
