"""Our pre-checks of a Predictor's Knative Service (``knative.knative_problems``) against the
real Knative webhook: for each rule we check, a Service that breaks it must be refused by both,
and one that keeps it admitted by both. A Predictor our checks accept but Knative refuses is a
bug in our checks.

Each Service is what the operator would write for the Predictor (``predictor_service``), sent
to the API server as a dry run, so Knative's defaulting and validation webhooks judge it and
nothing is stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from infergraph.operator import knative
from infergraph.operator.reconcile import owner_reference
from infergraph.operator.resources import PredictorSpec
from infergraph.testing.cluster import NAMESPACE
from infergraph.testing.localcluster import Tier

OWNER = {
    "apiVersion": "infergraph.dev/v1alpha1",
    "kind": "Predictor",
    "metadata": {"name": "p", "uid": "00000000-0000-0000-0000-000000000001"},
}


def service_for(spec: dict[str, Any], **pod: Any) -> dict[str, Any]:
    service = knative.predictor_service(
        "rules", NAMESPACE, PredictorSpec.model_validate(spec), owner_reference(OWNER)
    )
    template = service["spec"]["template"]["spec"]
    for field, value in pod.items():
        if field.startswith("container_"):
            template["containers"][0][field.removeprefix("container_")] = value
        else:
            template[field] = value
    return service


def knative_admits(tier: Tier, service: dict[str, Any]) -> tuple[bool, str]:
    """(admitted, Knative's message) for a dry-run create of the Service."""
    api = client.CustomObjectsApi(tier.kube.api)
    try:
        api.create_namespaced_custom_object(
            "serving.knative.dev", "v1", NAMESPACE, "services", service, dry_run="All"
        )
    except client.ApiException as exc:
        if exc.status not in (400, 422):
            raise
        return False, str(exc.body)
    return True, ""


CUSTOM = {"runtime": "custom", "image": "x/y:1", "protocol": "v1", "model": {"name": "m"}}
PORT = {"name": "http1", "containerPort": 8080}

CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # (what, Predictor spec, pod fields changed after the operator built it, our verdict)
    ("a custom runtime on 8080", CUSTOM, {}, True),
    ("Triton over REST", {"runtime": "triton", "model": {"name": "m"}}, {}, True),
    (
        "Triton over gRPC (h2c)",
        {"runtime": "triton", "protocol": "v2-grpc", "model": {"name": "m"}},
        {},
        True,
    ),
    ("vLLM", {"runtime": "vllm", "model": {"name": "m"}}, {}, True),
    *(
        (f"reserved port {port}", {**CUSTOM, "port": port}, {}, False)
        for port in sorted(knative.RESERVED_PORTS)
    ),
    (
        "two ports",
        CUSTOM,
        {"container_ports": [PORT, {"name": "h2c", "containerPort": 9000}]},
        False,
    ),
    ("no port", CUSTOM, {"container_ports": []}, True),
    ("a port named grpc", CUSTOM, {"container_ports": [{**PORT, "name": "grpc"}]}, False),
    ("no image", {**CUSTOM, "image": None}, {}, False),
]


@pytest.mark.parametrize(("spec", "pod", "ours"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_our_checks_agree_with_knatives_webhook(
    tier: Tier, spec: dict[str, Any], pod: dict[str, Any], ours: bool
) -> None:
    service = service_for(spec, **pod)
    errors, _ = knative.knative_problems(service)
    admitted, message = knative_admits(tier, service)
    assert (not errors) == ours, errors
    assert admitted == ours, message


FLAGGED: dict[str, Any] = {
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                        ]
                    }
                ]
            }
        }
    },
}


@pytest.fixture
def features(tier: Tier) -> Iterator[client.CoreV1Api]:
    core = client.CoreV1Api(tier.kube.api)
    yield core
    core.patch_namespaced_config_map(
        "config-features",
        "knative-serving",
        {"data": dict.fromkeys(knative.FEATURE_FLAGGED.values())},
    )


@pytest.mark.parametrize("field", sorted(FLAGGED))
def test_flagged_pod_fields_follow_knatives_feature_flags(
    tier: Tier, features: client.CoreV1Api, field: str
) -> None:
    """Knative refuses these fields unless config-features enables them. Our check cannot see the
    flags, so it warns; with the flag off, the operator reports Knative's refusal instead."""
    service = service_for(CUSTOM, **{field: FLAGGED[field]})
    errors, warnings = knative.knative_problems(service)
    assert errors == []
    flag = knative.FEATURE_FLAGGED[field]
    assert warnings == [f"{field} needs Knative's config-features flag {flag}: enabled"]
    admitted, message = knative_admits(tier, service)
    assert not admitted
    assert field in message or "must not set the field" in message, message
    features.patch_namespaced_config_map(
        "config-features", "knative-serving", {"data": {flag: "enabled"}}
    )
    # Knative's webhook reads its configuration through an informer: a moment later it admits.
    deadline = time.monotonic() + 30
    while not (verdict := knative_admits(tier, service))[0] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert verdict[0], verdict[1]


def test_a_predictor_knative_refuses_says_why_in_its_status(tier: Tier) -> None:
    """nodeSelector passes our checks with a warning (the flag is Knative's configuration), and
    with the flag off Knative's webhook refuses the Service: the Predictor's status carries
    Knative's reason rather than the operator retrying for ever."""
    api = client.CustomObjectsApi(tier.kube.api)
    body = {
        "apiVersion": "infergraph.dev/v1alpha1",
        "kind": "Predictor",
        "metadata": {"name": "placed"},
        "spec": {**CUSTOM, "nodeSelector": {"kubernetes.io/os": "linux"}},
    }
    api.create_namespaced_custom_object("infergraph.dev", "v1alpha1", NAMESPACE, "predictors", body)
    deadline = time.monotonic() + 60
    condition: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found: Any = api.get_namespaced_custom_object(
            "infergraph.dev", "v1alpha1", NAMESPACE, "predictors", "placed"
        )
        conditions = (found.get("status") or {}).get("conditions") or []
        condition = next((c for c in conditions if c.get("type") == "Ready"), {})
        if condition.get("reason") == "InvalidPredictor":
            break
        time.sleep(0.5)
    assert condition.get("status") == "False", condition
    assert condition.get("reason") == "InvalidPredictor", condition
    message = condition.get("message", "")
    assert 'admission webhook "validation.webhook.serving.knative.dev" denied' in message
    assert "nodeSelector" in message
    assert "needs Knative's config-features flag kubernetes.podspec-nodeselector" in message
