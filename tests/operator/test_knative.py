"""The Knative Services the operator builds for Predictors and graph routers, the rules of
Knative's webhook it checks them against, and where graph steps call a Predictor.

No API server: the builders are pure functions of the resources' specs.
"""

from __future__ import annotations

from typing import Any

import pytest

from infergraph.operator import knative
from infergraph.operator.resources import InferenceGraphSpec, PodPlacement, PredictorSpec
from infergraph.router.protocols import Protocol

OWNER = {
    "apiVersion": "infergraph.dev/v1alpha1",
    "kind": "Predictor",
    "name": "resnet",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
SHM_VOLUME = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
KPA = {"autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev"}


def predictor(**spec: Any) -> PredictorSpec:
    return PredictorSpec.model_validate(spec)


CONTAINERS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "triton: v2 over HTTP on its HTTP port, models from /models",
        {"runtime": "triton", "model": {"name": "resnet50"}},
        {
            "name": "model-server",
            "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "args": [
                "tritonserver",
                "--model-repository=/models",
                "--http-port=8000",
                "--grpc-port=8001",
                "--allow-metrics=false",
            ],
            "ports": [{"name": "http1", "containerPort": 8000}],
            "readinessProbe": {
                "httpGet": {"path": "/v2/health/ready", "port": 8000},
                "periodSeconds": 5,
            },
            "volumeMounts": [SHM_MOUNT],
        },
    ),
    (
        "triton: storage, extra args, an image override and a GPU",
        {
            "runtime": "triton",
            "model": {"name": "resnet50", "storageUri": "gs://models/triton"},
            "image": "registry.local/triton:custom",
            "args": ["--log-verbose=1"],
            "gpus": 1,
        },
        {
            "name": "model-server",
            "image": "registry.local/triton:custom",
            "args": [
                "tritonserver",
                "--model-repository=gs://models/triton",
                "--http-port=8000",
                "--grpc-port=8001",
                "--allow-metrics=false",
                "--log-verbose=1",
            ],
            "ports": [{"name": "http1", "containerPort": 8000}],
            "readinessProbe": {
                "httpGet": {"path": "/v2/health/ready", "port": 8000},
                "periodSeconds": 5,
            },
            "volumeMounts": [SHM_MOUNT],
            "resources": {"limits": {"nvidia.com/gpu": 1}},
        },
    ),
    (
        "triton over gRPC: the gRPC port, named h2c, with a gRPC probe",
        {"runtime": "triton", "protocol": "v2-grpc", "model": {"name": "m"}},
        {
            "name": "model-server",
            "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "args": [
                "tritonserver",
                "--model-repository=/models",
                "--http-port=8000",
                "--grpc-port=8001",
                "--allow-metrics=false",
            ],
            "ports": [{"name": "h2c", "containerPort": 8001}],
            "readinessProbe": {"grpc": {"port": 8001}, "periodSeconds": 5},
            "volumeMounts": [SHM_MOUNT],
        },
    ),
    (
        "vllm: the model path, served under the model's name, and GPUs",
        {
            "runtime": "vllm",
            "model": {"name": "tiny", "storageUri": "/models/tiny"},
            "gpus": 2,
            "args": ["--max-model-len", "512"],
        },
        {
            "name": "model-server",
            "image": "vllm/vllm-openai:v0.6.3",
            "args": [
                *("--model", "/models/tiny", "--served-model-name", "tiny", "--port", "8000"),
                *("--max-model-len", "512"),
            ],
            "ports": [{"name": "http1", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
            "volumeMounts": [SHM_MOUNT],
            "resources": {"limits": {"nvidia.com/gpu": 2}},
        },
    ),
    (
        "vllm without storage: the model's name is its hub id",
        {"runtime": "vllm", "model": {"name": "org/model"}},
        {
            "name": "model-server",
            "image": "vllm/vllm-openai:v0.6.3",
            "args": [
                *("--model", "org/model", "--served-model-name", "org/model", "--port", "8000")
            ],
            "ports": [{"name": "http1", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
            "volumeMounts": [SHM_MOUNT],
        },
    ),
    (
        "custom: its image, port and args as given, a TCP probe",
        {
            "runtime": "custom",
            "image": "example/model:1",
            "port": 9000,
            "protocol": "v1",
            "args": ["--workers", "2"],
            "model": {"name": "m"},
        },
        {
            "name": "model-server",
            "image": "example/model:1",
            "args": ["--workers", "2"],
            "ports": [{"name": "http1", "containerPort": 9000}],
            "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 5},
            "volumeMounts": [SHM_MOUNT],
        },
    ),
    (
        "custom without port or image: 8080, and no image (knative_problems refuses it)",
        {"runtime": "custom", "model": {"name": "m"}},
        {
            "name": "model-server",
            "image": "",
            "args": [],
            "ports": [{"name": "http1", "containerPort": 8080}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
            "volumeMounts": [SHM_MOUNT],
        },
    ),
    (
        "custom over gRPC: the port is named h2c",
        {
            "runtime": "custom",
            "image": "example/grpc:1",
            "port": 9001,
            "protocol": "v2-grpc",
            "model": {"name": "m"},
        },
        {
            "name": "model-server",
            "image": "example/grpc:1",
            "args": [],
            "ports": [{"name": "h2c", "containerPort": 9001}],
            "readinessProbe": {"tcpSocket": {"port": 9001}, "periodSeconds": 5},
            "volumeMounts": [SHM_MOUNT],
        },
    ),
    (
        "resources are kept, and the GPU limit joins the others",
        {
            "runtime": "vllm",
            "model": {"name": "tiny"},
            "gpus": 1,
            "resources": {
                "limits": {"cpu": "4", "memory": "16Gi"},
                "requests": {"cpu": 2},
            },
        },
        {
            "name": "model-server",
            "image": "vllm/vllm-openai:v0.6.3",
            "args": ["--model", "tiny", "--served-model-name", "tiny", "--port", "8000"],
            "ports": [{"name": "http1", "containerPort": 8000}],
            "readinessProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5},
            "volumeMounts": [SHM_MOUNT],
            "resources": {
                "limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 1},
                "requests": {"cpu": 2},
            },
        },
    ),
]


@pytest.mark.parametrize(
    ("spec", "container"), [c[1:] for c in CONTAINERS], ids=[c[0] for c in CONTAINERS]
)
def test_predictor_container(spec: dict[str, Any], container: dict[str, Any]) -> None:
    assert knative.predictor_container("p", predictor(**spec)) == container


def test_triton_predictor_service() -> None:
    spec = predictor(
        runtime="triton",
        model={"name": "resnet50", "storageUri": "gs://models/triton"},
        gpus=1,
        minReplicas=0,
        maxReplicas=4,
        scaleTarget=8,
        scaleMetric="concurrency",
    )
    assert knative.predictor_service("resnet", "models", spec, OWNER) == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": "resnet",
            "namespace": "models",
            "labels": {
                "app.kubernetes.io/managed-by": "infergraph",
                "infergraph.dev/predictor": "resnet",
            },
            "ownerReferences": [OWNER],
        },
        "spec": {
            "template": {
                "metadata": {
                    "labels": {"infergraph.dev/predictor": "resnet"},
                    "annotations": {
                        "autoscaling.knative.dev/class": "kpa.autoscaling.knative.dev",
                        "autoscaling.knative.dev/min-scale": "0",
                        "autoscaling.knative.dev/max-scale": "4",
                        "autoscaling.knative.dev/target": "8",
                        "autoscaling.knative.dev/metric": "concurrency",
                    },
                },
                "spec": {
                    "containers": [knative.predictor_container("resnet", spec)],
                    "volumes": [SHM_VOLUME],
                },
            }
        },
    }


def test_predictor_placement_goes_on_the_pod() -> None:
    spec = predictor(
        runtime="vllm",
        model={"name": "tiny"},
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    pod = knative.predictor_service("llm", "models", spec, OWNER)["spec"]["template"]["spec"]
    assert pod == {
        "containers": [knative.predictor_container("llm", spec)],
        "volumes": [SHM_VOLUME],
        "nodeSelector": {"gpu": "a100"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }


CANARY = [
    (
        "a canary with a ready revision: split between latest and that revision",
        20,
        "canary-00001",
        [
            {"latestRevision": True, "percent": 20, "tag": "canary"},
            {"revisionName": "canary-00001", "percent": 80, "tag": "stable"},
        ],
    ),
    (
        "all traffic to the canary: the stable revision keeps its tag at 0%",
        100,
        "r-1",
        [
            {"latestRevision": True, "percent": 100, "tag": "canary"},
            {"revisionName": "r-1", "percent": 0, "tag": "stable"},
        ],
    ),
    (
        "no traffic to the canary yet",
        0,
        "r-1",
        [
            {"latestRevision": True, "percent": 0, "tag": "canary"},
            {"revisionName": "r-1", "percent": 100, "tag": "stable"},
        ],
    ),
    ("a canary but no ready revision yet: no split (all to latest)", 20, None, None),
    ("no canary: no split, whatever revision is ready", None, "r-1", None),
]


@pytest.mark.parametrize(
    ("percent", "previous", "traffic"), [c[1:] for c in CANARY], ids=[c[0] for c in CANARY]
)
def test_canary_traffic_split(
    percent: int | None, previous: str | None, traffic: list[dict[str, Any]] | None
) -> None:
    spec = predictor(
        runtime="custom",
        image="x/y:1",
        protocol="v1",
        model={"name": "m"},
        canaryTrafficPercent=percent,
    )
    service = knative.predictor_service("canary", "models", spec, OWNER, previous)
    assert service["spec"].get("traffic") == traffic


ANNOTATIONS: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("nothing set: the Knative pod autoscaler", {}, KPA),
    (
        "scale to zero is said, not left out",
        {"minReplicas": 0},
        {**KPA, "autoscaling.knative.dev/min-scale": "0"},
    ),
    (
        "request-based metrics stay on the KPA",
        {"minReplicas": 1, "maxReplicas": 3, "scaleTarget": 50, "scaleMetric": "rps"},
        {
            **KPA,
            "autoscaling.knative.dev/min-scale": "1",
            "autoscaling.knative.dev/max-scale": "3",
            "autoscaling.knative.dev/target": "50",
            "autoscaling.knative.dev/metric": "rps",
        },
    ),
    (
        "cpu needs the HPA",
        {"scaleMetric": "cpu", "scaleTarget": 70},
        {
            "autoscaling.knative.dev/class": "hpa.autoscaling.knative.dev",
            "autoscaling.knative.dev/target": "70",
            "autoscaling.knative.dev/metric": "cpu",
        },
    ),
    (
        "memory needs the HPA",
        {"scaleMetric": "memory", "maxReplicas": 10},
        {
            "autoscaling.knative.dev/class": "hpa.autoscaling.knative.dev",
            "autoscaling.knative.dev/max-scale": "10",
            "autoscaling.knative.dev/metric": "memory",
        },
    ),
]


@pytest.mark.parametrize(
    ("placement", "annotations"), [c[1:] for c in ANNOTATIONS], ids=[c[0] for c in ANNOTATIONS]
)
def test_autoscaling_annotations(placement: dict[str, Any], annotations: dict[str, str]) -> None:
    assert knative.autoscaling_annotations(PodPlacement.model_validate(placement)) == annotations


GRAPH_OWNER = {**OWNER, "kind": "InferenceGraph", "name": "iris"}
ROUTER_CONTAINER: dict[str, Any] = {
    "name": "router",
    "image": "ghcr.io/infergraph/router:0.1.0",
    "args": [
        *("router", "--graph", "/etc/infergraph/graph.json", "--port", "8080"),
        *("--drain-seconds", "30"),
    ],
    "ports": [{"name": "http1", "containerPort": 8080}],
    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 2},
    "volumeMounts": [{"name": "graph", "mountPath": "/etc/infergraph", "readOnly": True}],
    "securityContext": {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    },
}
NODES = {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://m/"}]}}


def test_router_service_defaults() -> None:
    settings = InferenceGraphSpec.model_validate({"nodes": NODES})
    assert knative.router_service("iris", "models", "iris-graph", settings, GRAPH_OWNER) == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": "iris",
            "namespace": "models",
            "labels": {
                "app.kubernetes.io/managed-by": "infergraph",
                "infergraph.dev/graph": "iris",
            },
            "ownerReferences": [GRAPH_OWNER],
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"infergraph.dev/graph": "iris"}, "annotations": KPA},
                "spec": {
                    "containers": [ROUTER_CONTAINER],
                    "volumes": [{"name": "graph", "configMap": {"name": "iris-graph"}}],
                    # Knative's grace period: 30 s drain + 60 s serverWrite + 5 s to exit.
                    "timeoutSeconds": 95,
                },
            }
        },
    }


@pytest.mark.parametrize(
    ("timeout", "server_write", "seconds"),
    [
        (None, None, 95),  # KServe's default serverWrite
        (None, 10, 45),
        (None, 0.5, 36),  # whole seconds, rounded up
        (None, 0, 335),  # no serverWrite: Knative's default revision timeout bounds a request
        (600, 60, 600),  # a longer request timeout stays
        (30, 60, 95),  # a shorter one is raised to cover the drain
    ],
)
def test_router_timeout_covers_the_drain_and_the_longest_request(
    timeout: int | None, server_write: float | None, seconds: int
) -> None:
    settings = InferenceGraphSpec.model_validate({"nodes": NODES})
    service = knative.router_service(
        "iris",
        "models",
        "iris-graph",
        settings,
        GRAPH_OWNER,
        timeout=timeout,
        server_write=server_write,
    )
    assert service["spec"]["template"]["spec"]["timeoutSeconds"] == seconds


def test_router_service_with_every_setting() -> None:
    affinity: dict[str, Any] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}
    }
    settings = InferenceGraphSpec.model_validate(
        {
            "nodes": NODES,
            "minReplicas": 1,
            "resources": {"limits": {"cpu": "1"}},
            "nodeSelector": {"pool": "routers"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
        }
    )
    service = knative.router_service(
        "iris",
        "models",
        "iris-graph",
        settings,
        GRAPH_OWNER,
        image="infergraph/router:test",
        timeout=30,
        service_account="router-sa",
        affinity=affinity,
        env={"Z_LAST": "z", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"},
    )
    template = service["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        **KPA,
        "autoscaling.knative.dev/min-scale": "1",
    }
    assert template["spec"] == {
        "containers": [
            {
                **ROUTER_CONTAINER,
                "image": "infergraph/router:test",
                "env": [  # sorted by name: the manifest does not change with dict order
                    {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://jaeger:4318"},
                    {"name": "Z_LAST", "value": "z"},
                ],
                "resources": {"limits": {"cpu": "1"}},
            }
        ],
        "volumes": [{"name": "graph", "configMap": {"name": "iris-graph"}}],
        "nodeSelector": {"pool": "routers"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "affinity": affinity,
        "timeoutSeconds": 95,  # raised from 30 to cover the drain and serverWrite
        "serviceAccountName": "router-sa",
    }


def service_with(
    containers: list[dict[str, Any]], **pod: Any
) -> dict[str, Any]:  # the part knative_problems reads
    return {"spec": {"template": {"spec": {"containers": containers, **pod}}}}


def container(*ports: dict[str, Any], image: str = "x/y:1") -> dict[str, Any]:
    return {"name": "c", "image": image, "ports": list(ports)}


HTTP1 = {"name": "http1", "containerPort": 8080}
PROBLEMS: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    ("one http1 port", service_with([container(HTTP1)]), [], []),
    ("one h2c port", service_with([container({"name": "h2c", "containerPort": 9000})]), [], []),
    *(
        (
            f"reserved port {port}",
            service_with([container({"name": "http1", "containerPort": port})]),
            [f"port {port} is reserved by Knative"],
            [],
        )
        for port in (8012, 8013, 8022, 9090, 9091, 8008)
    ),
    (
        "a port name Knative does not know",
        service_with([container({"name": "http", "containerPort": 8080})]),
        ["port name 'http' must be empty, http1 or h2c"],
        [],
    ),
    ("an unnamed port", service_with([container({"containerPort": 8080})]), [], []),
    ("no port: Knative's 8080", service_with([container()]), [], []),
    (
        "no port among two containers",
        service_with([container(), container()]),
        ["Knative needs the serving container's port among several containers"],
        [],
    ),
    (
        "two ports on one container",
        service_with([container(HTTP1, {"name": "h2c", "containerPort": 9000})]),
        ["Knative allows at most one container port, found 2"],
        [],
    ),
    (
        "a port on each of two containers",
        service_with([container(HTTP1), container(HTTP1)]),
        ["Knative allows at most one container port, found 2"],
        [],
    ),
    (
        "every problem of a port at once",
        service_with([container({"name": "grpc", "containerPort": 9090}), container(HTTP1)]),
        [
            "Knative allows at most one container port, found 2",
            "port name 'grpc' must be empty, http1 or h2c",
            "port 9090 is reserved by Knative",
        ],
        [],
    ),
    (
        "no image",
        service_with([container(HTTP1, image="")]),
        ["container 'c' has no image"],
        [],
    ),
    (
        "feature-flagged pod fields: warnings, not errors",
        service_with(
            [container(HTTP1)],
            nodeSelector={"gpu": "a100"},
            tolerations=[{"key": "gpu"}],
            affinity={"nodeAffinity": {}},
        ),
        [],
        [
            "nodeSelector needs Knative's config-features flag "
            "kubernetes.podspec-nodeselector: enabled",
            "tolerations needs Knative's config-features flag "
            "kubernetes.podspec-tolerations: enabled",
            "affinity needs Knative's config-features flag kubernetes.podspec-affinity: enabled",
        ],
    ),
    (
        "empty feature-flagged fields need no flag",
        service_with([container(HTTP1)], nodeSelector={}, tolerations=[]),
        [],
        [],
    ),
]


@pytest.mark.parametrize(
    ("service", "errors", "warnings"), [c[1:] for c in PROBLEMS], ids=[c[0] for c in PROBLEMS]
)
def test_knative_problems(service: dict[str, Any], errors: list[str], warnings: list[str]) -> None:
    assert knative.knative_problems(service) == (errors, warnings)


BUILT: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    ("triton", {"runtime": "triton", "model": {"name": "m"}, "gpus": 1}, [], []),
    (
        "triton over gRPC",
        {"runtime": "triton", "protocol": "v2-grpc", "model": {"name": "m"}},
        [],
        [],
    ),
    ("vllm", {"runtime": "vllm", "model": {"name": "m"}}, [], []),
    (
        "custom",
        {
            "runtime": "custom",
            "image": "x/y:1",
            "port": 9000,
            "protocol": "v1",
            "model": {"name": "m"},
        },
        [],
        [],
    ),
    (
        "custom on a reserved port",
        {
            "runtime": "custom",
            "image": "x/y:1",
            "port": 8012,
            "protocol": "v1",
            "model": {"name": "m"},
        },
        ["port 8012 is reserved by Knative"],
        [],
    ),
    (
        "custom without an image",
        {"runtime": "custom", "port": 9000, "model": {"name": "m"}},
        ["container 'model-server' has no image"],
        [],
    ),
    (
        "a node selector",
        {"runtime": "vllm", "model": {"name": "m"}, "nodeSelector": {"gpu": "a100"}},
        [],
        [
            "nodeSelector needs Knative's config-features flag "
            "kubernetes.podspec-nodeselector: enabled"
        ],
    ),
]


@pytest.mark.parametrize(
    ("spec", "errors", "warnings"), [c[1:] for c in BUILT], ids=[c[0] for c in BUILT]
)
def test_built_predictor_services_against_knatives_rules(
    spec: dict[str, Any], errors: list[str], warnings: list[str]
) -> None:
    service = knative.predictor_service("p", "models", predictor(**spec), OWNER)
    assert knative.knative_problems(service) == (errors, warnings)


def test_built_router_service_needs_no_feature_flag_unless_placed() -> None:
    settings = InferenceGraphSpec.model_validate({"nodes": NODES})
    service = knative.router_service("g", "models", "g-graph", settings, GRAPH_OWNER)
    assert knative.knative_problems(service) == ([], [])
    placed = knative.router_service(
        "g", "models", "g-graph", settings, GRAPH_OWNER, affinity={"podAntiAffinity": {}}
    )
    assert knative.knative_problems(placed) == (
        [],
        ["affinity needs Knative's config-features flag kubernetes.podspec-affinity: enabled"],
    )


ENDPOINTS: list[tuple[str, dict[str, Any], str, str, Protocol | None]] = [
    (
        "triton: v2 inference path",
        {"runtime": "triton", "model": {"name": "resnet50"}},
        "http://resnet.models.example.com",
        "http://resnet.models.example.com/v2/models/resnet50/infer",
        Protocol.V2,
    ),
    (
        "a trailing slash is not doubled",
        {"runtime": "triton", "model": {"name": "resnet50"}},
        "http://resnet.models.example.com/",
        "http://resnet.models.example.com/v2/models/resnet50/infer",
        Protocol.V2,
    ),
    (
        "v1: the predict verb",
        {"runtime": "custom", "image": "x", "protocol": "v1", "model": {"name": "logistic"}},
        "http://127.0.0.1:9000",
        "http://127.0.0.1:9000/v1/models/logistic:predict",
        Protocol.V1,
    ),
    (
        "v2-grpc: grpc scheme on port 80, and the model path",
        {"runtime": "triton", "protocol": "v2-grpc", "model": {"name": "m"}},
        "https://grpc-model.models.example.com",
        "grpc://grpc-model.models.example.com:80/v2/models/m",
        Protocol.V2_GRPC,
    ),
    (
        "vllm: OpenAI's base URL (the router picks the completions path)",
        {"runtime": "vllm", "model": {"name": "tiny"}},
        "http://llm.models.example.com/",
        "http://llm.models.example.com",
        Protocol.OPENAI,
    ),
    (
        "custom without a protocol: the base URL, protocol left to the step",
        {"runtime": "custom", "image": "x", "model": {"name": "m"}},
        "http://custom.models.example.com",
        "http://custom.models.example.com",
        None,
    ),
]


@pytest.mark.parametrize(
    ("spec", "url", "endpoint", "protocol"),
    [c[1:] for c in ENDPOINTS],
    ids=[c[0] for c in ENDPOINTS],
)
def test_inference_endpoint(
    spec: dict[str, Any], url: str, endpoint: str, protocol: Protocol | None
) -> None:
    assert knative.inference_endpoint(url, predictor(**spec)) == (endpoint, protocol)
