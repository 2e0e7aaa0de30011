"""Property: no client body makes the engine fail on its own account.

Every graph below (each router type; GJSON and JSONPath conditions; ``data`` selections,
request templates, ``mapPredictionsToInstances``, ``outputsToInputs``; nested nodes, Hard and
Soft steps) runs on the fake transport, whose models always answer a valid JSON object. For any
body (random JSON, KServe-shaped JSON, the same damaged byte by byte: bytes that are not UTF-8,
lone surrogate escapes, huge numbers, deep nesting, truncation; or random bytes) the engine
either replies or raises a ``GraphRequestError``; and when it raises, the status is below 500
(the client's fault, said as such), except KServe's own 500 for a nested Switch that matches no
route. Graphs that ask nothing of the body answer 200 for every body.

Deterministic: ``derandomize=True`` and no example database.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from infergraph.router.engine import jsontext
from infergraph.router.engine.conditions import GJSON_DEPTH
from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import BadRequest, GraphRequestError, NestedNoRouteMatched
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.testing.fakes import plan, url

PROPERTIES = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

V2_OUTPUTS = [{"name": "scores", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1.5]}]


def model_answer(call: StepCall) -> bytes:
    """A valid JSON object, echoing the input inside it when that is JSON the engine reads (so
    responses are as odd as requests), with what response-side mappings select."""
    try:
        jsontext.loads(call.body)
        echoed = call.body if jsontext.nesting(call.body) < 1000 else b"null"
    except jsontext.NotJSON:
        echoed = b"null"
    return (
        b'{"predictions":' + echoed + b',"label":"dog","outputs":' + orjson.dumps(V2_OUTPUTS) + b"}"
    )


class Models:
    """The fake transport: every model answers ``model_answer``; ``failing`` ones with 404."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.failing = failing
        self.calls = 0

    async def send(self, call: StepCall) -> Reply:
        self.calls += 1
        await asyncio.sleep(0)
        status = 404 if call.target.url in self.failing else 200
        return Reply(status, model_answer(call), "application/json")


def service(host: str, **fields: Any) -> dict[str, Any]:
    return {"serviceUrl": url(host), **fields}


def switch(*conditions: str, **fields: Any) -> dict[str, Any]:
    return {
        "routerType": "Switch",
        "steps": [service(f"s{i}", condition=c, **fields) for i, c in enumerate(conditions)],
    }


GJSON = [
    'instances.#(modelId=="2")',
    "[@this].#(decision_picker==ERROR)",
    "instances.#",
    "predictions.0.label",
    'instances.#(name%"x*")',
    "@valid",
]
JSONPATH = ["$.instances[0]", "$..modelId", '$.predictions[?(@.label == "dog")]', "$[?(@.x > 1)]"]

# Graphs that may answer a client's body with a 4xx (a route matched nothing, a selection found
# nothing), never with a 5xx of their own.
GRAPHS: dict[str, dict[str, Any]] = {
    "switch on gjson": {"root": switch(*GJSON)},
    "switch on jsonpath": {"root": switch(*JSONPATH)},
    "switch with mappings": {
        "root": switch("instances", "$.inputs", data="$request.instances", dependency="Hard")
    },
    "kserve sequence": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                {"nodeName": "pick", "dependency": "Hard"},
                {"nodeName": "all", "condition": 'predictions.#(label=="dog")'},
            ],
        },
        "pick": switch('instances.#(modelId=="2")', "instances", "@this"),
        "all": {"routerType": "Ensemble", "steps": [service("e1"), service("e2", name="two")]},
    },
    "data mappings": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                service("first", name="first", mapPredictionsToInstances=True),
                service("second", data="$response.outputs[0].data"),
                service("third", data="$request.instances"),
                service(
                    "fourth",
                    request={
                        "whole": "$request",
                        "first": "$steps.first",
                        "label": "$response.label",
                        "rows": "$request..x",
                        "literal": "$$request",
                    },
                ),
                service("fifth", data="$steps.first", outputsToInputs={"scores": "input__0"}),
                service("sixth", data="$request.instances[?(@.x > 1)]"),
            ],
        }
    },
    "jsonpath conditions in a sequence": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                service("a"),
                service("b", condition="$.predictions", data="$response"),
                service("c", condition="$..label"),
            ],
        }
    },
    "ensemble of mappings": {
        "root": {
            "routerType": "Ensemble",
            "steps": [
                service("e1", name="plain"),
                service("e2", request={"instances": "$request.instances"}),
                service("e3", mapPredictionsToInstances=True, dependency="Hard"),
            ],
        }
    },
    "conversions of the node input": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                service("first", data="$response.instances"),  # the first step's $response
                {"nodeName": "convert"},
            ],
        },
        "convert": switch("@this", outputsToInputs=True),
    },
    "openai in an ensemble": {
        "root": {
            "routerType": "Ensemble",
            "steps": [service("chat", protocol="openai", name="chat"), service("other")],
        }
    },
}

# Graphs that ask nothing of the body: 200 for every body, JSON or not.
ALWAYS_200: dict[str, dict[str, Any]] = {
    "kserve passthrough": {
        "root": {
            "routerType": "Sequence",
            "steps": [
                service("m1", mapPredictionsToInstances=True),
                service("m2", data="$response"),
                {"nodeName": "split", "data": "$response"},
                service("m3", mapPredictionsToInstances=True, data="$response"),
                service("m4", condition="predictions", data="$response"),
            ],
        },
        "split": {
            "routerType": "Splitter",
            "steps": [
                {"nodeName": "both", "weight": 40},
                service("s2", weight=60, dependency="Hard"),
                service("s3", weight=0),
            ],
        },
        "both": {
            "routerType": "Ensemble",
            "steps": [service("e1", name="x"), service("e2"), service("bad", name="soft")],
        },
    },
    "soft failures": {
        "root": {
            "routerType": "Sequence",
            "steps": [service("bad"), service("bad", data="$response"), service("m")],
        }
    },
}
# Graphs that answer 200 for every body gjson calls valid (``@this`` always exists), stray
# bytes and all. (Not so with a JSONPath condition before it: JSONPath needs the body decoded,
# so on a body that is not UTF-8 it answers 400 and says why.)
VALID_JSON_200: dict[str, dict[str, Any]] = {
    "switch catch-all": {"root": switch("instances.#(modelId==9)", "@this")},
    "nested switch catch-all": {
        "root": {"routerType": "Sequence", "steps": [{"nodeName": "pick"}]},
        "pick": switch("nothing", "[@this].#(nothing)", "@this"),
    },
}

PLANS = {name: plan(nodes) for name, nodes in {**GRAPHS, **ALWAYS_200, **VALID_JSON_200}.items()}
FAILING = frozenset({url("bad")})


def allowed(name: str, error: GraphRequestError) -> bool:
    """A 4xx, or KServe's answer for a nested Switch that matched no route."""
    return error.status < 500 or isinstance(error, NestedNoRouteMatched)


async def answers(body: bytes) -> dict[str, Reply | GraphRequestError]:
    """Every graph's outcome for ``body``; any other exception propagates (the property fails)."""
    outcomes: dict[str, Reply | GraphRequestError] = {}
    for name, graph in PLANS.items():
        ctx = ExecutionContext(transport=Models(FAILING), rng=random.Random(len(body)))
        try:
            outcomes[name] = await run_graph(graph, body, ctx)
        except GraphRequestError as error:
            outcomes[name] = error
    return outcomes


def check(body: bytes) -> None:
    outcomes = asyncio.run(answers(body))
    gjson_valid = jsontext.valid(body)
    event("gjson-valid body" if gjson_valid else "not JSON")
    # A Switch's GJSON conditions read bodies up to GJSON_DEPTH levels deep (400 past that).
    readable = gjson_valid and jsontext.nests_within(body, GJSON_DEPTH)
    for name, outcome in outcomes.items():
        if isinstance(outcome, GraphRequestError):
            assert allowed(name, outcome), (name, type(outcome).__name__, outcome.cause)
            orjson.dumps({"cause": outcome.cause})  # the service renders it like this
            event(f"{outcome.status} {type(outcome).__name__}")
            continue
        assert isinstance(outcome.body, bytes)
        if name in ALWAYS_200 or (name in VALID_JSON_200 and readable):
            assert outcome.status == 200, (name, outcome.status)
    for name in VALID_JSON_200:
        if readable:
            assert isinstance(outcomes[name], Reply), (name, outcomes[name])
        elif gjson_valid:
            assert isinstance(outcomes[name], BadRequest), (name, outcomes[name])


# --- bodies --------------------------------------------------------------------------------

KEYS = st.sampled_from(
    ["instances", "predictions", "modelId", "decision_picker", "label", "x", "inputs", "stream"]
) | st.text(max_size=4)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
    | st.sampled_from(["2", "ERROR", "dog", "x"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=16,
)
ROW = st.fixed_dictionaries(
    {},
    optional={
        "modelId": st.sampled_from(["1", "2", 2]),
        "x": st.integers(-3, 3) | JSON,
        "name": st.sampled_from(["x", "xyz", "y"]),
    },
)
KSERVE = st.fixed_dictionaries(
    {},
    optional={
        "instances": st.lists(ROW | JSON, max_size=3) | JSON,
        "predictions": st.lists(st.fixed_dictionaries({"label": st.sampled_from(["dog", "cat"])}))
        | JSON,
        "decision_picker": st.sampled_from(["ERROR", "OK"]),
        "inputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)}), max_size=2),
        "stream": st.booleans() | JSON,
        "messages": st.lists(JSON, max_size=2),
    },
)
VALUES = KSERVE | JSON


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A JSON body changed at the byte level, as a client (or an attacker) might send it."""
    raw = jsontext.dumps(draw(VALUES))
    change = draw(
        st.sampled_from(
            ["stray bytes", "surrogate", "number", "nest", "wrap", "cut", "append", "duplicate"]
        )
    )
    at = draw(st.integers(0, len(raw)))
    if change == "stray bytes":
        quote = raw.find(b'"', at)
        stray = draw(st.binary(min_size=1, max_size=3).map(lambda b: bytes(x | 0x80 for x in b)))
        return raw if quote < 0 else raw[: quote + 1] + stray + raw[quote + 1 :]
    if change == "surrogate":
        quote = raw.find(b'"', at)
        escape = draw(st.sampled_from([b"\\ud800", b"\\udfff", b"\\ud800\\u0041", b"\\\\ud800"]))
        return raw if quote < 0 else raw[: quote + 1] + escape + raw[quote + 1 :]
    if change == "number":
        number = draw(
            st.sampled_from(
                [b"1e400", b"-1e400", b"1e-400", b"9" * 40, b"-0", b"NaN", b"Infinity", b"01"]
            )
        )
        return b'{"instances":[' + number + b'],"x":' + raw + b"}"
    if change == "nest":
        levels = draw(st.sampled_from([1, 253, 254, 255, 1023, 1024, 1500]))
        return b'{"instances":' + b"[" * levels + raw + b"]" * levels + b"}"
    if change == "wrap":
        return draw(st.sampled_from([b"[", b'{"predictions":', b" \n\t", b"\xef\xbb\xbf"])) + raw
    if change == "cut":
        return raw[:at]
    if change == "append":
        return raw + draw(st.sampled_from([b"}", b"]", b",", b" ", b"\x00", b"{}", b"\xff"]))
    return b'{"x":1,"instances":[1],"x":' + raw + b',"instances":' + raw + b"}"


BODIES = VALUES.map(jsontext.dumps) | damaged() | st.binary(max_size=40)


@settings(PROPERTIES, max_examples=250)
@given(BODIES)
def test_no_client_body_makes_the_engine_fail_on_its_own_account(body: bytes) -> None:
    check(body)


@settings(PROPERTIES, max_examples=2)
@given(st.sampled_from([12_000, 30_000]), VALUES.map(jsontext.dumps))
def test_bodies_nested_past_the_native_limits(levels: int, inner: bytes) -> None:
    check(b'{"instances":' + b"[" * levels + inner + b"]" * levels + b',"modelId":"2"}')


def test_the_graphs_cover_every_router_type() -> None:
    kinds = {node.router_type for graph in PLANS.values() for node in graph.nodes.values()}
    assert {kind.value for kind in kinds} == {"Sequence", "Switch", "Ensemble", "Splitter"}
