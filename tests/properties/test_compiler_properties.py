"""Property: the compiler never crashes. Every spec, however malformed (random router types,
random step fields of random types, cycles, dangling references, no root), either compiles to a
plan or raises ``GraphSpecError`` listing its problems; so does every text ``load_plan`` reads.
Every graph valid by KServe's rules compiles, into a plan that mirrors it; and whatever the
compiler accepts runs: a request through it ends in a reply or a ``GraphRequestError``.

Deterministic: ``derandomize=True`` and no example database, so CI runs the same examples.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import GraphRequestError, GraphSpecError
from infergraph.router.engine.plan import (
    MAX_NESTING,
    GraphPlan,
    RouterType,
    compile_plan,
    load_plan,
)
from infergraph.router.engine.spec import parse_spec
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply
from infergraph.testing.fakes import FakeTransport

PROPERTIES = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NODE_NAMES = ["root", "a", "b", "c"]

# Values of the wrong type for any field.
JUNK = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
TEXT = st.text(max_size=12) | st.text(alphabet='$.[]()#@"\\|*?=!<>~%{}:,\ud800', max_size=12)
NAME = st.sampled_from([*NODE_NAMES, "", "x", "root "]) | st.text(max_size=5)
ROUTER_TYPE = (
    st.sampled_from([t.value for t in RouterType])
    | st.sampled_from(["sequence", "SWITCH", "", "Router", "Sequence "])
    | TEXT
)
URL = (
    st.sampled_from(
        [
            "http://m.test/predict",
            "https://m.test",
            "http://m.test:8080/v1/models/m:predict",
            "http://m.test/",
            "grpc://t.test:8001",
            "grpcs://t.test/v2/models/m/versions/2",
            "http://x.{$domain}/p",
            "ftp://m.test/",
            "http://",
            "http://[::1",
            "http://[::1]:99999/",
            "http://a b/",
            "://",
            "",
            "http://ok.test/?q=1#f",
            "http://\u00e9.test/",
            "http://m.test:-1/",
        ]
    )
    | TEXT
)
CONDITION = (
    st.sampled_from(
        [
            "instances",
            'instances.#(modelId=="2")',
            "[@this].#(decision_picker==ERROR)",
            "@valid",
            "$.a",
            "$..x",
            '$.p[?(@.label == "dog")]',
            "a.",
            "a|",
            "#(",
            '"',
            "$[",
            "$.a[?(",
            "",
            "a\ud800",
            "$.\ud800",
        ]
    )
    | TEXT
)
DATA = (
    st.sampled_from(
        [
            "$request",
            "$response",
            "$request.instances",
            "$response.outputs[0].data",
            "$steps.a.x",
            "$steps.a",
            "$steps.",
            "$steps.0[0]",
            "$input",
            "$request[",
            "$requestx",
            "$$x",
            "",
        ]
    )
    | TEXT.map(lambda t: "$" + t)
    | TEXT
)
WEIGHT = st.none() | st.integers(-5, 150) | st.sampled_from([0, 25, 50, 100]) | JUNK
PROTOCOL = st.sampled_from(["v1", "v2", "v2-grpc", "openai", "V1", ""]) | st.none() | TEXT
TEMPLATE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | DATA
    | st.binary(max_size=3)
    | st.dates(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), children, max_size=3)
    ),
    max_leaves=12,
)
OUTPUTS_TO_INPUTS = st.booleans() | st.dictionaries(st.text(max_size=4), st.text(max_size=4))


def maybe_junk(field: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return field | JUNK


# Steps, routers and specs of the right types (so pydantic lets them through to the compiler)
# but random in everything the compiler checks: targets, references, conditions, weights...
STEP = st.fixed_dictionaries(
    {},
    optional={
        "name": NAME,
        "nodeName": st.sampled_from([*NODE_NAMES, "missing"]) | NAME,
        "serviceName": NAME,
        "serviceUrl": URL,
        "condition": CONDITION,
        "weight": st.integers(-5, 150) | st.sampled_from([0, 25, 50, 100]),
        "dependency": st.sampled_from(["Soft", "Hard", "", "hard"]) | TEXT,
        "data": DATA,
        "protocol": PROTOCOL,
        "model": NAME,
        "modelVersion": NAME,
        "outputsToInputs": OUTPUTS_TO_INPUTS,
        "mapPredictionsToInstances": st.booleans(),
        "request": st.lists(TEMPLATE, max_size=3)
        | st.dictionaries(st.text(max_size=4), TEMPLATE, max_size=3),
    },
)
ROUTER = st.fixed_dictionaries({"routerType": ROUTER_TYPE, "steps": st.lists(STEP, max_size=4)})
TIMEOUTS = st.dictionaries(
    st.sampled_from(["serverRead", "serverWrite", "serverIdle", "serviceClient", "x"]),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 10**12),
    max_size=4,
)
SPEC = st.fixed_dictionaries(
    {"nodes": st.dictionaries(st.sampled_from(NODE_NAMES) | NAME, ROUTER, min_size=1, max_size=4)},
    optional={"routerTimeouts": TIMEOUTS, "resources": JUNK},
)

# The same with any field of any type, anywhere.
JUNK_STEP = st.fixed_dictionaries(
    {},
    optional={
        key: maybe_junk(field)
        for key, field in {
            "name": NAME,
            "nodeName": NAME,
            "serviceUrl": URL,
            "condition": CONDITION,
            "weight": WEIGHT,
            "dependency": st.sampled_from(["Soft", "Hard"]),
            "data": DATA,
            "protocol": PROTOCOL,
            "outputsToInputs": OUTPUTS_TO_INPUTS,
            "mapPredictionsToInstances": st.booleans(),
            "request": TEMPLATE,
        }.items()
    },
)
JUNK_ROUTER = st.fixed_dictionaries(
    {}, optional={"routerType": maybe_junk(ROUTER_TYPE), "steps": JUNK | st.lists(JUNK_STEP)}
)
JUNK_SPEC = st.fixed_dictionaries(
    {"nodes": st.dictionaries(NAME, JUNK_ROUTER, max_size=4) | JUNK},
    optional={"routerTimeouts": TIMEOUTS | JUNK, "minReplicas": JUNK},
)
DOCUMENT = (
    SPEC
    | st.fixed_dictionaries(
        {"apiVersion": st.just("serving.kserve.io/v1alpha1"), "spec": SPEC},
        optional={"kind": JUNK, "metadata": st.fixed_dictionaries({}, optional={"name": JUNK})},
    )
    | JUNK_SPEC
    | JUNK
)


def compiles_or_explains(outcome: GraphPlan | GraphSpecError) -> None:
    if isinstance(outcome, GraphSpecError):
        assert outcome.problems, "a GraphSpecError must list its problems"
        assert all(str(problem) for problem in outcome.problems)
        # Where it failed: while reading the spec, or in the compiler proper.
        event("rejected" if outcome.__cause__ is None else "rejected while reading")
        return
    event("compiled")
    assert outcome.root.name == "root"
    for seconds in dataclasses.astuple(outcome.timeouts):
        assert seconds is None or (math.isfinite(seconds) and seconds > 0)
    assert outcome.nodes["root"] is outcome.root
    for node in outcome.nodes.values():
        assert node.steps
        for step in node.steps:
            assert (step.node is None) != (step.service is None)
            assert step.node is None or step.node.name in outcome.nodes
        if node.router_type is RouterType.SPLITTER:
            assert sum(step.weight for step in node.steps) == 100


def compile_document(document: Any) -> GraphPlan | GraphSpecError:
    try:
        return compile_plan(parse_spec(document, default_name="g"))
    except GraphSpecError as error:
        return error


def load_text(text: str | bytes) -> GraphPlan | GraphSpecError:
    try:
        return load_plan(text, default_name="g")
    except GraphSpecError as error:
        return error


@settings(PROPERTIES, max_examples=300)
@given(DOCUMENT)
def test_any_spec_compiles_or_lists_its_problems(document: Any) -> None:
    compiles_or_explains(compile_document(document))


def as_text(document: Any, form: str) -> str:
    try:
        return orjson.dumps(document).decode() if form == "json" else yaml.safe_dump(document)
    except (TypeError, yaml.YAMLError):
        assume(False)  # bytes or huge integers in JSON, say
        raise


@settings(PROPERTIES, max_examples=200)
@given(DOCUMENT, st.sampled_from(["json", "yaml"]), st.data())
def test_any_spec_text_loads_or_lists_its_problems(
    document: Any, form: str, data: st.DataObject
) -> None:
    text = as_text(document, form)
    compiles_or_explains(load_text(text))
    # The same text, damaged: a slice cut out, or a character put in.
    start = data.draw(st.integers(0, len(text)), label="start")
    end = data.draw(st.integers(start, min(len(text), start + 8)), label="end")
    filler = data.draw(
        st.sampled_from(["", "{", "]", ":", "\n  - ", '"', "\t", "&a", "*a", "!!", "13", "-9", "."])
    )
    compiles_or_explains(load_text(text[:start] + filler + text[end:]))


# Texts YAML reads specially: timestamps (month 13 raises ValueError), nesting deeper than
# orjson reads (PyYAML then recurses), anchors and aliases.
ODD_TEXT = (
    st.builds(
        "nodes:\n  root:\n    routerType: Sequence\n    steps:\n    - serviceUrl: http://a/\n"
        "      request: {{x: {}-{:02d}-{:02d}}}\n".format,
        st.integers(1900, 2100),
        st.integers(0, 14),
        st.integers(0, 33),
    )
    | st.just('{"nodes": ' + "[" * 1030 + "]" * 1030 + "}")  # PyYAML takes ~0.4 s on it
    | st.just("a: &a [*a]\nnodes: {root: {routerType: Sequence, steps: *a}}\n")
)


@settings(PROPERTIES, max_examples=200)
@given(st.text(max_size=60) | st.binary(max_size=60) | ODD_TEXT)
def test_any_text_loads_or_lists_its_problems(text: str | bytes) -> None:
    compiles_or_explains(load_text(text))


@st.composite
def valid_graphs(draw: st.DrawFn) -> dict[str, Any]:
    """Graphs valid by KServe's rules: a root, acyclic node references (a node refers only to
    nodes later in the list), targets set, Splitter weights summing to 100, conditions that
    parse, unique step names."""
    count = draw(st.integers(1, 4))
    names = ["root", *[f"n{i}" for i in range(1, count)]]
    nodes: dict[str, Any] = {}
    for index, name in enumerate(names):
        router_type = draw(st.sampled_from([t.value for t in RouterType]))
        size = draw(st.integers(1, 4))
        later = names[index + 1 :]
        steps = []
        for position in range(size):
            step: dict[str, Any] = {}
            nested = draw(st.booleans())
            if later and nested:
                step["nodeName"] = draw(st.sampled_from(later))
            else:
                step["serviceUrl"] = f"http://m{position}.test/predict"
            if draw(st.booleans()):
                step["name"] = f"s{position}"
            if draw(st.booleans()):
                step["dependency"] = draw(st.sampled_from(["Soft", "Hard"]))
            if router_type in ("Switch", "Sequence") and draw(st.booleans()):
                step["condition"] = draw(
                    st.sampled_from(["instances", 'instances.#(modelId=="2")', "$.predictions"])
                )
            if router_type == "Sequence" and position > 0 and draw(st.booleans()):
                step["data"] = "$response"
            if draw(st.booleans()) and "nodeName" not in step:
                step["mapPredictionsToInstances"] = True
            steps.append(step)
        if router_type == "Splitter":
            cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=size - 1, max_size=size - 1)))
            bounds = [0, *cuts, 100]
            for step, low, high in zip(steps, bounds, bounds[1:], strict=False):
                step["weight"] = high - low
        nodes[name] = {"routerType": router_type, "steps": steps}
    return nodes


STEP_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": NAME,
    "nodeName": st.sampled_from([*NODE_NAMES, "n1", "n2", "n3", "missing"]),
    "serviceUrl": URL,
    "serviceName": NAME,
    "condition": CONDITION,
    "weight": WEIGHT,
    "dependency": st.sampled_from(["Soft", "Hard", "hard"]),
    "data": DATA,
    "protocol": PROTOCOL,
    "model": NAME,
    "outputsToInputs": OUTPUTS_TO_INPUTS,
    "mapPredictionsToInstances": st.booleans(),
    "request": st.dictionaries(st.text(max_size=3), TEMPLATE, max_size=3),
}


@st.composite
def mutated_graphs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid graph with one to three things changed: a step field set to a random value (of
    the right type or not) or removed, a reference back up the graph (a cycle), a router type
    changed, the root renamed, a request template of random literals."""
    nodes = draw(valid_graphs())
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(nodes)))
        node = nodes[name]
        steps = node["steps"]
        step = draw(st.sampled_from(steps))
        change = draw(
            st.sampled_from(["set", "junk", "remove", "cycle", "router", "rename", "template"])
        )
        if change == "template":  # a literal JSON lacks (a date, bytes, 2**70, nan)?
            step["request"] = draw(st.dictionaries(st.text(max_size=3), TEMPLATE, min_size=1))
        elif change == "set":
            field = draw(st.sampled_from(sorted(STEP_FIELDS)))
            step[field] = draw(STEP_FIELDS[field])
        elif change == "junk":
            step[draw(st.sampled_from(sorted(STEP_FIELDS)))] = draw(JUNK)
        elif change == "remove" and step:
            del step[draw(st.sampled_from(sorted(step)))]
        elif change == "cycle":
            step.pop("serviceUrl", None)
            step["nodeName"] = draw(st.sampled_from(sorted(nodes)))
        elif change == "router":
            node["routerType"] = draw(ROUTER_TYPE)
        elif change == "rename" and "root" in nodes:
            nodes[draw(NAME)] = nodes.pop("root")
    return nodes


def chain(levels: int, router_type: str) -> dict[str, Any]:
    """``root`` -> ``n1`` -> ... -> a service, each a node of ``router_type``."""
    nodes: dict[str, Any] = {}
    for i in range(levels):
        step: dict[str, Any] = (
            {"nodeName": f"n{i + 1}"} if i < levels - 1 else {"serviceUrl": "http://m.test/"}
        )
        if router_type == "Splitter":
            step["weight"] = 100
        elif router_type == "Switch":
            step["condition"] = "@this"
        nodes["root" if i == 0 else f"n{i}"] = {"routerType": router_type, "steps": [step]}
    return nodes


CHAINS = st.builds(
    chain,
    st.sampled_from([2, 60, 100, 101, 150, 400]),
    st.sampled_from(["Sequence", "Switch", "Ensemble", "Splitter"]),
)
DOCUMENTS = st.fixed_dictionaries(
    {"nodes": mutated_graphs() | CHAINS}, optional={"routerTimeouts": TIMEOUTS}
)


@settings(PROPERTIES, max_examples=300)
@given(DOCUMENTS)
def test_any_nearly_valid_graph_compiles_or_lists_its_problems(document: dict[str, Any]) -> None:
    compiles_or_explains(compile_document(document))


REQUESTS = st.sampled_from(
    [
        b'{"instances":[{"modelId":"2"}],"predictions":[{"label":"dog"}],"outputs":[]}',
        b'{"inputs":[{"name":"a","data":[1]}],"outputs":[{"name":"scores","data":[1]}]}',
        b"[1,2]",
        b'{"a":"\xff"}',
        b"not json",
        b"",
    ]
)


async def run_once(
    graph: GraphPlan, body: bytes, fake: FakeTransport | None = None
) -> Reply | GraphRequestError:
    ctx = ExecutionContext(transport=fake or FakeTransport(), rng=random.Random(0))
    try:
        return await run_graph(graph, body, ctx)
    except GraphRequestError as error:
        return error


def runs(nodes: dict[str, Any], body: bytes) -> None:
    outcome = compile_document({"nodes": nodes})
    assume(isinstance(outcome, GraphPlan))
    assert isinstance(outcome, GraphPlan)
    result = asyncio.run(run_once(outcome, body))
    event(type(result).__name__)


@settings(PROPERTIES, max_examples=150)
@given(mutated_graphs(), REQUESTS)
def test_whatever_the_compiler_accepts_runs(nodes: dict[str, Any], body: bytes) -> None:
    runs(nodes, body)


LITERALS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4)
    | st.binary(max_size=2)
    | st.dates()
    | st.sampled_from(["$request", "$request.instances", "$$literal"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(PROPERTIES, max_examples=200)
@given(st.dictionaries(st.text(max_size=3), LITERALS, max_size=4) | st.lists(LITERALS, max_size=3))
def test_a_request_template_compiles_only_if_it_can_be_sent(template: Any) -> None:
    graph = compile_document(
        {
            "nodes": {
                "root": {
                    "routerType": "Sequence",
                    "steps": [{"serviceUrl": "http://m.test/", "request": template}],
                }
            }
        }
    )
    if isinstance(graph, GraphSpecError):
        event("rejected")
        return
    fake = FakeTransport()
    result = asyncio.run(run_once(graph, b'{"instances":[1]}', fake))
    assert isinstance(result, Reply), result
    orjson.loads(fake.calls[0].body)  # what went out is JSON
    event("sent")


@pytest.mark.parametrize("router_type", ["Sequence", "Switch", "Ensemble", "Splitter"])
@pytest.mark.parametrize("levels", [2, 60, 100, 101, 150, 400])
def test_nested_nodes_the_compiler_accepts_run(levels: int, router_type: str) -> None:
    graph = compile_document({"nodes": chain(levels, router_type)})
    if levels > MAX_NESTING:
        assert isinstance(graph, GraphSpecError)
        return
    assert isinstance(graph, GraphPlan)
    assert isinstance(asyncio.run(run_once(graph, b'{"a":1}')), Reply)


@settings(PROPERTIES, max_examples=200)
@given(valid_graphs())
def test_every_valid_graph_compiles_into_a_plan_that_mirrors_it(nodes: dict[str, Any]) -> None:
    graph = compile_plan(parse_spec({"nodes": nodes}, default_name="g"))
    compiles_or_explains(graph)
    assert set(graph.nodes) == set(nodes)
    for name, node in graph.nodes.items():
        spec = nodes[name]
        assert node.router_type.value == spec["routerType"]
        assert len(node.steps) == len(spec["steps"])
        for step, step_spec in zip(node.steps, spec["steps"], strict=True):
            assert step.key == step_spec.get("name", str(step.index))
            assert step.hard == (step_spec.get("dependency") == "Hard")
            if "nodeName" in step_spec:
                assert step.node is graph.nodes[step_spec["nodeName"]]
            else:
                assert step.service is not None
                assert step.service.url == step_spec["serviceUrl"]
            assert (step.condition is None) == ("condition" not in step_spec)
