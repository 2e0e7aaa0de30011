"""Server-sent events through the router against a predictor that streams with known timing:
events reach the client as they are produced, and a client that leaves mid-stream closes the
upstream call. (vLLM on this machine's CPU sometimes delivers a whole stream at once even when
called directly, so arrival timing is proven here, where the producer's timing is fixed.)"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import orjson
import uvloop

from infergraph.testing.harness import Predictor, RouterFactory, graph, request

EVENTS = 8
INTERVAL = 0.15


def llm_graph(p: Predictor, **query: object) -> str:
    """A Switch that sends prompts to an ``openai`` step: the shape of graphs/vllm-openai.yaml."""
    step = {"name": "llm", "condition": "prompt", "protocol": "openai"}
    step["serviceUrl"] = p.url("llm", **query)
    return graph({"root": {"routerType": "Switch", "steps": [step]}})


async def test_events_reach_the_client_as_the_predictor_sends_them(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    port = start_router(llm_graph(clean_predictor, events=EVENTS, interval=INTERVAL))
    body = orjson.dumps({"prompt": "hi", "stream": True})
    arrivals: list[tuple[float, bytes]] = []
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.post(f"http://127.0.0.1:{port}/", data=body) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for chunk in response.content.iter_any():
                arrivals.append((time.monotonic() - started, chunk))
    text = b"".join(chunk for _, chunk in arrivals).decode()
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert [orjson.loads(e)["event"] for e in events[:-1]] == list(range(EVENTS))
    # The producer needs (EVENTS - 1) * INTERVAL seconds; a buffering router would deliver
    # everything in one read at the end.
    produce = (EVENTS - 1) * INTERVAL
    assert arrivals[0][0] < produce / 2, arrivals
    assert len(arrivals) >= EVENTS // 2, arrivals
    assert arrivals[-1][0] >= produce


def test_a_stream_through_the_router_equals_the_direct_stream(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(llm_graph(p, events=3))
    body = {"prompt": "hi", "stream": True}
    routed = request(port, body)
    direct = request(p.port, body, path=p.url("llm", events=3).split(str(p.port), 1)[1])
    assert routed.status == direct.status == 200
    assert routed.body == direct.body


def test_a_client_leaving_mid_stream_closes_the_upstream_call(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(llm_graph(p, events=100, interval=0.1))
    raw = orjson.dumps({"prompt": "hi", "stream": True})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw)
        )
        first = client.recv(4096)
        assert b"200 OK" in first
    deadline = time.monotonic() + 5
    while p.cancelled() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.cancelled() == 1


def test_the_head_and_the_first_event_leave_in_one_write(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    """The router holds the reply's head until the first chunk, as Go's net/http holds a
    handler's header until its first body write, and sends both in one write: on loopback one
    write arrives in one read. (The predictor sends its first event with its own head, and the
    next one 0.15 s later.)"""
    port = start_router(llm_graph(clean_predictor, events=3, interval=INTERVAL))
    raw = orjson.dumps({"prompt": "hi", "stream": True})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(raw), raw)
        )
        first = client.recv(65536)
    assert first.startswith(b"HTTP/1.1 200 OK\r\n"), first
    head, _, body = first.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body.count(b"data: ") == 1, first
    assert body.endswith(b"\n\n\r\n"), first


def test_uvloop_sets_nodelay_on_the_connections_it_accepts() -> None:
    """The server relies on it (it sets no socket option of its own): small writes, such as an
    event of a stream, leave at once rather than wait for an acknowledgement (Nagle)."""

    async def accept_one() -> int:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Probe, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            found = await asyncio.wait_for(accepted, 10)
            writer.close()
            return found
        finally:
            server.close()
            await server.wait_closed()

    assert uvloop.run(accept_one()) == 1
