"""An InferenceGraph's steps resolved against its Predictors, and the problems the operator,
its webhook and ``infergraph validate`` all report, each naming its node and step."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from infergraph.operator import graphs
from infergraph.operator.resources import Endpoint
from infergraph.router.protocols import Protocol


def sequence(*steps: dict[str, Any], node: str = "root") -> dict[str, Any]:
    return {"nodes": {node: {"routerType": "Sequence", "steps": list(steps)}}}


REFERENCES: list[tuple[str, dict[str, Any], set[str]]] = [
    ("no nodes", {}, set()),
    ("empty nodes", {"nodes": {}}, set()),
    ("a serviceName step", sequence({"serviceName": "scaler"}), {"scaler"}),
    (
        "every node's steps, once each",
        {
            "nodes": {
                "root": {
                    "routerType": "Sequence",
                    "steps": [{"serviceName": "a"}, {"nodeName": "pick"}, {"serviceName": "a"}],
                },
                "pick": {
                    "routerType": "Switch",
                    "steps": [
                        {"serviceName": "b", "condition": "$.x"},
                        {"serviceName": "c", "condition": "$.y"},
                    ],
                },
            }
        },
        {"a", "b", "c"},
    ),
    (
        "a step with its own serviceUrl refers to no Predictor",
        sequence({"serviceName": "a", "serviceUrl": "http://a/"}, {"serviceName": "b"}),
        {"b"},
    ),
    (
        "a nodeName step's serviceName is not a Predictor",
        sequence({"nodeName": "other", "serviceName": "x"}, {"serviceName": "b"}),
        {"b"},
    ),
    ("a URL-only step", sequence({"serviceUrl": "http://a/"}), set()),
    (
        "malformed nodes and steps are skipped (validation reports them)",
        {"nodes": {"root": "not a node", "b": {"steps": ["not a step", {"serviceName": "ok"}]}}},
        {"ok"},
    ),
    ("a node without steps", {"nodes": {"root": {"routerType": "Sequence"}}}, set()),
]


@pytest.mark.parametrize(
    ("spec", "names"), [c[1:] for c in REFERENCES], ids=[c[0] for c in REFERENCES]
)
def test_referenced_predictors(spec: dict[str, Any], names: set[str]) -> None:
    assert graphs.referenced_predictors(spec) == names


V1 = Endpoint(url="http://scaler/v1/models/scaler:predict", protocol=Protocol.V1, model="scaler")
GRPC = Endpoint(url="grpc://m:80/v2/models/m", protocol=Protocol.V2_GRPC, model="m")
NO_PROTOCOL = Endpoint(url="http://custom")
RESOLVED: list[tuple[str, dict[str, Any], dict[str, Endpoint], list[dict[str, Any]]]] = [
    (
        "the URL and protocol of the Predictor",
        sequence({"name": "scale", "serviceName": "scaler", "data": "$request"}),
        {"scaler": V1},
        [
            {
                "name": "scale",
                "serviceName": "scaler",
                "data": "$request",
                "serviceUrl": "http://scaler/v1/models/scaler:predict",
                "protocol": "v1",
            }
        ],
    ),
    (
        "a step's own protocol wins",
        sequence({"serviceName": "m", "protocol": "v2"}),
        {"m": GRPC},
        [{"serviceName": "m", "protocol": "v2", "serviceUrl": "grpc://m:80/v2/models/m"}],
    ),
    (
        "an endpoint without a protocol sets none",
        sequence({"serviceName": "c"}),
        {"c": NO_PROTOCOL},
        [{"serviceName": "c", "serviceUrl": "http://custom"}],
    ),
    (
        "a step's own serviceUrl is kept",
        sequence({"serviceName": "scaler", "serviceUrl": "http://elsewhere/"}),
        {"scaler": V1},
        [{"serviceName": "scaler", "serviceUrl": "http://elsewhere/"}],
    ),
    (
        "an unknown Predictor is left unresolved",
        sequence({"serviceName": "ghost"}, {"serviceName": "scaler"}),
        {"scaler": V1},
        [
            {"serviceName": "ghost"},
            {
                "serviceName": "scaler",
                "serviceUrl": "http://scaler/v1/models/scaler:predict",
                "protocol": "v1",
            },
        ],
    ),
    (
        "nodeName steps are not touched",
        sequence({"nodeName": "n", "serviceName": "scaler"}),
        {"scaler": V1},
        [{"nodeName": "n", "serviceName": "scaler"}],
    ),
]


@pytest.mark.parametrize(
    ("spec", "endpoints", "steps"), [c[1:] for c in RESOLVED], ids=[c[0] for c in RESOLVED]
)
def test_resolve(
    spec: dict[str, Any], endpoints: dict[str, Endpoint], steps: list[dict[str, Any]]
) -> None:
    before = copy.deepcopy(spec)
    resolved = graphs.resolve(spec, endpoints)
    assert resolved["nodes"]["root"]["steps"] == steps
    assert spec == before  # a copy: the object's own spec is never changed


def test_resolve_keeps_everything_else() -> None:
    spec = {
        **sequence({"serviceName": "scaler"}),
        "routerTimeouts": {"serverRead": 10},
        "minReplicas": 1,
    }
    resolved = graphs.resolve(spec, {"scaler": V1})
    assert {k: v for k, v in resolved.items() if k != "nodes"} == {
        "routerTimeouts": {"serverRead": 10},
        "minReplicas": 1,
    }


JSONPATH_ERROR = "JSONPath '$.a[' does not parse"
PROBLEMS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("valid, its Predictor not there yet", sequence({"serviceName": "later"}), []),
    ("a URL step", sequence({"serviceUrl": "http://m/"}), []),
    ("no nodes", {}, ["the graph has no nodes"]),
    (
        "no root node",
        sequence({"serviceName": "a"}, node="main"),
        ["the graph has no node named 'root' (nodes: main)"],
    ),
    (
        "a step is named by its index",
        sequence({"nodeName": "ghost"}),
        ["node 'root', step 0: nodeName 'ghost' is not a node of this graph"],
    ),
    (
        "and by its name when it has one",
        sequence({"name": "first", "serviceName": "a"}, {"name": "second", "nodeName": "ghost"}),
        ["node 'root', step 1 ('second'): nodeName 'ghost' is not a node of this graph"],
    ),
    (
        "a resilience policy, on a Predictor's step, checked as the router checks it",
        sequence(
            {"serviceName": "a", "retry": {"maxRetries": 2, "initialDelayMs": 9, "maxDelayMs": 1}}
        ),
        ["node 'root', step 0: retry.initialDelayMs 9 is above maxDelayMs 1"],
    ),
    (
        "a fallback that loops",
        sequence({"serviceName": "a", "fallback": {"nodeName": "root"}}),
        ["node 'root', step 0: fallback would loop: root -> root"],
    ),
    (
        "a step without a target",
        sequence({}),
        ["node 'root', step 0: no target: set one of nodeName, serviceName, serviceUrl, endpoints"],
    ),
    (
        "an unknown routerType",
        {"nodes": {"root": {"routerType": "Bogus", "steps": [{"serviceName": "a"}]}}},
        ["node 'root': unknown routerType 'Bogus' (one of Sequence, Switch, Ensemble, Splitter)"],
    ),
    (
        "an unknown protocol",
        sequence({"serviceName": "a", "protocol": "v9"}),
        ["node 'root', step 0: unknown protocol 'v9' (one of v1, v2, v2-grpc, openai)"],
    ),
    (
        "Splitter weights on Predictor steps",
        {
            "nodes": {
                "root": {
                    "routerType": "Splitter",
                    "steps": [
                        {"serviceName": "a", "weight": 50},
                        {"serviceName": "b", "weight": 40},
                    ],
                }
            }
        },
        ["node 'root': Splitter weights sum to 90, not 100"],
    ),
]


@pytest.mark.parametrize(
    ("spec", "problems"), [c[1:] for c in PROBLEMS], ids=[c[0] for c in PROBLEMS]
)
def test_problems(spec: dict[str, Any], problems: list[str]) -> None:
    assert graphs.problems(spec, "g") == problems


def test_every_problem_is_reported_at_once() -> None:
    """What the kube tests' broken graph gets, in its status and from the webhook."""
    spec = sequence({"serviceName": "x", "condition": "$.a["}, node="main")
    root, jsonpath = graphs.problems(spec, "broken")
    assert root == "the graph has no node named 'root' (nodes: main)"
    # The parser's own words follow (they are jsonpath-ng's, not ours).
    assert jsonpath.startswith(f"node 'main', step 0: {JSONPATH_ERROR}: ")


def test_invalid_graph_message() -> None:
    assert graphs.invalid_graph_message(["no node named 'root'", "node 'a', step 0: bad"]) == (
        "invalid graph:\n  - no node named 'root'\n  - node 'a', step 0: bad"
    )
