"""Failing model servers behind real router processes (the fault-injecting server of
``infergraph.testing.faults`` as a process): a short stream sent in one write, a backend that
hangs while another stays healthy, and one that reads a POST and drops the connection."""

from __future__ import annotations

import contextlib
import json
import threading
import time

from infergraph.testing import faults
from infergraph.testing.harness import Predictor, RouterFactory, graph, request


def test_a_short_stream_sent_in_one_write_arrives_whole_every_time(
    fault_server: str, start_router: RouterFactory
) -> None:
    """It used to arrive as a 200 with an empty, broken body about one time in three."""
    spec = graph(
        {
            "root": {
                "routerType": "Switch",
                "steps": [
                    {
                        "serviceUrl": f"{fault_server}/sse?events=3&one_write=1",
                        "protocol": "openai",
                        "condition": "prompt",
                    }
                ],
            }
        }
    )
    port = start_router(spec)
    for _ in range(30):
        answer = request(port, {"prompt": "hi", "stream": True})
        assert answer.status == 200
        assert answer.body == faults.sse_body(3)


def test_a_hung_backend_does_not_hold_up_calls_to_a_healthy_one(
    fault_server: str, clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    """With two connections per backend, two calls hang on the stalled backend; a call to the
    healthy predictor still answers at once, and a third call to the stalled one gets a 503
    naming its backend after --pool-timeout (it used to wait for ever, and so did everyone)."""
    spec = graph(
        {
            "root": {
                "routerType": "Switch",
                "steps": [
                    {"serviceUrl": f"{fault_server}/stall", "condition": '[@this].#(to=="hung")'},
                    {
                        "serviceUrl": clean_predictor.url("fine"),
                        "condition": '[@this].#(to=="fine")',
                    },
                ],
            }
        }
    )
    port = start_router(spec, extra=("--max-connections", "2", "--pool-timeout", "0.5"))

    def hang() -> None:
        with contextlib.suppress(TimeoutError):
            request(port, {"to": "hung"}, timeout=10)

    hung = [threading.Thread(target=hang, daemon=True) for _ in range(2)]
    for thread in hung:
        thread.start()
    deadline = time.monotonic() + 5
    while faults.counts(fault_server).get("/stall", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert request(port, {"to": "fine"}).status == 200
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    overflow = request(port, {"to": "hung"})
    waited = time.monotonic() - started
    assert overflow.status == 503
    assert "became free within 0.5 s" in overflow.json()["cause"]
    assert fault_server.removeprefix("http://") in overflow.json()["cause"]
    assert 0.4 <= waited < 2.0
    assert faults.counts(fault_server)["/stall"] == 2  # the third call was never sent


def test_a_post_the_backend_read_and_dropped_is_not_sent_again(
    fault_server: str, start_router: RouterFactory
) -> None:
    """The backend answers the first request of each connection and drops the second after
    reading it: each of 10 graph requests reaches it exactly once (it used to be twice)."""
    spec = graph(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{"serviceUrl": f"{fault_server}/close-after-read?nth=2"}],
            }
        }
    )
    port = start_router(spec)
    statuses = [request(port, {"n": i}).status for i in range(10)]
    assert faults.counts(fault_server)["/close-after-read"] == 10
    assert statuses == [200, 500] * 5
    failure = request(port, {"n": 10})  # a new connection's first request: answered
    assert failure.status == 200
    assert json.loads(failure.body) == {"n": 10}
