"""Data mapping between steps: selections, v2 outputs -> inputs, request templates."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from infergraph.router.engine.errors import BadRequest, GraphRequestError, GraphSpecError
from infergraph.testing.fakes import FakeTransport, plan, reply, run, url

V2_RESPONSE = {
    "id": "r1",
    "model_name": "scale",
    "outputs": [
        {"name": "scaled", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.5, -1.0, 0.0]},
        {"name": "mask", "shape": [1, 4], "datatype": "BOOL", "data": [True, False, True, True]},
    ],
}


def sequence(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": "Sequence", "steps": list(steps)}}


CASES: list[tuple[str, dict[str, Any], Any]] = [
    (
        "$response.outputs[0] selects one value",
        {"data": "$response.outputs[0].data"},
        [1.0, 2.5, -1.0, 0.0],
    ),
    ("several matches make a list", {"data": "$response.outputs[*].name"}, ["scaled", "mask"]),
    ("$request selection", {"data": "$request.instances"}, [[1, 2]]),
    (
        "outputsToInputs true keeps every output",
        {"data": "$response", "outputsToInputs": True},
        {
            "inputs": [
                {
                    "name": "scaled",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "data": [1.0, 2.5, -1.0, 0.0],
                },
                {
                    "name": "mask",
                    "shape": [1, 4],
                    "datatype": "BOOL",
                    "data": [True, False, True, True],
                },
            ],
            "id": "r1",
        },
    ),
    (
        "outputsToInputs renames and selects",
        {"data": "$response", "outputsToInputs": {"scaled": "input__0"}},
        {
            "inputs": [
                {
                    "name": "input__0",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "data": [1.0, 2.5, -1.0, 0.0],
                }
            ],
            "id": "r1",
        },
    ),
    (
        "template from request and earlier steps",
        {
            "request": {
                "id": "$request.id",
                "inputs": [
                    {
                        "name": "x",
                        "shape": ["$steps.first.outputs.`len`", 4],
                        "datatype": "FP32",
                        "data": "$steps.first.outputs[0].data",
                    }
                ],
                "parameters": {"note": "$$literal", "k": 3},
            }
        },
        {
            "id": "q",
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0, 2.5, -1.0, 0.0]}
            ],
            "parameters": {"note": "$literal", "k": 3},
        },
    ),
]


@pytest.mark.parametrize(("second", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_second_step_input(
    second: dict[str, Any], expected: Any, fake: FakeTransport
) -> None:
    fake.script[url("first")] = reply(body=V2_RESPONSE)
    graph = plan(
        sequence(
            {"name": "first", "serviceUrl": url("first")}, {"serviceUrl": url("second"), **second}
        )
    )
    await run(graph, fake, {"id": "q", "instances": [[1, 2]]})
    assert fake.bodies("second") == [expected]


async def test_request_selection_that_finds_nothing_is_a_400(fake: FakeTransport) -> None:
    graph = plan(sequence({"serviceUrl": url("m"), "data": "$request.missing"}))
    with pytest.raises(BadRequest, match=r"\$request.missing selected nothing from the request"):
        await run(graph, fake, {"x": 1})
    assert fake.calls == []


async def test_response_selection_that_finds_nothing_is_a_500(fake: FakeTransport) -> None:
    fake.script[url("a")] = reply(body={"other": 1})
    graph = plan(
        sequence({"serviceUrl": url("a")}, {"serviceUrl": url("b"), "data": "$response.outputs"})
    )
    with pytest.raises(
        GraphRequestError, match="selected nothing from the previous response"
    ) as caught:
        await run(graph, fake, {})
    assert caught.value.status == 500


async def test_outputs_to_inputs_names_a_missing_output(fake: FakeTransport) -> None:
    fake.script[url("a")] = reply(body=V2_RESPONSE)
    graph = plan(
        sequence(
            {"serviceUrl": url("a")},
            {"serviceUrl": url("b"), "data": "$response", "outputsToInputs": {"nope": "x"}},
        )
    )
    with pytest.raises(GraphRequestError, match=r"no output named nope \(it has scaled, mask"):
        await run(graph, fake, {})


async def test_switch_and_ensemble_steps_can_template_the_node_input(fake: FakeTransport) -> None:
    graph = plan(
        {
            "root": {
                "routerType": "Ensemble",
                "steps": [
                    {
                        "name": "v1",
                        "serviceUrl": url("a"),
                        "request": {"instances": "$request.rows"},
                    },
                    {"name": "raw", "serviceUrl": url("b")},
                ],
            }
        }
    )
    result = await run(graph, fake, {"rows": [[1]]})
    assert orjson.loads(result.body) == {"v1": {"instances": [[1]]}, "raw": {"rows": [[1]]}}


REJECTED = [
    (
        "bad root",
        sequence({"serviceUrl": url("a"), "data": "$input.x"}),
        "must start with $request, $response or $steps.<name>",
    ),
    (
        "bad jsonpath",
        sequence({"serviceUrl": url("a"), "data": "$request.a["}),
        "does not parse as JSONPath",
    ),
    (
        "later step",
        sequence(
            {"serviceUrl": url("a"), "request": {"x": "$steps.b.y"}},
            {"name": "b", "serviceUrl": url("b")},
        ),
        "'b' is not an earlier step of this node",
    ),
    (
        "response outside a sequence",
        {
            "root": {
                "routerType": "Switch",
                "steps": [{"serviceUrl": url("a"), "condition": "x", "data": "$response.x"}],
            }
        },
        "only Sequence steps have earlier responses",
    ),
    (
        "data and request",
        sequence({"serviceUrl": url("a"), "data": "$response", "request": {"a": 1}}),
        "set either data or request, not both",
    ),
    (
        "both conversions",
        sequence(
            {"serviceUrl": url("a"), "outputsToInputs": True, "mapPredictionsToInstances": True}
        ),
        "exclude each other",
    ),
    (
        "empty renames",
        sequence({"serviceUrl": url("a"), "outputsToInputs": {}}),
        "outputsToInputs needs true or a mapping",
    ),
]


@pytest.mark.parametrize(
    ("nodes", "message"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_invalid_mappings_are_rejected_at_load(nodes: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphSpecError) as caught:
        plan(nodes)
    assert message in str(caught.value)
    assert "node 'root', step" in str(caught.value)
