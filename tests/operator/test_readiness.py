"""What the operator writes in status: Ready conditions from Knative Services, Predictor
endpoints, why a graph is not Ready yet, and the graph document its router reads.

These are the pure parts of reconciliation; the reads and writes around them are exercised
against a real API server by tests/kube.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from infergraph.operator import reconcile
from infergraph.operator.reconcile import PredictorReadiness, admission_refusal
from infergraph.operator.resources import Endpoint, PredictorSpec
from infergraph.router.protocols import Protocol

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def without_time(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` with each condition's lastTransitionTime checked, then left out."""
    conditions = []
    for cond in status.get("conditions", []):
        when = cond["lastTransitionTime"]
        assert TIMESTAMP.fullmatch(when), when
        conditions.append({k: v for k, v in cond.items() if k != "lastTransitionTime"})
    return {**status, "conditions": conditions} if "conditions" in status else status


def ksvc(
    ready: str | None = "True",
    url: str | None = "http://p.models.example.com",
    message: str | None = None,
    reason: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """A Knative Service as Knative reports it (``ready`` None: no Ready condition yet)."""
    conditions: list[dict[str, Any]] = []
    if ready is not None:
        cond = {"type": "Ready", "status": ready}
        if message is not None:
            cond["message"] = message
        if reason is not None:
            cond["reason"] = reason
        conditions = [{"type": "ConfigurationsReady", "status": "True"}, cond]
    status: dict[str, Any] = {"conditions": conditions}
    if address is not None:
        status["address"] = {"url": address}
    if url is not None:
        status["url"] = url
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "status": status}


KSVC_READY: list[tuple[str, dict[str, Any] | None, tuple[bool, str | None, str]]] = [
    ("absent", None, (False, None, "the Knative Service does not exist yet")),
    (
        "no status yet",
        {"kind": "Service"},
        (False, None, "the Knative Service has not reported readiness yet"),
    ),
    (
        "no Ready condition yet",
        ksvc(ready=None, url=None),
        (False, None, "the Knative Service has not reported readiness yet"),
    ),
    ("ready", ksvc(), (True, "http://p.models.example.com", "")),
    (
        "not ready: Knative's message",
        ksvc("False", message="Revision is failing", reason="RevisionFailed"),
        (False, "http://p.models.example.com", "Revision is failing"),
    ),
    (
        "not ready, no message: the reason",
        ksvc("False", reason="RevisionMissing"),
        (False, "http://p.models.example.com", "RevisionMissing"),
    ),
    (
        "unknown: not ready",
        ksvc("Unknown", url=None, reason="Deploying"),
        (False, None, "Deploying"),
    ),
]


@pytest.mark.parametrize(
    ("service", "expected"), [c[1:] for c in KSVC_READY], ids=[c[0] for c in KSVC_READY]
)
def test_ksvc_ready(service: dict[str, Any] | None, expected: tuple[bool, str | None, str]) -> None:
    assert reconcile.ksvc_ready(service) == expected


@pytest.mark.parametrize(("status", "value"), [(True, "True"), (False, "False"), (None, "Unknown")])
def test_condition(status: bool | None, value: str) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    cond = reconcile.condition(status, "SomeReason", "some message")
    after = datetime.now(UTC)
    when = datetime.strptime(cond.pop("lastTransitionTime"), "%Y-%m-%dT%H:%M:%SZ")
    assert before <= when.replace(tzinfo=UTC) <= after
    assert cond == {
        "type": "Ready",
        "status": value,
        "reason": "SomeReason",
        "message": "some message",
    }


def test_condition_message_defaults_to_empty() -> None:
    assert without_time({"conditions": [reconcile.condition(True, "Ready")]}) == {
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}]
    }


def test_owner_reference() -> None:
    body = {
        "apiVersion": "infergraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "iris", "namespace": "models", "uid": "1234", "labels": {"a": "b"}},
        "spec": {},
    }
    assert reconcile.owner_reference(body) == {
        "apiVersion": "infergraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "name": "iris",
        "uid": "1234",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def ready_predictor(endpoint: dict[str, Any] | None, ready: str = "True") -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": ready}]}
    if endpoint is not None:
        status["endpoint"] = endpoint
    return {"kind": "Predictor", "status": status}


@pytest.mark.parametrize(
    ("body", "ready"),
    [
        ({}, False),
        ({"status": {}}, False),
        ({"status": {"conditions": None}}, False),
        (ready_predictor(None), True),
        (ready_predictor(None, ready="False"), False),
        (ready_predictor(None, ready="Unknown"), False),
        ({"status": {"conditions": [{"type": "Available", "status": "True"}]}}, False),
    ],
)
def test_is_ready(body: dict[str, Any], ready: bool) -> None:
    assert reconcile.is_ready(body) is ready


V1_SPEC = PredictorSpec.model_validate(
    {
        "runtime": "custom",
        "image": "x",
        "port": 8080,
        "protocol": "v1",
        "model": {"name": "logistic"},
    }
)
PREDICTOR_STATUS: list[
    tuple[str, PredictorSpec, dict[str, Any] | None, list[str], dict[str, Any]]
] = [
    (
        "no Knative Service yet",
        V1_SPEC,
        None,
        [],
        {
            "url": None,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "KnativeServiceNotReady",
                    "message": "the Knative Service does not exist yet",
                }
            ],
        },
    ),
    (
        "ready: the URL, and the endpoint graph steps call",
        V1_SPEC,
        ksvc(url="http://classifier.models.example.com"),
        [],
        {
            "url": "http://classifier.models.example.com",
            "endpoint": {
                "url": "http://classifier.models.example.com/v1/models/logistic:predict",
                "protocol": "v1",
                "model": "logistic",
            },
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}],
        },
    ),
    (
        "the endpoint is at Knative's cluster-local address, where routers call it",
        V1_SPEC,
        ksvc(
            url="http://classifier.models.example.com",
            address="http://classifier.models.svc.cluster.local",
        ),
        [],
        {
            "url": "http://classifier.models.example.com",
            "endpoint": {
                "url": "http://classifier.models.svc.cluster.local/v1/models/logistic:predict",
                "protocol": "v1",
                "model": "logistic",
            },
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}],
        },
    ),
    (
        "a URL before it is ready: the endpoint is known already",
        PredictorSpec.model_validate({"runtime": "triton", "model": {"name": "resnet50"}}),
        ksvc("False", url="http://resnet.models.example.com", message="Revision is starting"),
        [],
        {
            "url": "http://resnet.models.example.com",
            "endpoint": {
                "url": "http://resnet.models.example.com/v2/models/resnet50/infer",
                "protocol": "v2",
                "model": "resnet50",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "KnativeServiceNotReady",
                    "message": "Revision is starting",
                }
            ],
        },
    ),
    (
        "no protocol: the endpoint says none",
        PredictorSpec.model_validate({"runtime": "custom", "image": "x", "model": {"name": "m"}}),
        ksvc(url="http://c.models.example.com"),
        [],
        {
            "url": "http://c.models.example.com",
            "endpoint": {"url": "http://c.models.example.com", "model": "m"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}],
        },
    ),
    (
        "warnings join the condition's message",
        V1_SPEC,
        ksvc("False", url=None, message="Deploying"),
        ["nodeSelector needs a flag", "tolerations need a flag"],
        {
            "url": None,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "KnativeServiceNotReady",
                    "message": "Deploying; nodeSelector needs a flag; tolerations need a flag",
                }
            ],
        },
    ),
    (
        "warnings on a ready Predictor are its only message",
        V1_SPEC,
        ksvc(url=None),
        ["affinity needs a flag"],
        {
            "url": None,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "affinity needs a flag",
                }
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("spec", "service", "extra", "status"),
    [c[1:] for c in PREDICTOR_STATUS],
    ids=[c[0] for c in PREDICTOR_STATUS],
)
def test_predictor_status(
    spec: PredictorSpec,
    service: dict[str, Any] | None,
    extra: list[str],
    status: dict[str, Any],
) -> None:
    assert without_time(reconcile.predictor_status(spec, service, extra)) == status


def test_invalid_predictor_status() -> None:
    errors = ["port 8012 is reserved by Knative", "container 'model-server' has no image"]
    assert without_time(reconcile.invalid_predictor_status(errors)) == {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "InvalidPredictor",
                "message": "port 8012 is reserved by Knative; "
                "container 'model-server' has no image",
            }
        ]
    }


SCALER = {"url": "http://scaler/v1/models/scaler:predict", "protocol": "v1", "model": "scaler"}
CLASSIFIER = {"url": "http://classifier/v1/models/logistic:predict", "protocol": "v1"}
READINESS: list[tuple[str, dict[str, dict[str, Any] | None], PredictorReadiness]] = [
    ("no Predictors", {}, PredictorReadiness({}, [], [], [])),
    (
        "all ready",
        {"classifier": ready_predictor(CLASSIFIER), "scaler": ready_predictor(SCALER)},
        PredictorReadiness(
            {
                "classifier": Endpoint.model_validate(CLASSIFIER),
                "scaler": Endpoint(
                    url="http://scaler/v1/models/scaler:predict",
                    protocol=Protocol.V1,
                    model="scaler",
                ),
            },
            [],
            [],
            [],
        ),
    ),
    (
        "an endpoint but not Ready: deployable, not ready",
        {"scaler": ready_predictor(SCALER, ready="False")},
        PredictorReadiness({"scaler": Endpoint.model_validate(SCALER)}, [], [], ["scaler"]),
    ),
    (
        "Ready but no endpoint: not deployable",
        {"scaler": ready_predictor(None)},
        PredictorReadiness({}, [], ["scaler"], ["scaler"]),
    ),
    (
        "no status at all",
        {"scaler": {"kind": "Predictor"}},
        PredictorReadiness({}, [], ["scaler"], ["scaler"]),
    ),
    (
        "a missing Predictor is unresolved, not 'not ready'",
        {"ghost": None, "scaler": ready_predictor(SCALER)},
        PredictorReadiness({"scaler": Endpoint.model_validate(SCALER)}, ["ghost"], ["ghost"], []),
    ),
    (
        "each list in the order given",
        {
            "a-missing": None,
            "b-pending": ready_predictor(None, ready="False"),
            "c-ready": ready_predictor(SCALER),
            "d-missing": None,
            "e-starting": ready_predictor(CLASSIFIER, ready="Unknown"),
        },
        PredictorReadiness(
            {
                "c-ready": Endpoint.model_validate(SCALER),
                "e-starting": Endpoint.model_validate(CLASSIFIER),
            },
            ["a-missing", "d-missing"],
            ["a-missing", "b-pending", "d-missing"],
            ["b-pending", "e-starting"],
        ),
    ),
]


@pytest.mark.parametrize(
    ("predictors", "readiness"), [c[1:] for c in READINESS], ids=[c[0] for c in READINESS]
)
def test_predictor_readiness(
    predictors: dict[str, dict[str, Any] | None], readiness: PredictorReadiness
) -> None:
    assert reconcile.predictor_readiness(predictors) == readiness


UNRESOLVED: list[tuple[str, PredictorReadiness, str | None]] = [
    ("every step resolves", PredictorReadiness({}, [], [], ["a"]), None),
    (
        "Predictors without endpoints",
        PredictorReadiness({}, [], ["a", "b"], ["a", "b"]),
        "Predictors without an endpoint yet: a, b",
    ),
    (
        "a missing Predictor",
        PredictorReadiness({}, ["ghost"], ["ghost"], []),
        "Predictors not found: ghost",
    ),
    (
        "missing ones are named first (only)",
        PredictorReadiness({}, ["ghost"], ["ghost", "pending"], ["pending"]),
        "Predictors not found: ghost",
    ),
]


@pytest.mark.parametrize(
    ("readiness", "message"), [c[1:] for c in UNRESOLVED], ids=[c[0] for c in UNRESOLVED]
)
def test_unresolved_graph_status(readiness: PredictorReadiness, message: str | None) -> None:
    status = reconcile.unresolved_graph_status(readiness)
    if message is None:
        assert status is None
        return
    assert status is not None
    assert without_time(status) == {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "PredictorsNotReady", "message": message}
        ]
    }


GRAPH_STATUS: list[tuple[str, dict[str, Any] | None, list[str], dict[str, Any]]] = [
    (
        "router and Predictors ready",
        ksvc(url="http://iris.models.example.com"),
        [],
        {
            "url": "http://iris.models.example.com",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}],
        },
    ),
    (
        "the router's Knative Service not there yet",
        None,
        [],
        {
            "url": None,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "NotReady",
                    "message": "router: the Knative Service does not exist yet",
                }
            ],
        },
    ),
    (
        "router ready, Predictors not",
        ksvc(url="http://iris.models.example.com"),
        ["classifier", "scaler"],
        {
            "url": "http://iris.models.example.com",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "NotReady",
                    "message": "Predictors not ready: classifier, scaler",
                }
            ],
        },
    ),
    (
        "neither: both reasons",
        ksvc("False", url=None, message="Revision is starting"),
        ["scaler"],
        {
            "url": None,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "NotReady",
                    "message": "router: Revision is starting; Predictors not ready: scaler",
                }
            ],
        },
    ),
]


@pytest.mark.parametrize(
    ("service", "not_ready", "status"),
    [c[1:] for c in GRAPH_STATUS],
    ids=[c[0] for c in GRAPH_STATUS],
)
def test_graph_status(
    service: dict[str, Any] | None, not_ready: list[str], status: dict[str, Any]
) -> None:
    assert without_time(reconcile.graph_status(service, not_ready)) == status


def test_invalid_graph_status() -> None:
    problems = ["the graph has no node named 'root' (nodes: main)", "node 'main', step 0: bad"]
    assert without_time(reconcile.invalid_graph_status(problems)) == {
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "InvalidGraph",
                "message": "invalid graph:\n"
                "  - the graph has no node named 'root' (nodes: main)\n"
                "  - node 'main', step 0: bad",
            }
        ]
    }


def test_graph_config_map() -> None:
    owner = {"kind": "InferenceGraph", "name": "iris", "uid": "1234"}
    resolved = {
        "nodes": {
            "root": {
                "routerType": "Sequence",
                "steps": [{"serviceName": "scaler", "serviceUrl": SCALER["url"], "protocol": "v1"}],
            }
        },
        "minReplicas": 1,
    }
    config_map = reconcile.graph_config_map("iris", "models", resolved, owner)
    data = config_map.pop("data")
    assert config_map == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "iris-graph",
            "namespace": "models",
            "labels": {
                "app.kubernetes.io/managed-by": "infergraph",
                "infergraph.dev/graph": "iris",
            },
            "ownerReferences": [owner],
        },
    }
    assert list(data) == ["graph.json"]
    assert json.loads(data["graph.json"]) == {
        "apiVersion": "infergraph.dev/v1alpha1",
        "kind": "InferenceGraph",
        "metadata": {"name": "iris", "namespace": "models"},
        "spec": resolved,
    }
    # Stable text (sorted keys, indented): an unchanged graph rewrites an identical ConfigMap.
    assert data["graph.json"] == json.dumps(
        json.loads(data["graph.json"]), indent=2, sort_keys=True
    )
    assert data["graph.json"].startswith('{\n  "apiVersion": "infergraph.dev/v1alpha1",\n')


@pytest.mark.parametrize(
    ("settings", "env"),
    [
        (reconcile.OperatorSettings(), {}),
        (reconcile.OperatorSettings(otlp_endpoint=""), {}),
        (
            reconcile.OperatorSettings(otlp_endpoint="http://jaeger.infergraph-system:4318"),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger.infergraph-system:4318"},
        ),
    ],
)
def test_router_env(settings: reconcile.OperatorSettings, env: dict[str, str]) -> None:
    assert settings.router_env() == env


def test_operator_settings_default_router_image() -> None:
    assert reconcile.OperatorSettings().router_image == "ghcr.io/infergraph/router:0.1.0"


def _api_error(status: int, body: str) -> ApiException:
    error = ApiException(status=status)
    error.body = body
    return error


KNATIVE_REFUSAL = (
    'admission webhook "validation.webhook.serving.knative.dev" denied the request: validation '
    "failed: must not set the field(s): spec.template.spec.nodeSelector"
)


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        (_api_error(400, json.dumps({"message": KNATIVE_REFUSAL})), KNATIVE_REFUSAL),
        (_api_error(422, json.dumps({"message": KNATIVE_REFUSAL})), KNATIVE_REFUSAL),
        # Anything else is retried: the API server's own 422s, conflicts, outages, odd bodies.
        (_api_error(422, json.dumps({"message": "Service is invalid: spec: Required"})), None),
        (_api_error(409, json.dumps({"message": KNATIVE_REFUSAL})), None),
        (_api_error(500, "Internal error"), None),
        (_api_error(400, "not json"), None),
        (_api_error(400, "[]"), None),
    ],
)
def test_an_admission_webhooks_refusal_is_reported_not_retried(
    error: ApiException, refusal: str | None
) -> None:
    assert admission_refusal(error) == refusal
