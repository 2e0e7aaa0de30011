"""The request handler in process, on the fake transport: a streamed reply closed before its
first chunk (the client left between the handler's answer and the first write) still closes
the upstream call and ends the request's recording as a client's leaving."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncGenerator

from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.http import oip
from infergraph.router.observability.metrics import RouterMetrics
from infergraph.router.observability.telemetry import Telemetry
from infergraph.router.protocols import OIP_INFER_REQUEST
from infergraph.router.service.handler import RouterService
from infergraph.router.service.messages import Request
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.settings import GraphSource, RouterSettings
from infergraph.testing.fakes import FakeTransport, url

SPEC = json.dumps(
    {
        "nodes": {
            "root": {
                "routerType": "Sequence",
                "steps": [{"serviceUrl": url("llm"), "protocol": "openai"}],
            }
        }
    }
)


def service(transport: FakeTransport, metrics: RouterMetrics) -> RouterService:
    settings = RouterSettings(source=GraphSource(graph_json=SPEC))
    registry = GraphRegistry(settings.source)
    registry.load()
    return RouterService(settings, registry, transport, telemetry=Telemetry(metrics=metrics))


def counts(metrics: RouterMetrics) -> dict[str, float]:
    snapshot = metrics.snapshot()
    found = {f"code {k[1]}": v for k, v in snapshot["infergraph_requests"].items()}
    found.update(
        {f"cause {k[1]}": v for k, v in snapshot["infergraph_errors"].items()},
    )
    found["in flight"] = sum(snapshot["infergraph_requests_in_flight"].values())
    return found


async def test_a_stream_closed_before_its_first_chunk_closes_the_upstream_call() -> None:
    closed: list[bool] = []

    async def chunks() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: 1\n\n"
        finally:
            closed.append(True)

    upstream = chunks()
    await upstream.asend(None)  # started, as a transport's body stream is once headers arrive

    async def streaming(call: StepCall) -> Reply:
        return Reply(200, b"", "text/event-stream", stream=upstream)

    metrics = RouterMetrics()
    handler = service(FakeTransport(script={url("llm"): streaming}), metrics)
    body = b'{"prompt": "x", "stream": true}'
    response = await handler.handle(Request("POST", "/", (), body))
    assert response.stream is not None
    assert counts(metrics)["in flight"] == 1  # the recording lasts as long as the stream
    await response.stream.aclose()
    assert closed == [True]
    assert counts(metrics) == {"code 499": 1, "cause client_closed": 1, "in flight": 0}


async def test_a_stream_relayed_to_its_end_is_recorded_as_answered() -> None:
    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b"data: 1\n\n"
        yield b"data: [DONE]\n\n"

    async def streaming(call: StepCall) -> Reply:
        return Reply(200, b"", "text/event-stream", stream=chunks())

    metrics = RouterMetrics()
    handler = service(FakeTransport(script={url("llm"): streaming}), metrics)
    response = await handler.handle(Request("POST", "/", (), b'{"prompt": "x", "stream": true}'))
    assert response.stream is not None
    assert [chunk async for chunk in response.stream] == [b"data: 1\n\n", b"data: [DONE]\n\n"]
    assert counts(metrics) == {"code 200": 1, "in flight": 0}


async def test_a_binary_request_to_a_graph_that_runs_on_json_is_converted() -> None:
    """gRPC ingress chose the binary path, then the graph was reloaded as one that does not
    carry tensors: the handler runs it on the JSON v2 the message stands for (or 400)."""
    spec = json.dumps(
        {"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url("m")}]}}}
    )
    settings = RouterSettings(source=GraphSource(graph_json=spec))
    registry = GraphRegistry(settings.source)
    registry.load()
    transport = FakeTransport()  # echoes each step's input
    handler = RouterService(settings, registry, transport)
    message = oip.ModelInferRequest(model_name="g", id="r")
    message.inputs.add(name="x", datatype="INT32", shape=[1])
    message.raw_input_contents.append(struct.pack("<i", 7))
    headers = (("Content-Type", "application/json"),)
    request = Request("POST", "/", headers, message.SerializeToString(), OIP_INFER_REQUEST)
    answer = await handler.handle(request)
    assert answer.status == 200, answer.body
    assert json.loads(answer.body) == {
        "id": "r",
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [7]}],
    }
    assert [call.media for call in transport.calls] == [None]
    message.raw_input_contents.append(b"\x00")  # contents for an input that is not there
    refused = await handler.handle(
        Request("POST", "/", headers, message.SerializeToString(), OIP_INFER_REQUEST)
    )
    assert refused.status == 400
    assert "raw_input_contents has 2 entries for 1 inputs" in json.loads(refused.body)["cause"]
