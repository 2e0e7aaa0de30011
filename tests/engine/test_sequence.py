"""Sequence semantics, as a table of cases against the fake transport."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from infergraph.router.engine.errors import InvalidResponse, UpstreamConnectionError
from infergraph.router.engine.payload import Payload
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.testing.fakes import FakeTransport, plan, reply, run, url

REQUEST = {"instances": [1, 2]}

CASES: list[dict[str, Any]] = [
    {
        "id": "each step gets the request by default",
        "steps": [{"serviceUrl": url("m1")}, {"serviceUrl": url("m2")}],
        "script": {url("m1"): reply(body={"a": 1})},
        "status": 200,
        "body": REQUEST,
        "bodies": {"m1": [REQUEST], "m2": [REQUEST]},
    },
    {
        "id": "$response chains the previous body",
        "steps": [{"serviceUrl": url("m1")}, {"serviceUrl": url("m2"), "data": "$response"}],
        "script": {url("m1"): reply(body={"a": 1})},
        "status": 200,
        "body": {"a": 1},
        "bodies": {"m2": [{"a": 1}]},
    },
    {
        "id": "$response on step 0 is the request",
        "steps": [{"serviceUrl": url("m1"), "data": "$response"}],
        "status": 200,
        "body": REQUEST,
    },
    {
        "id": "mapPredictionsToInstances (KServe case 1)",
        "request": {"predictions": ["a", "b"]},
        "steps": [
            {"serviceUrl": url("m1"), "mapPredictionsToInstances": True},
            {"serviceUrl": url("m2"), "data": "$response"},
        ],
        "script": {url("m1"): reply(body={"predictions": ["x"], "id": 3})},
        "status": 200,
        "body": {"predictions": ["x"], "id": 3},
        "bodies": {"m1": [{"instances": ["a", "b"]}], "m2": [{"predictions": ["x"], "id": 3}]},
    },
    {
        "id": "mapPredictionsToInstances leaves empty predictions alone",
        "request": {"predictions": [], "x": 1},
        "steps": [{"serviceUrl": url("m1"), "mapPredictionsToInstances": True}],
        "status": 200,
        "bodies": {"m1": [{"predictions": [], "x": 1}]},
    },
    {
        "id": "unmet condition returns the previous body with 200 (case 4)",
        "steps": [
            {"serviceUrl": url("m1")},
            {"serviceUrl": url("m2"), "condition": 'predictions.#(label=="dog")'},
        ],
        "script": {url("m1"): reply(201, {"predictions": [{"label": "cat"}]})},
        "status": 200,
        "body": {"predictions": [{"label": "cat"}]},
        "called": ["m1"],
    },
    {
        "id": "met condition runs the step",
        "steps": [
            {"serviceUrl": url("m1")},
            {"serviceUrl": url("m2"), "condition": "$.predictions[?(@.label == 'dog')]"},
        ],
        "script": {url("m1"): reply(body={"predictions": [{"label": "dog"}]})},
        "status": 200,
        "called": ["m1", "m2"],
    },
    {
        "id": "soft failure as last step gives its status",
        "steps": [{"serviceUrl": url("m1")}, {"serviceUrl": url("m2")}],
        "script": {url("m2"): reply(404, {"err": "nope"})},
        "status": 404,
        "body": {"err": "nope"},
    },
    {
        "id": "soft failure then success gives 200, the failure body chained",
        "steps": [{"serviceUrl": url("m1")}, {"serviceUrl": url("m2"), "data": "$response"}],
        "script": {url("m1"): reply(404, {"err": "nope"})},
        "status": 200,
        "body": {"err": "nope"},
    },
    {
        "id": "hard failure stops the sequence",
        "steps": [
            {"serviceUrl": url("m1"), "dependency": "Hard"},
            {"serviceUrl": url("m2")},
        ],
        "script": {url("m1"): reply(503, {"err": "down"})},
        "status": 503,
        "body": {"err": "down"},
        "called": ["m1"],
    },
]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
async def test_sequence(case: dict[str, Any], fake: FakeTransport) -> None:
    fake.script.update(case.get("script", {}))
    graph = plan({"root": {"routerType": "Sequence", "steps": case["steps"]}})
    result = await run(graph, fake, case.get("request", REQUEST))
    assert result.status == case["status"]
    if "body" in case:
        assert orjson.loads(result.body) == case["body"]
    for name, bodies in case.get("bodies", {}).items():
        assert fake.bodies(name) == bodies
    if "called" in case:
        assert fake.called() == case["called"]


async def test_condition_on_non_json_previous_response_is_invalid_response(
    fake: FakeTransport,
) -> None:
    fake.script[url("m1")] = reply(raw=b"not json")
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{"serviceUrl": url("m1")}, {"serviceUrl": url("m2"), "condition": "a"}],
            }
        }
    )
    with pytest.raises(InvalidResponse) as caught:
        await run(graph, fake, REQUEST)
    assert caught.value.status == 500
    assert caught.value.cause == "invalid response"


async def test_condition_on_first_step_has_no_previous_response(fake: FakeTransport) -> None:
    graph = plan(
        {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url("m1"), "condition": "a"}]}}
    )
    with pytest.raises(InvalidResponse):
        await run(graph, fake, REQUEST)
    assert fake.calls == []


async def test_transport_failure_fails_even_a_soft_step(fake: FakeTransport) -> None:
    fake.script[url("m1")] = UpstreamConnectionError("connection refused")
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{"serviceUrl": url("m1")}, {"serviceUrl": url("m2")}],
            }
        }
    )
    with pytest.raises(UpstreamConnectionError, match="connection refused"):
        await run(graph, fake, REQUEST)
    assert fake.called() == ["m1"]


async def test_bodies_pass_through_as_bytes(fake: FakeTransport) -> None:
    odd = b'{"b": 1,   "a": [1.50, 2]}'
    fake.script[url("m1")] = reply(raw=odd)
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"serviceUrl": url("m1")},
                    {"serviceUrl": url("m2"), "data": "$response"},
                ],
            }
        }
    )
    result = await run(graph, fake, None, raw=b'{"x":  1}')
    assert fake.calls[0].body == b'{"x":  1}'
    assert fake.calls[1].body == odd
    assert result.body == odd


RELEASE_CASES = [
    ("$response chains: after the first step", [None, "$response", "$response"], 1),
    ("the last step reads $request: after it", [None, "$response", "$request"], 3),
    ("a selection from $request: after its step", [None, "$request.instances", "$response"], 2),
    ("the default input is the request: after its step", [None, None, "$response"], 2),
]


@pytest.mark.parametrize(
    ("data", "after"), [c[1:] for c in RELEASE_CASES], ids=[c[0] for c in RELEASE_CASES]
)
async def test_the_graph_input_is_released_after_the_last_step_that_reads_it(
    data: list[str | None], after: int, fake: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A large request is not held while later steps run; every step still gets its input.
    released: list[tuple[int, bytes]] = []
    original = Payload.release

    def spy(payload: Payload) -> None:
        released.append((len(fake.calls), payload.raw))
        original(payload)

    monkeypatch.setattr(Payload, "release", spy)
    steps = []
    for index, selection in enumerate(data):
        step: dict[str, Any] = {"serviceUrl": url(f"m{index + 1}")}
        if selection is not None:
            step["data"] = selection
        steps.append(step)
    result = await run(plan({"root": {"routerType": "Sequence", "steps": steps}}), fake, REQUEST)
    assert result.status == 200
    assert released == [(after, orjson.dumps(REQUEST))]
    if data[2] == "$request":
        assert fake.bodies("m3") == [REQUEST]


async def test_a_nested_node_never_releases_the_input_its_parent_still_reads(
    fake: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    released: list[int] = []
    monkeypatch.setattr(Payload, "release", lambda payload: released.append(len(fake.calls)))
    fake.script[url("m1")] = reply(body={"a": 1})
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"nodeName": "inner"},  # receives the graph's input object itself
                    {"serviceUrl": url("m3"), "data": "$request"},
                ],
            },
            "inner": {
                "routerType": "Sequence",
                "steps": [
                    {"serviceUrl": url("m1")},
                    {"serviceUrl": url("m2"), "data": "$response"},
                ],
            },
        }
    )
    result = await run(graph, fake, REQUEST)
    assert result.status == 200
    assert fake.bodies("m3") == [REQUEST]
    assert released == [3]  # only the root, after its last step


async def test_a_retried_first_step_sends_the_whole_input_each_time(fake: FakeTransport) -> None:
    answers = iter([reply(503, {"e": 1}), reply(body={"a": 1})])

    async def flaky(call: StepCall) -> Reply:
        return next(answers)

    fake.script[url("m1")] = flaky
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"serviceUrl": url("m1"), "retry": {"maxRetries": 1, "initialDelayMs": 1}},
                    {"serviceUrl": url("m2"), "data": "$response"},
                ],
            }
        }
    )
    result = await run(graph, fake, REQUEST)
    assert result.status == 200
    assert fake.bodies("m1") == [REQUEST, REQUEST]
    assert fake.bodies("m2") == [{"a": 1}]
