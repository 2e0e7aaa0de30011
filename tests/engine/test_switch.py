"""Switch semantics: first matching condition wins; no match is 404 at the root, 500 nested."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from infergraph.router.engine.errors import GraphRequestError, NoRouteMatched
from infergraph.testing.fakes import FakeTransport, plan, reply, run, url

SWITCH = {
    "routerType": "Switch",
    "steps": [
        {"name": "m1", "serviceUrl": url("m1"), "condition": 'instances.#(modelId=="1")'},
        {"name": "m2", "serviceUrl": url("m2"), "condition": 'instances.#(modelId=="2")'},
        {"name": "m3", "serviceUrl": url("m3"), "condition": "$.instances[?(@.modelId == '3')]"},
        {"name": "any", "serviceUrl": url("any"), "condition": "instances"},
    ],
}

CASES: list[tuple[str, Any, list[str]]] = [
    ("gjson first route", {"instances": [{"modelId": "1"}]}, ["m1"]),
    ("gjson second route", {"instances": [{"modelId": "2"}]}, ["m2"]),
    ("jsonpath filter route", {"instances": [{"modelId": "3"}]}, ["m3"]),
    ("first match in list order wins", {"instances": [{"modelId": "2"}, {"modelId": "1"}]}, ["m1"]),
    ("fallback on existence", {"instances": []}, ["any"]),
]


@pytest.mark.parametrize(
    ("request_body", "called"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_switch_routes(request_body: Any, called: list[str], fake: FakeTransport) -> None:
    result = await run(plan({"root": SWITCH}), fake, request_body)
    assert result.status == 200
    assert fake.called() == called
    assert orjson.loads(result.body) == request_body  # the chosen step got the node input


async def test_chosen_status_and_body_are_returned_unchanged(fake: FakeTransport) -> None:
    fake.script[url("m2")] = reply(418, {"teapot": True})
    result = await run(plan({"root": SWITCH}), fake, {"instances": [{"modelId": "2"}]})
    assert (result.status, orjson.loads(result.body)) == (418, {"teapot": True})


@pytest.mark.parametrize("raw", [b'{"other": 1}', b"not json", b""])
async def test_no_match_at_root_is_404(raw: bytes, fake: FakeTransport) -> None:
    with pytest.raises(NoRouteMatched) as caught:
        await run(plan({"root": SWITCH}), fake, None, raw=raw)
    assert caught.value.status == 404
    assert caught.value.cause == "None of the routes matched with the switch condition"
    assert fake.calls == []


async def test_no_match_in_nested_switch_is_500(fake: FakeTransport) -> None:
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{"nodeName": "pick", "dependency": "Soft"}],
            },
            "pick": SWITCH,
        }
    )
    with pytest.raises(GraphRequestError) as caught:
        await run(graph, fake, {"other": 1})
    assert caught.value.status == 500
    assert caught.value.cause == "None of the routes matched with the switch condition"


async def test_empty_condition_never_matches(fake: FakeTransport) -> None:
    graph = plan(
        {
            "root": {
                "routerType": "Switch",
                "steps": [{"serviceUrl": url("m1")}, {"serviceUrl": url("m2"), "condition": "a"}],
            }
        }
    )
    await run(graph, fake, {"a": None})
    assert fake.called() == ["m2"]


async def test_kserve_case_3_switch_then_conditional_ensemble(fake: FakeTransport) -> None:
    fake.script[url("m2")] = reply(body={"predictions": [{"label": "dog"}]})
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "pick", "nodeName": "pick"},
                    {
                        "name": "both",
                        "nodeName": "both",
                        "condition": 'predictions.#(label=="dog")',
                    },
                ],
            },
            "pick": {
                "routerType": "Switch",
                "steps": [
                    {"serviceUrl": url("m1"), "condition": 'instances.#(modelId=="1")'},
                    {"serviceUrl": url("m2"), "condition": 'instances.#(modelId=="2")'},
                ],
            },
            "both": {
                "routerType": "Ensemble",
                "steps": [
                    {"name": "e1", "serviceUrl": url("e1")},
                    {"name": "e2", "serviceUrl": url("e2")},
                ],
            },
        }
    )
    request = {"instances": [{"modelId": "2"}]}
    result = await run(graph, fake, request)
    assert "m1" not in fake.called()
    assert orjson.loads(result.body) == {"e1": request, "e2": request}
