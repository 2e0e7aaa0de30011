"""Graph loading: every invalid graph is rejected with all its problems, each naming node and step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infergraph.router.engine.errors import GraphSpecError
from infergraph.router.engine.plan import RouterType, load_plan
from infergraph.testing.fakes import plan, url

OK_STEP = {"serviceUrl": url("m")}

REJECTED: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "missing root",
        {"a": {"routerType": "Sequence", "steps": [OK_STEP]}},
        ["no node named 'root'"],
    ),
    (
        "dangling nodeName",
        {"root": {"routerType": "Sequence", "steps": [{"nodeName": "ghost"}]}},
        ["node 'root', step 0: nodeName 'ghost' is not a node of this graph"],
    ),
    (
        "cycle",
        {
            "root": {"routerType": "Sequence", "steps": [{"nodeName": "a"}]},
            "a": {"routerType": "Sequence", "steps": [{"name": "back", "nodeName": "root"}]},
        },
        ["cycle between nodes: root -> a -> root"],
    ),
    (
        "empty sequence",
        {"root": {"routerType": "Sequence", "steps": []}},
        ["node 'root': a Sequence node needs at least one step"],
    ),
    (
        "splitter weight missing",
        {"root": {"routerType": "Splitter", "steps": [{**OK_STEP, "weight": 100}, OK_STEP]}},
        ["node 'root', step 1: a Splitter step needs a weight"],
    ),
    (
        "splitter weight negative",
        {
            "root": {
                "routerType": "Splitter",
                "steps": [{**OK_STEP, "weight": 110}, {**OK_STEP, "weight": -10}],
            }
        },
        ["node 'root', step 1: weight -10 is negative"],
    ),
    (
        "splitter weights not 100",
        {
            "root": {
                "routerType": "Splitter",
                "steps": [{**OK_STEP, "weight": 50}, {**OK_STEP, "weight": 40}],
            }
        },
        ["node 'root': Splitter weights sum to 90, not 100"],
    ),
    (
        "no target",
        {"root": {"routerType": "Sequence", "steps": [{"name": "empty"}]}},
        ["node 'root', step 0 ('empty'): no target"],
    ),
    (
        "nodeName with a service",
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{"nodeName": "x", "serviceUrl": url("m")}],
            },
            "x": {"routerType": "Sequence", "steps": [OK_STEP]},
        },
        ["node 'root', step 0: nodeName cannot be combined with serviceName/serviceUrl"],
    ),
    (
        "duplicate step names",
        {
            "root": {
                "routerType": "Ensemble",
                "steps": [{**OK_STEP, "name": "m"}, {**OK_STEP, "name": "m"}],
            }
        },
        ["node 'root', step 1 ('m'): duplicate step name (also step 0)"],
    ),
    (
        "unknown routerType",
        {"root": {"routerType": "Parallel", "steps": [OK_STEP]}},
        ["node 'root': unknown routerType 'Parallel'"],
    ),
    (
        "jsonpath condition does not parse",
        {"root": {"routerType": "Switch", "steps": [{**OK_STEP, "condition": "$.a["}]}},
        ["node 'root', step 0: JSONPath '$.a[' does not parse"],
    ),
    (
        "gjson condition does not parse",
        {
            "root": {
                "routerType": "Switch",
                "steps": [{**OK_STEP, "condition": 'instances.#(id=="1"'}],
            }
        },
        ["node 'root', step 0: GJSON path 'instances.#(id==\"1\"' has an unclosed '('"],
    ),
    (
        "serviceName never resolved",
        {"root": {"routerType": "Sequence", "steps": [{"serviceName": "model-a"}]}},
        ["node 'root', step 0: serviceName 'model-a' has no serviceUrl (nothing resolved it)"],
    ),
    (
        "bad dependency and data",
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{**OK_STEP, "dependency": "hard", "data": "$input"}],
            }
        },
        [
            "dependency 'hard' must be Soft or Hard",
            "'$input' must start with $request, $response or $steps.<name>",
        ],
    ),
    (
        "wrong field type names node and step",
        {"root": {"routerType": "Splitter", "steps": [{**OK_STEP, "weight": "lots"}]}},
        ["node 'root', step 0: weight: Input should be a valid integer"],
    ),
]


@pytest.mark.parametrize(
    ("nodes", "expected"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_invalid_graph_is_rejected_naming_node_and_step(
    nodes: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(GraphSpecError) as caught:
        plan(nodes)
    text = str(caught.value)
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


def test_every_problem_is_listed_not_only_the_first() -> None:
    with pytest.raises(GraphSpecError) as caught:
        plan(
            {
                "root": {"routerType": "Sequence", "steps": [{"nodeName": "ghost"}, {}]},
                "other": {"routerType": "Bogus", "steps": []},
            }
        )
    assert len(caught.value.problems) == 4, caught.value.problems


def test_cycle_is_reported_once() -> None:
    with pytest.raises(GraphSpecError) as caught:
        plan(
            {
                "root": {"routerType": "Sequence", "steps": [{"nodeName": "a"}]},
                "a": {"routerType": "Sequence", "steps": [{"nodeName": "b"}]},
                "b": {"routerType": "Sequence", "steps": [{"nodeName": "a"}]},
            }
        )
    assert [str(p) for p in caught.value.problems] == ["node 'a': cycle between nodes: a -> b -> a"]


def test_resolved_step_with_service_name_and_url_is_valid_and_the_url_wins() -> None:
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{"serviceName": "m", "serviceUrl": url("m")}],
            }
        }
    )
    assert graph.root.steps[0].service is not None
    assert graph.root.steps[0].service.url == url("m")


def test_pod_fields_and_unknown_fields_are_ignored() -> None:
    graph = plan(
        {"root": {"routerType": "Sequence", "steps": [{**OK_STEP, "future": 1}]}},
        resources={"limits": {"cpu": "1"}},
        minReplicas=2,
        affinity={},
    )
    assert graph.root.router_type is RouterType.SEQUENCE


def test_router_timeouts_zero_means_none_and_defaults_match_kserve() -> None:
    default = plan({"root": {"routerType": "Sequence", "steps": [OK_STEP]}}).timeouts
    assert (
        default.server_read,
        default.server_write,
        default.server_idle,
        default.service_client,
    ) == (
        60.0,
        60.0,
        180.0,
        None,
    )
    custom = plan(
        {"root": {"routerType": "Sequence", "steps": [OK_STEP]}},
        routerTimeouts={"serverWrite": 0, "serviceClient": 5},
    ).timeouts
    assert (custom.server_write, custom.service_client) == (None, 5.0)


YAML_CR = """
apiVersion: serving.kserve.io/v1alpha1
kind: InferenceGraph
metadata:
  name: dogs-and-cats
spec:
  nodes:
    root:
      routerType: Sequence
      steps:
        - serviceUrl: http://m.test/predict
"""


def test_load_whole_custom_resource_from_yaml_takes_its_name() -> None:
    graph = load_plan(YAML_CR, default_name="file-stem")
    assert graph.name == "dogs-and-cats"


def test_load_bare_spec_from_json_uses_default_name() -> None:
    graph = load_plan(
        b'{"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://m/"}]}}}',
        default_name="g",
    )
    assert graph.name == "g"


@pytest.mark.parametrize("text", ["", "[]", "{}", "nodes: [", '{"nodes": {}}'])
def test_empty_or_malformed_documents_are_rejected(text: str) -> None:
    with pytest.raises(GraphSpecError):
        load_plan(text, default_name="g")


def test_malformed_url_loads_with_a_warning_and_fails_at_call_time() -> None:
    graph = plan(
        {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://x.{$domain}/p"}]}}
    )
    assert any("invalid host" in str(w) for w in graph.warnings)


GRAPH_FILES = sorted((Path(__file__).resolve().parents[2] / "graphs").glob("*.yaml"))


@pytest.mark.parametrize("path", GRAPH_FILES, ids=[p.name for p in GRAPH_FILES])
def test_every_example_graph_loads_without_warnings(path: Path) -> None:
    graph = load_plan(path.read_text(), default_name=path.stem)
    assert graph.warnings == ()
    assert graph.name == ("iris-demo" if path.stem == "demo" else path.stem)


def test_there_are_example_graphs() -> None:
    assert len(GRAPH_FILES) >= 6
