"""Binary OIP tensors through the engine: which graphs carry them, and how a binary request
flows through steps and ``outputsToInputs`` (with a recording codec; the real one is tested
against protobuf in tests/transport/test_binary_tensors.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import GraphRequestError, MappingError
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.tensors import MissingOutputs, Renames
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.protocols import OIP_INFER_REQUEST, OIP_INFER_RESPONSE
from infergraph.testing.fakes import FakeTransport, plan

GRPC = {"protocol": "v2-grpc"}


def grpc_step(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "serviceUrl": f"grpc://{name}.test:8001/v2/models/{name}",
        **GRPC,
        **fields,
    }


def chained(name: str, **fields: Any) -> dict[str, Any]:
    return grpc_step(name, **{"data": "$response", "outputsToInputs": True, **fields})


def sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"routerType": "Sequence", "steps": list(steps)}


CARRIES: list[tuple[str, dict[str, Any], bool]] = [
    ("one v2-grpc step", {"root": sequence(grpc_step("a"))}, True),
    ("a chain through outputsToInputs", {"root": sequence(grpc_step("a"), chained("b"))}, True),
    (
        "renamed outputs",
        {"root": sequence(grpc_step("a"), chained("b", outputsToInputs={"y": "x"}))},
        True,
    ),
    (
        "an earlier step's reply",
        {
            "root": sequence(
                grpc_step("a"),
                grpc_step("b"),
                grpc_step("c", data="$steps.a", outputsToInputs=True),
            )
        },
        True,
    ),
    (
        "the request named",
        {"root": sequence(grpc_step("a"), grpc_step("b", data="$request"))},
        True,
    ),
    (
        "a Splitter",
        {
            "root": {
                "routerType": "Splitter",
                "steps": [grpc_step("a", weight=50), grpc_step("b", weight=50)],
            }
        },
        True,
    ),
    (
        "a nested Sequence",
        {
            "root": sequence({"name": "inner", "nodeName": "inner"}),
            "inner": sequence(grpc_step("a")),
        },
        True,
    ),
    (
        "replicas and a v2-grpc fallback",
        {
            "root": sequence(
                {
                    "name": "a",
                    **GRPC,
                    "model": "a",
                    "endpoints": ["grpc://r1.test:8001", "grpc://r2.test:8001"],
                    "fallback": {"serviceUrl": "grpc://f.test:8001", **GRPC, "model": "a"},
                }
            )
        },
        True,
    ),
    ("a v2 REST step", {"root": sequence({"name": "a", "serviceUrl": "http://a.test/x"})}, False),
    (
        "a REST step after gRPC",
        {
            "root": sequence(
                grpc_step("a"),
                {"name": "b", "serviceUrl": "http://b.test/x", "data": "$response"},
            )
        },
        False,
    ),
    (
        "a REST fallback",
        {"root": sequence(grpc_step("a", fallback={"serviceUrl": "http://f.test/x"}))},
        False,
    ),
    (
        "a response passed on whole",
        {"root": sequence(grpc_step("a"), grpc_step("b", data="$response"))},
        False,
    ),
    (
        "a selection",
        {"root": sequence(grpc_step("a"), grpc_step("b", data="$response.outputs[0]"))},
        False,
    ),
    (
        "outputsToInputs on the first step (the request has no outputs)",
        {"root": sequence(chained("a"))},
        False,
    ),
    (
        "a template",
        {"root": sequence(grpc_step("a", request={"inputs": "$request.inputs"}))},
        False,
    ),
    (
        "a condition",
        {"root": sequence(grpc_step("a"), chained("b", condition="outputs"))},
        False,
    ),
    (
        "a Switch",
        {"root": {"routerType": "Switch", "steps": [grpc_step("a", condition="inputs")]}},
        False,
    ),
    ("an Ensemble", {"root": {"routerType": "Ensemble", "steps": [grpc_step("a")]}}, False),
    (
        "a nested Ensemble",
        {
            "root": sequence({"name": "inner", "nodeName": "inner"}),
            "inner": {"routerType": "Ensemble", "steps": [grpc_step("a")]},
        },
        False,
    ),
]


@pytest.mark.parametrize(
    ("nodes", "expected"), [c[1:] for c in CARRIES], ids=[c[0] for c in CARRIES]
)
def test_which_graphs_carry_binary_tensors(nodes: dict[str, Any], expected: bool) -> None:
    graph = plan(nodes)
    assert graph.carries_tensors is expected
    assert ("binary tensors over gRPC ingress" in graph.summary()) is expected  # validate says


@dataclass
class RecordingCodec:
    """``outputs_to_inputs`` as a visible transformation of the bytes."""

    calls: list[tuple[bytes, Renames | None]] = field(default_factory=list)
    outputs: tuple[str, ...] = ("y",)

    def outputs_to_inputs(self, response: bytes, renames: Renames | None) -> bytes:
        self.calls.append((response, renames))
        missing = [old for old, _ in renames or () if old not in self.outputs]
        if missing:
            raise MissingOutputs(missing, list(self.outputs))
        return b"request<" + response + b">"


def binary_model(name: str) -> Any:
    async def answer(call: StepCall) -> Reply:
        return Reply(200, f"{name}(".encode() + call.body + b")", OIP_INFER_RESPONSE)

    return answer


async def run_binary(nodes: dict[str, Any], fake: FakeTransport, codec: RecordingCodec) -> Reply:
    graph = plan(nodes)
    assert graph.carries_tensors
    ctx = ExecutionContext(transport=fake, rng=random.Random(0), tensors=codec)
    return await run_graph(graph, b"\x0a\x01g", ctx, OIP_INFER_REQUEST)


URL = "grpc://{}.test:8001/v2/models/{}"


async def test_a_binary_request_flows_through_steps_and_the_codec_as_bytes() -> None:
    fake = FakeTransport({URL.format(n, n): binary_model(n) for n in ("a", "b")})
    codec = RecordingCodec()
    nodes = {"root": sequence(grpc_step("a"), chained("b", outputsToInputs={"y": "x"}))}
    reply = await run_binary(nodes, fake, codec)
    assert [(c.media, c.body, c.model) for c in fake.calls] == [
        (OIP_INFER_REQUEST, b"\x0a\x01g", "a"),
        (OIP_INFER_REQUEST, b"request<a(\x0a\x01g)>", "b"),
    ]
    assert codec.calls == [(b"a(\x0a\x01g)", (("y", "x"),))]
    assert (reply.status, reply.body, reply.content_type) == (
        200,
        b"b(request<a(\x0a\x01g)>)",
        OIP_INFER_RESPONSE,
    )


async def test_a_missing_output_is_the_models_fault_worded_as_over_json() -> None:
    fake = FakeTransport({URL.format(n, n): binary_model(n) for n in ("a", "b")})
    nodes = {"root": sequence(grpc_step("a"), chained("b", outputsToInputs={"z": "x"}))}
    with pytest.raises(MappingError) as raised:
        await run_binary(nodes, fake, RecordingCodec())
    assert raised.value.status == 500
    assert raised.value.cause == (
        "outputsToInputs: the v2 response has no output named z (it has y)"
    )


async def test_an_error_reply_is_mapped_as_json_not_through_the_codec() -> None:
    # A soft step that failed answers JSON; the next step's mapping reads it as it would over
    # REST (no v2 outputs: the model's fault), and the codec never sees it.
    failed = Reply(503, b'{"error": "busy"}', "application/json")
    fake = FakeTransport({URL.format("a", "a"): failed, URL.format("b", "b"): binary_model("b")})
    codec = RecordingCodec()
    nodes = {"root": sequence(grpc_step("a"), chained("b"))}
    with pytest.raises(GraphRequestError) as raised:
        await run_binary(nodes, fake, codec)
    assert raised.value.status == 500
    assert "has no v2 outputs list" in raised.value.cause
    assert codec.calls == []
