"""KServe's Standard deployment mode (formerly RawDeployment) for graph routers and
Predictors, as plain manifests (no I/O): a Deployment, a Service and, by default, a
HorizontalPodAutoscaler instead of a Knative Service.

As KServe's raw reconciler does for an InferenceGraph: the objects are named after the graph
and carry its labels and annotations plus ``serving.kserve.io/inferencegraph``; the pods are
labelled ``app: isvc.<name>``; the Service maps port 80 (named after the graph) to 8080; the
HPA scales on CPU at ``scaleTarget`` percent (80 by default) between ``max(minReplicas, 1)``
and ``max(maxReplicas, min)``, or on memory when ``scaleMetric: memory`` and ``scaleTarget``
are both set; ``serving.kserve.io/autoscalerClass: external`` or ``none`` leaves the HPA out
(``none`` pins the replicas to ``minReplicas``). The graph is ready once its Deployment is
``Available``. A Predictor gets the same three objects around its model server container
(pods ``app: isvc.<name>``, the Service's port 80 to the server's port).
"""

from __future__ import annotations

from typing import Any, Literal

from infergraph.operator import knative
from infergraph.operator.resources import PodPlacement, PredictorSpec

DeploymentMode = Literal["Serverless", "Standard"]
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
AUTOSCALER_ANNOTATION = "serving.kserve.io/autoscalerClass"
IG_LABEL = "serving.kserve.io/inferencegraph"
# On every object made for Standard mode, so the operator watches those Deployments and no
# others (Knative's revision Deployments carry the graph and Predictor labels too).
MODE_LABEL = "infergraph.dev/deployment-mode"
# KServe's names for the modes; RawDeployment is Standard's former name.
MODES: dict[str, DeploymentMode] = {
    "Serverless": "Serverless",
    "Standard": "Standard",
    "RawDeployment": "Standard",
}
AUTOSCALER_CLASSES = ("hpa", "external", "none")
DEFAULT_SCALE_TARGET = 80
SERVICE_PORT = 80


class ModeError(ValueError):
    """An annotation names a mode or autoscaler class KServe does not have."""


def deployment_mode(annotations: dict[str, str], default: DeploymentMode) -> DeploymentMode:
    """The mode an object asks for with KServe's annotation, else the operator's default."""
    value = annotations.get(MODE_ANNOTATION)
    if value is None:
        return default
    if value not in MODES:
        raise ModeError(
            f"annotation {MODE_ANNOTATION}: {value!r} is not a deployment mode "
            f"(one of {', '.join(MODES)})"
        )
    return MODES[value]


def autoscaler_class(annotations: dict[str, str]) -> str:
    value = annotations.get(AUTOSCALER_ANNOTATION, "hpa")
    if value not in AUTOSCALER_CLASSES:
        raise ModeError(
            f"annotation {AUTOSCALER_ANNOTATION}: {value!r} is not supported in Standard mode "
            f"(one of {', '.join(AUTOSCALER_CLASSES)})"
        )
    return value


def pod_selector(name: str) -> dict[str, str]:
    return {"app": f"isvc.{name}"}


def _metadata(
    name: str,
    namespace: str,
    owner: dict[str, Any],
    labels: dict[str, str],
    annotations: dict[str, str],
) -> dict[str, Any]:
    """A graph's object: ``owner`` is an InferenceGraph, or a Predictor (its own label)."""
    ours = (
        {knative.PREDICTOR_LABEL: name}
        if owner.get("kind") == "Predictor"
        else {knative.GRAPH_LABEL: name, IG_LABEL: name}
    )
    return {
        "name": name,
        "namespace": namespace,
        "labels": {**labels, **knative.MANAGED_BY, **ours, MODE_LABEL: "Standard"},
        "annotations": dict(annotations),
        "ownerReferences": [owner],
    }


def _deployment(
    name: str,
    pod: dict[str, Any],
    metadata: dict[str, Any],
    settings: PodPlacement,
    annotations: dict[str, str],
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": pod_selector(name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
        },
        "revisionHistoryLimit": 10,
        "progressDeadlineSeconds": 600,
        "template": {
            "metadata": {"labels": {**metadata["labels"], **pod_selector(name)}},
            "spec": pod,
        },
    }
    if autoscaler_class(annotations) == "none" and settings.min_replicas is not None:
        spec["replicas"] = settings.min_replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def _pod_of(
    service: dict[str, Any], port_name: str, container_name: str | None = None
) -> dict[str, Any]:
    """The pod of a Knative Service we build, for a Deployment: its one container's port
    renamed for a plain Service (Knative names it ``http1`` or ``h2c``), and no
    service-account token."""
    pod = dict(service["spec"]["template"]["spec"])
    container = dict(pod["containers"][0])
    if container_name is not None:
        container["name"] = container_name
    port = container["ports"][0]["containerPort"]
    container["ports"] = [{"name": port_name, "containerPort": port, "protocol": "TCP"}]
    pod["containers"] = [container]
    pod["automountServiceAccountToken"] = False
    return pod


def router_deployment(
    name: str,
    namespace: str,
    config_map: str,
    settings: PodPlacement,
    owner: dict[str, Any],
    *,
    image: str = knative.ROUTER_IMAGE,
    server_write: float | None = None,
    service_account: str | None = None,
    affinity: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    grpc: bool = False,
    auth: bool = False,
) -> dict[str, Any]:
    """The router's Deployment: the same container as under Knative (the graph from its
    ConfigMap, hot-reloaded), a grace period that covers the drain and the longest request, and
    no service-account token unless it checks callers with the API server (``auth``); with
    ``grpc``, gRPC ingress on a second port."""
    service = knative.router_service(
        name,
        namespace,
        config_map,
        settings,
        owner,
        image=image,
        server_write=server_write,
        service_account=service_account,
        affinity=affinity,
        env=env,
        grpc="also" if grpc else "off",
        auth=auth,
    )
    pod = _pod_of(service, "http", container_name=name)
    if grpc:
        container = pod["containers"][0]
        grpc_port = {"name": "grpc", "containerPort": knative.GRPC_PORT, "protocol": "TCP"}
        container["ports"] = [*container["ports"], grpc_port]
    if auth:
        pod["automountServiceAccountToken"] = True
    pod.pop("timeoutSeconds")  # Knative's; a Deployment's pods have a grace period instead
    pod["terminationGracePeriodSeconds"] = knative.router_grace_seconds(server_write)
    metadata = _metadata(name, namespace, owner, labels or {}, annotations or {})
    return _deployment(name, pod, metadata, settings, annotations or {})


def predictor_deployment(
    name: str,
    namespace: str,
    spec: PredictorSpec,
    owner: dict[str, Any],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Predictor's model server as a Deployment: the container it has under Knative, its
    one port named for a plain Service."""
    service = knative.predictor_service(name, namespace, spec, owner)
    port_name = service["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
    pod = _pod_of(service, "grpc" if port_name == "h2c" else "http")
    metadata = _metadata(name, namespace, owner, labels or {}, annotations or {})
    return _deployment(name, pod, metadata, spec, annotations or {})


def predictor_k8s_service(
    name: str,
    namespace: str,
    deployment: dict[str, Any],
    owner: dict[str, Any],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Port 80 to the model server's port (``h2c`` declared for gRPC)."""
    port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    entry: dict[str, Any] = {
        "name": port["name"],
        "port": SERVICE_PORT,
        "targetPort": port["containerPort"],
        "protocol": "TCP",
    }
    if port["name"] == "grpc":
        entry["appProtocol"] = "kubernetes.io/h2c"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, owner, labels or {}, annotations or {}),
        "spec": {"selector": pod_selector(name), "ports": [entry]},
    }


def router_k8s_service(
    name: str,
    namespace: str,
    owner: dict[str, Any],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    grpc: bool = False,
) -> dict[str, Any]:
    """Port 80, named after the graph, to the router's 8080; with ``grpc``, 8081 to its gRPC
    ingress too."""
    ports: list[dict[str, Any]] = [
        {"name": name, "port": SERVICE_PORT, "targetPort": 8080, "protocol": "TCP"}
    ]
    if grpc:
        ports.append(
            {
                "name": "grpc",
                "port": knative.GRPC_PORT,
                "targetPort": knative.GRPC_PORT,
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace, owner, labels or {}, annotations or {}),
        "spec": {"selector": pod_selector(name), "ports": ports},
    }


def hpa(
    name: str,
    namespace: str,
    settings: PodPlacement,
    owner: dict[str, Any],
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The HPA KServe makes for a graph's router or a Predictor (None for the ``external``
    and ``none`` autoscaler classes)."""
    if autoscaler_class(annotations or {}) != "hpa":
        return None
    minimum = max(settings.min_replicas or 0, 1)
    maximum = max(settings.max_replicas or 0, minimum)
    resource = "cpu"
    target = settings.scale_target or DEFAULT_SCALE_TARGET
    if settings.scale_metric == "memory" and settings.scale_target is not None:
        resource = "memory"
    metric = {
        "type": "Resource",
        "resource": {
            "name": resource,
            "target": {"type": "Utilization", "averageUtilization": target},
        },
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, namespace, owner, labels or {}, annotations or {}),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": minimum,
            "maxReplicas": maximum,
            "metrics": [metric],
        },
    }


def deployment_ready(deployment: dict[str, Any] | None) -> tuple[bool, str]:
    """Ready once the Deployment has the condition ``Available=True`` (as KServe checks)."""
    if deployment is None:
        return False, "the Deployment does not exist yet"
    for cond in (deployment.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Available":
            if cond.get("status") == "True":
                return True, ""
            return False, cond.get("message") or cond.get("reason") or "not available"
    return False, "the Deployment is not available yet"


def cluster_grpc_address(name: str, namespace: str) -> str:
    """Where a Standard-mode graph's gRPC ingress answers inside the cluster."""
    return f"grpc://{name}.{namespace}.svc.cluster.local:{knative.GRPC_PORT}"


def cluster_url(name: str, namespace: str) -> str:
    """Where a graph or Predictor answers inside the cluster (Standard mode creates no
    Ingress)."""
    return f"http://{name}.{namespace}.svc.cluster.local"
