"""Server-sent events through the router against a predictor that streams with known timing:
events reach the client as they are produced, and a client that leaves mid-stream closes the
upstream call. (vLLM on this machine's CPU sometimes delivers a whole stream at once even when
called directly, so arrival timing is proven here, where the producer's timing is fixed.)"""

from __future__ import annotations

import socket
import time

import aiohttp
import orjson

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
