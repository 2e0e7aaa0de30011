"""Protocol-aware steps: endpoint URLs from base URL and model, gRPC targets, OpenAI endpoint
choice, and where a stream may be requested."""

from __future__ import annotations

from typing import Any

import pytest

from infergraph.router.engine.errors import BadRequest, GraphSpecError
from infergraph.router.protocols import Protocol
from infergraph.testing.fakes import FakeTransport, plan, run


def one_step(**step: Any) -> dict[str, Any]:
    return {"root": {"routerType": "Sequence", "steps": [step]}}


@pytest.mark.parametrize(
    ("step", "url", "model", "version"),
    [
        (
            {"serviceUrl": "http://m:8080", "protocol": "v1", "model": "iris"},
            "http://m:8080/v1/models/iris:predict",
            "iris",
            None,
        ),
        (
            {
                "serviceUrl": "http://m:8000/",
                "protocol": "v2",
                "model": "iris",
                "modelVersion": "3",
            },
            "http://m:8000/v2/models/iris/versions/3/infer",
            "iris",
            "3",
        ),
        (
            {"serviceUrl": "http://m/v2/models/x/infer", "protocol": "v2"},
            "http://m/v2/models/x/infer",
            None,
            None,
        ),
        (
            {"serviceUrl": "grpc://t:8001/v2/models/iris/versions/2", "protocol": "v2-grpc"},
            "grpc://t:8001/v2/models/iris/versions/2",
            "iris",
            "2",
        ),
        ({"serviceUrl": "grpc://t", "protocol": "v2-grpc", "model": "m"}, "grpc://t", "m", None),
        (
            {"serviceUrl": "http://llm:8000", "protocol": "openai"},
            "http://llm:8000/v1/completions",
            None,
            None,
        ),
    ],
)
def test_endpoints(step: dict[str, Any], url: str, model: str | None, version: str | None) -> None:
    compiled = plan(one_step(**step)).root.steps[0]
    assert compiled.service is not None
    assert (compiled.service.url, compiled.model, compiled.model_version) == (url, model, version)
    assert compiled.protocol == Protocol(step["protocol"])


def test_grpc_target_port_defaults_to_8001() -> None:
    compiled = plan(one_step(serviceUrl="grpc://t", protocol="v2-grpc", model="m")).root.steps[0]
    assert compiled.service is not None
    assert (compiled.service.host, compiled.service.port) == ("t", 8001)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"serviceUrl": "http://m", "protocol": "v3"}, "unknown protocol 'v3'"),
        ({"serviceUrl": "http://m", "protocol": "v2"}, "needs a model"),
        (
            {"serviceUrl": "http://t:8001", "protocol": "v2-grpc", "model": "m"},
            "needs a grpc://host:port URL",
        ),
        ({"serviceUrl": "grpc://t:8001", "protocol": "v2-grpc"}, "protocol v2-grpc needs a model"),
        ({"serviceUrl": "grpc://t:8001", "protocol": "v2", "model": "m"}, "speaks HTTP"),
        ({"serviceUrl": "grpc://t:8001"}, "a grpc:// URL needs protocol: v2-grpc"),
    ],
)
def test_protocol_mistakes_are_rejected(step: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphSpecError, match="node 'root', step 0") as caught:
        plan(one_step(**step))
    assert message in str(caught.value)


def test_nested_node_step_cannot_carry_a_protocol() -> None:
    with pytest.raises(GraphSpecError, match="protocol and model belong on service steps"):
        plan(
            {
                "root": {"routerType": "Sequence", "steps": [{"nodeName": "x", "protocol": "v2"}]},
                "x": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://m/"}]},
            }
        )


LLM = "http://llm.test:8000"


async def test_openai_base_url_picks_chat_or_completions(fake: FakeTransport) -> None:
    graph = plan(one_step(serviceUrl=LLM, protocol="openai"))
    await run(graph, fake, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    await run(graph, fake, {"model": "m", "prompt": "hi"})
    assert [c.target.url for c in fake.calls] == [
        f"{LLM}/v1/chat/completions",
        f"{LLM}/v1/completions",
    ]
    assert all(c.protocol is Protocol.OPENAI and not c.stream for c in fake.calls)


STREAMABLE = {
    "last step of a sequence": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                {"serviceUrl": "http://guard.test/"},
                {"serviceUrl": LLM, "protocol": "openai", "data": "$request"},
            ],
        }
    },
    "step a switch chose": {
        "root": {
            "routerType": "Switch",
            "steps": [{"serviceUrl": LLM, "protocol": "openai", "condition": "prompt"}],
        }
    },
    "nested splitter as the last step": {
        "root": {
            "routerType": "Sequence",
            "steps": [{"serviceUrl": "http://guard.test/"}, {"nodeName": "split"}],
        },
        "split": {
            "routerType": "Splitter",
            "steps": [{"serviceUrl": LLM, "protocol": "openai", "weight": 100}],
        },
    },
}


@pytest.mark.parametrize("nodes", STREAMABLE.values(), ids=STREAMABLE.keys())
async def test_stream_is_requested_from_the_step_that_answers(
    nodes: dict[str, Any], fake: FakeTransport
) -> None:
    await run(plan(nodes), fake, {"model": "m", "prompt": "hi", "stream": True})
    llm_calls = [c for c in fake.calls if c.protocol is Protocol.OPENAI]
    assert [c.stream for c in llm_calls] == [True]
    assert all(not c.stream for c in fake.calls if c.protocol is None)


NOT_STREAMABLE = {
    "ensemble of llms": {
        "root": {
            "routerType": "Ensemble",
            "steps": [
                {"name": "a", "serviceUrl": LLM, "protocol": "openai"},
                {"name": "b", "serviceUrl": LLM, "protocol": "openai"},
            ],
        }
    },
    "llm before another step": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                {"serviceUrl": LLM, "protocol": "openai"},
                {"serviceUrl": "http://post.test/"},
            ],
        }
    },
}


@pytest.mark.parametrize("nodes", NOT_STREAMABLE.values(), ids=NOT_STREAMABLE.keys())
async def test_stream_that_cannot_be_honoured_is_a_400(
    nodes: dict[str, Any], fake: FakeTransport
) -> None:
    with pytest.raises(BadRequest, match="asks for a stream") as caught:
        await run(plan(nodes), fake, {"model": "m", "prompt": "hi", "stream": True})
    assert caught.value.status == 400
    await run(plan(nodes), fake, {"model": "m", "prompt": "hi", "stream": False})


async def test_stream_field_is_ignored_by_graphs_without_llm_steps(fake: FakeTransport) -> None:
    graph = plan(one_step(serviceUrl="http://m.test/"))
    await run(graph, fake, {"stream": True})
    assert fake.calls[0].stream is False
