"""A graph's deadline reaches a gRPC model server as ``grpc-timeout``: a real grpcio server
(Open Inference Protocol's ``GRPCInferenceService``) reads what is left of it per call."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.steps import run_graph
from infergraph.router.http.v2_grpc import GrpcV2Transport
from infergraph.testing.fakes import plan

BODY = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}'


class Recorder(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers every ModelInfer after ``delay`` seconds; notes when each call came (on the
    loop's clock: the server runs in the test's loop) and the time the caller left it."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.remaining: list[float | None] = []
        self.arrived: list[float] = []

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.remaining.append(context.time_remaining())
        self.arrived.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.delay)
        return service_pb2.ModelInferResponse(model_name=request.model_name)


async def serve(recorder: Recorder) -> tuple[Any, int]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_each_grpc_attempt_carries_what_is_left_of_the_graph_timeout() -> None:
    recorder = Recorder(delay=0.3)
    server, port = await serve(recorder)
    transport = GrpcV2Transport()
    try:
        graph = plan(
            {
                "root": {
                    "routerType": "Sequence",
                    "steps": [
                        {
                            "name": "a",
                            "serviceUrl": f"grpc://127.0.0.1:{port}",
                            "protocol": "v2-grpc",
                            "model": "m",
                        },
                        {
                            "name": "b",
                            "serviceUrl": f"grpc://127.0.0.1:{port}",
                            "protocol": "v2-grpc",
                            "model": "m",
                            "data": "$request",
                        },
                    ],
                }
            },
            timeout=3,
        )
        ctx = ExecutionContext(transport=transport, rng=random.Random(0))
        started = asyncio.get_running_loop().time()
        answer = await run_graph(graph, BODY, ctx)
    finally:
        await transport.close()
        await server.stop(None)
    assert answer.status == 200
    # Each call got what was left of the 3 s when it was made: the deadline less the time
    # already used, whatever the machine's load (no more, and less only by the moments
    # between the router's send and the server's reading the call).
    for remaining, arrived in zip(recorder.remaining, recorder.arrived, strict=True):
        assert remaining is not None
        left = started + 3 - arrived
        assert -0.01 <= remaining - left < 0.25, (remaining, left)
    first, second = recorder.arrived
    assert second - first >= 0.3  # the first step's answer took its delay
