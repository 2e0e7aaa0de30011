"""KServe's Standard mode (RawDeployment) for graph routers: the Deployment, Service and HPA
the operator builds instead of a Knative Service, and how the mode is chosen.

No API server: the builders are pure functions of the graph (tests/kube applies them to a
real one)."""

from __future__ import annotations

from typing import Any

import pytest

from infergraph.operator import standard
from infergraph.operator.resources import InferenceGraphSpec, PredictorSpec

OWNER = {
    "apiVersion": "infergraph.dev/v1alpha1",
    "kind": "InferenceGraph",
    "name": "iris",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}
NODES = {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://m/"}]}}
LABELS = {
    "app.kubernetes.io/managed-by": "infergraph",
    "infergraph.dev/graph": "iris",
    "serving.kserve.io/inferencegraph": "iris",
    "infergraph.dev/deployment-mode": "Standard",
}


def graph(**spec: Any) -> InferenceGraphSpec:
    return InferenceGraphSpec.model_validate({"nodes": NODES, **spec})


@pytest.mark.parametrize(
    ("annotations", "default", "mode"),
    [
        ({}, "Serverless", "Serverless"),
        ({}, "Standard", "Standard"),
        ({"serving.kserve.io/deploymentMode": "Standard"}, "Serverless", "Standard"),
        ({"serving.kserve.io/deploymentMode": "RawDeployment"}, "Serverless", "Standard"),
        ({"serving.kserve.io/deploymentMode": "Serverless"}, "Standard", "Serverless"),
    ],
)
def test_the_annotation_chooses_the_mode_else_the_default(
    annotations: dict[str, str], default: standard.DeploymentMode, mode: str
) -> None:
    assert standard.deployment_mode(annotations, default) == mode


def test_an_unknown_mode_or_autoscaler_is_refused_by_name() -> None:
    with pytest.raises(standard.ModeError, match="'Raw' is not a deployment mode"):
        standard.deployment_mode({"serving.kserve.io/deploymentMode": "Raw"}, "Serverless")
    with pytest.raises(standard.ModeError, match="'keda' is not supported in Standard mode"):
        standard.autoscaler_class({"serving.kserve.io/autoscalerClass": "keda"})


def test_the_deployment_is_kserves_with_our_router_container() -> None:
    deployment = standard.router_deployment(
        "iris", "models", "iris-graph", graph(), OWNER, server_write=20,
        labels={"team": "a"}, annotations={"note": "x"}, env={"PROPAGATE_HEADERS": "X-Id"},
    )  # fmt: skip
    meta = deployment["metadata"]
    assert meta["labels"] == {"team": "a", **LABELS}
    assert meta["annotations"] == {"note": "x"}
    assert meta["ownerReferences"] == [OWNER]
    spec = deployment["spec"]
    assert spec["selector"] == {"matchLabels": {"app": "isvc.iris"}}
    assert spec["template"]["metadata"]["labels"]["app"] == "isvc.iris"
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    assert (spec["revisionHistoryLimit"], spec["progressDeadlineSeconds"]) == (10, 600)
    assert "replicas" not in spec  # the HPA decides
    pod = spec["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    # The drain (30 s), the longest request (serverWrite 20 s) and a margin.
    assert pod["terminationGracePeriodSeconds"] == 55
    assert "timeoutSeconds" not in pod
    (container,) = pod["containers"]
    assert container["name"] == "iris"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["env"] == [{"name": "PROPAGATE_HEADERS", "value": "X-Id"}]
    assert pod["volumes"] == [{"name": "graph", "configMap": {"name": "iris-graph"}}]


def test_the_service_maps_port_80_to_the_router() -> None:
    service = standard.router_k8s_service("iris", "models", OWNER)
    assert service["spec"] == {
        "selector": {"app": "isvc.iris"},
        "ports": [{"name": "iris", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
    }


HPAS: list[tuple[str, dict[str, Any], dict[str, str], Any]] = [
    ("defaults: 1 to 1 on CPU at 80%", {}, {}, (1, 1, "cpu", 80)),
    ("min 0 is raised to 1", {"minReplicas": 0, "maxReplicas": 4}, {}, (1, 4, "cpu", 80)),
    ("max below min is raised", {"minReplicas": 3, "maxReplicas": 2}, {}, (3, 3, "cpu", 80)),
    ("scaleTarget", {"scaleTarget": 60}, {}, (1, 1, "cpu", 60)),
    ("memory with a target", {"scaleMetric": "memory", "scaleTarget": 70}, {},
     (1, 1, "memory", 70)),
    ("memory without a target stays on CPU", {"scaleMetric": "memory"}, {}, (1, 1, "cpu", 80)),
    ("external: no HPA", {}, {"serving.kserve.io/autoscalerClass": "external"}, None),
    ("none: no HPA", {}, {"serving.kserve.io/autoscalerClass": "none"}, None),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "annotations", "expected"), [c[1:] for c in HPAS],
                         ids=[c[0] for c in HPAS])  # fmt: skip
def test_the_hpa_follows_kserves_defaults(
    spec: dict[str, Any], annotations: dict[str, str], expected: Any
) -> None:
    hpa = standard.hpa("iris", "models", graph(**spec), OWNER, annotations=annotations)
    if expected is None:
        assert hpa is None
        return
    assert hpa is not None
    minimum, maximum, resource, target = expected
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "iris",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (minimum, maximum)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {
        "name": resource,
        "target": {"type": "Utilization", "averageUtilization": target},
    }


def test_autoscaler_none_pins_the_replicas_to_min() -> None:
    none = {"serving.kserve.io/autoscalerClass": "none"}
    pinned = standard.router_deployment(
        "iris", "models", "cm", graph(minReplicas=2), OWNER, annotations=none
    )
    assert pinned["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        (None, False),
        ({}, False),
        ({"conditions": [{"type": "Progressing", "status": "True"}]}, False),
        ({"conditions": [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"}]}, False),
        ({"conditions": [{"type": "Available", "status": "True"}]}, True),
    ],
)  # fmt: skip
def test_ready_once_the_deployment_is_available(status: Any, ready: bool) -> None:
    deployment = None if status is None else {"status": status}
    assert standard.deployment_ready(deployment)[0] is ready


PREDICTOR_OWNER = {**OWNER, "kind": "Predictor", "name": "resnet"}


@pytest.mark.parametrize(
    ("spec", "port", "name"),
    [
        ({"runtime": "triton", "model": {"name": "resnet50"}}, 8000, "http"),
        ({"runtime": "triton", "model": {"name": "resnet50"}, "protocol": "v2-grpc"}, 8001,
         "grpc"),
        ({"runtime": "custom", "image": "me/model:1", "port": 9000, "model": {"name": "m"}},
         9000, "http"),
    ],
)  # fmt: skip
def test_a_predictor_in_standard_mode_keeps_its_server_behind_port_80(
    spec: dict[str, Any], port: int, name: str
) -> None:
    predictor = PredictorSpec.model_validate(spec)
    deployment = standard.predictor_deployment("resnet", "models", predictor, PREDICTOR_OWNER)
    labels = deployment["metadata"]["labels"]
    assert labels["infergraph.dev/predictor"] == "resnet"
    assert "infergraph.dev/graph" not in labels
    assert labels["infergraph.dev/deployment-mode"] == "Standard"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["ports"] == [{"name": name, "containerPort": port, "protocol": "TCP"}]
    assert pod["automountServiceAccountToken"] is False
    service = standard.predictor_k8s_service("resnet", "models", deployment, PREDICTOR_OWNER)
    (entry,) = service["spec"]["ports"]
    assert (entry["port"], entry["targetPort"], entry["name"]) == (80, port, name)
    assert entry.get("appProtocol") == ("kubernetes.io/h2c" if name == "grpc" else None)
    assert service["spec"]["selector"] == {"app": "isvc.resnet"}
