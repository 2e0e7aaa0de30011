"""Knative Services for predictors and graph routers, built as plain manifests (no I/O).

Knative's webhook enforces rules the API server does not (at most one container port, unnamed
or named ``http1`` or ``h2c``; reserved ports; feature-flagged pod fields): ``knative_problems``
checks them here, so a manifest we create would also be admitted by a real Knative (the cluster
tier holds each rule against Knative's own webhook).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from infergraph.operator.resources import PodPlacement, PredictorSpec
from infergraph.predictors import servers
from infergraph.router.protocols import Protocol, inference_path

KSVC_API = "serving.knative.dev/v1"
MANAGED_BY = {"app.kubernetes.io/managed-by": "infergraph"}
PREDICTOR_LABEL = "infergraph.dev/predictor"
GRAPH_LABEL = "infergraph.dev/graph"
RESERVED_PORTS = frozenset({8012, 8013, 8022, 9090, 9091, 8008})
PORT_NAMES = frozenset({None, "", "http1", "h2c"})
# Pod fields Knative accepts only when its config-features flag is enabled.
FEATURE_FLAGGED = {
    "nodeSelector": "kubernetes.podspec-nodeselector",
    "tolerations": "kubernetes.podspec-tolerations",
    "affinity": "kubernetes.podspec-affinity",
}
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
VLLM_IMAGE = "vllm/vllm-openai:v0.6.3"
ROUTER_IMAGE = "ghcr.io/infergraph/router:0.1.0"
GRPC_PORT = 8081  # the router's gRPC ingress, when a graph asks for it
GRPC_SUFFIX = "-grpc"  # the Knative Service that carries it
AUTH_RESOURCE = "infergraph.dev/inferencegraphs"
GRAPH_MOUNT = "/etc/infergraph"
GRAPH_FILE = "graph.json"
# The router's drain after SIGTERM (passed as --drain-seconds), and what the pod's grace period
# adds to it: the longest a request may run (serverWrite; KServe's default is 60 s, and with
# no limit Knative's default revision timeout of 300 s) plus a margin for the exit itself.
ROUTER_DRAIN_SECONDS = 30
DEFAULT_SERVER_WRITE = 60
UNBOUNDED_REQUEST_SECONDS = 300
SHUTDOWN_MARGIN_SECONDS = 5


def router_grace_seconds(server_write: float | None) -> int:
    """Seconds a router pod needs between SIGTERM and SIGKILL: the drain, then every request
    in flight finishing. Knative makes a revision's ``timeoutSeconds`` the pod's
    ``terminationGracePeriodSeconds``, so the router's timeout is at least this."""
    if server_write is None:
        longest = DEFAULT_SERVER_WRITE
    elif server_write == 0:
        longest = UNBOUNDED_REQUEST_SECONDS
    else:
        longest = math.ceil(server_write)
    return ROUTER_DRAIN_SECONDS + longest + SHUTDOWN_MARGIN_SECONDS


def autoscaling_annotations(settings: PodPlacement) -> dict[str, str]:
    annotations = {"autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev"}
    if settings.scale_metric in ("cpu", "memory"):
        annotations["autoscaling.knative.dev/class"] = "hpa.autoscaling.knative.dev"
    if settings.min_replicas is not None:
        annotations["autoscaling.knative.dev/min-scale"] = str(settings.min_replicas)
    if settings.max_replicas is not None:
        annotations["autoscaling.knative.dev/max-scale"] = str(settings.max_replicas)
    if settings.scale_target is not None:
        annotations["autoscaling.knative.dev/target"] = str(settings.scale_target)
    if settings.scale_metric is not None:
        annotations["autoscaling.knative.dev/metric"] = settings.scale_metric
    return annotations


def _resources(settings: PodPlacement, gpus: int = 0) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if settings.resources is not None:
        resources = settings.resources.model_dump(exclude_none=True)
    if gpus:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = gpus
    return resources


def _placement(settings: PodPlacement) -> dict[str, Any]:
    pod: dict[str, Any] = {}
    if settings.node_selector:
        pod["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod["tolerations"] = list(settings.tolerations)
    return pod


def _shm_volume() -> dict[str, Any]:
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}


def predictor_container(name: str, spec: PredictorSpec) -> dict[str, Any]:
    """The model server container: image, arguments, its one port, readiness and resources."""
    protocol = spec.resolved_protocol()
    grpc = protocol is Protocol.V2_GRPC
    if spec.runtime == "triton":
        http, grpc_port = servers.TRITON.http_port, servers.TRITON.grpc_port or 8001
        port = grpc_port if grpc else http
        args = [
            "tritonserver",
            f"--model-repository={spec.model.storage_uri or '/models'}",
            f"--http-port={http}",
            f"--grpc-port={grpc_port}",
            "--allow-metrics=false",
            *(spec.args or []),
        ]
        image = spec.image or TRITON_IMAGE
        probe: dict[str, Any] = (
            {"grpc": {"port": port}}
            if grpc
            else {"httpGet": {"path": servers.TRITON.ready_path, "port": port}}
        )
    elif spec.runtime == "vllm":
        port = servers.VLLM.http_port
        args = [
            "--model",
            spec.model.storage_uri or spec.model.name,
            "--served-model-name",
            spec.model.name,
            "--port",
            str(port),
            *(spec.args or []),
        ]
        image = spec.image or VLLM_IMAGE
        probe = {"httpGet": {"path": servers.VLLM.ready_path, "port": port}}
    else:
        port = spec.port or 8080
        args = list(spec.args or [])
        image = spec.image or ""
        probe = {"tcpSocket": {"port": port}}
    container: dict[str, Any] = {
        "name": "model-server",
        "image": image,
        "args": args,
        "ports": [{"name": "h2c" if grpc else "http1", "containerPort": port}],
        "readinessProbe": {**probe, "periodSeconds": 5},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    resources = _resources(spec, spec.gpus)
    if resources:
        container["resources"] = resources
    return container


def predictor_service(
    name: str,
    namespace: str,
    spec: PredictorSpec,
    owner: dict[str, Any],
    previous_revision: str | None = None,
) -> dict[str, Any]:
    """A Predictor's Knative Service; with a canary, a traffic split with the last revision."""
    service: dict[str, Any] = {
        "apiVersion": KSVC_API,
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, PREDICTOR_LABEL: name},
            "ownerReferences": [owner],
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {PREDICTOR_LABEL: name},
                    "annotations": autoscaling_annotations(spec),
                },
                "spec": {
                    "containers": [predictor_container(name, spec)],
                    "volumes": [_shm_volume()],
                    **_placement(spec),
                },
            }
        },
    }
    percent = spec.canary_traffic_percent
    if percent is not None and previous_revision:
        service["spec"]["traffic"] = [
            {"latestRevision": True, "percent": percent, "tag": "canary"},
            {"revisionName": previous_revision, "percent": 100 - percent, "tag": "stable"},
        ]
    return service


def router_service(
    name: str,
    namespace: str,
    config_map: str,
    settings: PodPlacement,
    owner: dict[str, Any],
    *,
    image: str = ROUTER_IMAGE,
    timeout: int | None = None,
    server_write: float | None = None,
    service_account: str | None = None,
    affinity: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    grpc: Literal["off", "also", "only"] = "off",
    auth: bool = False,
    graph: str | None = None,
) -> dict[str, Any]:
    """The graph's router: reads the resolved graph from a mounted ConfigMap (hot-reloaded).

    Its ``timeoutSeconds`` (the pod's grace period under Knative) covers the router's drain
    and the longest request, so SIGKILL never cuts a request the router was finishing.
    ``grpc``: ``also`` serves gRPC ingress beside HTTP (Standard mode's second port); ``only``
    makes the one port Knative allows the gRPC one (``h2c``), for the graph's ``-grpc`` twin.
    ``auth``: callers are checked with the API server. ``graph``: the graph's name, when the
    Service is named otherwise (the twin)."""
    args = [
        *("router", "--graph", f"{GRAPH_MOUNT}/{GRAPH_FILE}", "--port", "8080"),
        *("--drain-seconds", str(ROUTER_DRAIN_SECONDS)),
    ]
    if grpc != "off":
        args += ["--grpc-port", str(GRPC_PORT)]
    if auth:
        args += ["--auth", "kubernetes", "--auth-resource", AUTH_RESOURCE]
    port: dict[str, Any] = {"name": "http1", "containerPort": 8080}
    probe: dict[str, Any] = {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 2}
    if grpc == "only":
        port = {"name": "h2c", "containerPort": GRPC_PORT}
        probe = {"tcpSocket": {"port": GRPC_PORT}, "periodSeconds": 2}
    container: dict[str, Any] = {
        "name": "router",
        "image": image,
        "args": args,
        "ports": [port],
        "readinessProbe": probe,
        "volumeMounts": [{"name": "graph", "mountPath": GRAPH_MOUNT, "readOnly": True}],
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    resources = _resources(settings)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "graph", "configMap": {"name": config_map}}],
        **_placement(settings),
    }
    if affinity:
        pod["affinity"] = affinity
    pod["timeoutSeconds"] = max(timeout or 0, router_grace_seconds(server_write))
    if service_account:
        pod["serviceAccountName"] = service_account
    return {
        "apiVersion": KSVC_API,
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, GRAPH_LABEL: graph or name},
            "ownerReferences": [owner],
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {GRAPH_LABEL: graph or name},
                    "annotations": autoscaling_annotations(settings),
                },
                "spec": pod,
            }
        },
    }


def knative_problems(service: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(errors, warnings): what Knative's webhook would refuse, and what needs a feature flag."""
    errors: list[str] = []
    warnings: list[str] = []
    pod = service["spec"]["template"]["spec"]
    containers = pod.get("containers", [])
    ports = [p for c in containers for p in c.get("ports", [])]
    if len(ports) > 1:
        errors.append(f"Knative allows at most one container port, found {len(ports)}")
    elif not ports and len(containers) > 1:
        errors.append("Knative needs the serving container's port among several containers")
    for port in ports:
        if port.get("name") not in PORT_NAMES:
            errors.append(f"port name {port.get('name')!r} must be empty, http1 or h2c")
        if port.get("containerPort") in RESERVED_PORTS:
            errors.append(f"port {port.get('containerPort')} is reserved by Knative")
    for field, flag in FEATURE_FLAGGED.items():
        if pod.get(field):
            warnings.append(f"{field} needs Knative's config-features flag {flag}: enabled")
    for container in containers:
        if not container.get("image"):
            errors.append(f"container {container.get('name')!r} has no image")
    return errors, warnings


def inference_endpoint(url: str, spec: PredictorSpec) -> tuple[str, Protocol | None]:
    """Where graph steps send requests for a predictor served at the Knative URL ``url``."""
    protocol = spec.resolved_protocol()
    base = url.rstrip("/")
    if protocol is Protocol.V2_GRPC:
        host = base.split("://", 1)[-1]
        return f"grpc://{host}:80/v2/models/{spec.model.name}", protocol
    if protocol is None or protocol is Protocol.OPENAI:
        return base, protocol
    return base + inference_path(protocol, spec.model.name), protocol
