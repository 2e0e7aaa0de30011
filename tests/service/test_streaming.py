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
    return llm_graph_to(p.url("llm", **query))


def llm_graph_to(url: str) -> str:
    step = {"name": "llm", "condition": "prompt", "protocol": "openai", "serviceUrl": url}
    return graph({"root": {"routerType": "Switch", "steps": [step]}})


def post(raw: bytes, method: bytes = b"POST") -> bytes:
    return b"%s / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (method, len(raw), raw)


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
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(post(orjson.dumps({"prompt": "hi", "stream": True})))
        first = client.recv(4096)
        assert b"200 OK" in first
    deadline = time.monotonic() + 5
    while p.cancelled() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.cancelled() == 1


def test_the_head_leaves_before_a_slow_first_event(
    fault_server: str, start_router: RouterFactory
) -> None:
    """A model's first token can be seconds away: the reply's head leaves when the upstream's
    does, as Go's ReverseProxy flushes a streamed reply's header at once, and does not wait
    for the first event. (The fault server sends its head, then each event 2 s apart.)"""
    port = start_router(llm_graph_to(f"{fault_server}/sse?events=1&interval_ms=2000"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(post(b'{"prompt": "hi", "stream": true}'))
        first = client.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), first
        assert b"Transfer-Encoding: chunked" in head
        assert body == b"", first  # the event, 2 s later, comes in a read of its own
        later = client.recv(65536)
    assert later.startswith(b'14\r\ndata: {"event": 0}\n\n\r\n'), later


def test_a_head_request_gets_the_head_alone_and_the_connection_goes_on(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    """A streamed reply to HEAD is its head only, without Transfer-Encoding (as Go's net/http
    answers HEAD), so the next reply on the connection starts right after it; the router once
    ended it with a last chunk, which the client read as the start of the next reply."""
    port = start_router(llm_graph(clean_predictor, events=3))
    raw = b'{"prompt": "hi", "stream": true}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(post(raw, method=b"HEAD") + post(raw))
        received = b""
        while not received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"):
            chunk = client.recv(65536)
            assert chunk, received
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), received
    assert b"Transfer-Encoding" not in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), received
    assert rest.partition(b"\r\n\r\n")[2].count(b"data: ") == 4


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
