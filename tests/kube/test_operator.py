"""The operator against a real API server: Predictors become Knative Services, graphs become a
ConfigMap and a router Service, status follows the Knative Services, and the ConfigMap it
writes runs on the real router."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from infergraph.operator import knative
from infergraph.predictors import processes
from infergraph.testing.cluster import (
    GROUP,
    NAMESPACE,
    OTLP_ENDPOINT,
    VERSION,
    Cluster,
    create,
    get,
    iris_graph,
    wait_for,
)
from infergraph.testing.kube_http import post_json

pytestmark = pytest.mark.usefixtures("operator_process")


def custom(cluster: Cluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api)


def ports(container: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": p["name"], "containerPort": p["containerPort"]} for p in container["ports"]]


def ready_predictor(cluster: Cluster, name: str, model: str, revision: str = "rev-1") -> None:
    """A v1 Predictor whose Knative Service the operator made and Knative reports ready."""
    create(cluster, "predictors", name, v1_predictor(model))
    wait_for(lambda: get(cluster, "ksvc", name), "the Knative Service")
    make_ksvc_ready(cluster, name, f"http://{name}.models.example.com", revision=revision)


def one_step_on(service: str) -> dict[str, Any]:
    """A graph spec: a 1-step Sequence on a Predictor named ``service``."""
    return {"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceName": service}]}}}


def ready_condition(body: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond["type"] == "Ready":
            return dict(cond)
    return None


def make_ksvc_ready(cluster: Cluster, name: str, url: str, revision: str = "rev-1") -> None:
    """What Knative would do once the revision's pods are up."""
    custom(cluster).patch_namespaced_custom_object_status(
        "serving.knative.dev",
        "v1",
        NAMESPACE,
        "services",
        name,
        {
            "status": {
                "url": url,
                "latestReadyRevisionName": revision,
                "latestCreatedRevisionName": revision,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        },
    )


def make_available(cluster: Cluster, name: str) -> None:
    """What a controller-manager would report once the Deployment's pods are up."""
    client.AppsV1Api(cluster.api).patch_namespaced_deployment_status(
        name,
        NAMESPACE,
        {"status": {"conditions": [{"type": "Available", "status": "True",
                                    "reason": "MinimumReplicasAvailable"}]}},
    )  # fmt: skip


def test_triton_predictor_becomes_a_knative_service_that_would_run(cluster: Cluster) -> None:
    create(
        cluster,
        "predictors",
        "resnet",
        {
            "runtime": "triton",
            "model": {"name": "resnet50", "storageUri": "gs://models/triton"},
            "gpus": 1,
            "minReplicas": 0,
            "maxReplicas": 4,
            "scaleTarget": 8,
            "scaleMetric": "concurrency",
        },
    )
    service = wait_for(lambda: get(cluster, "ksvc", "resnet"), "the Triton Knative Service")
    template = service["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver")
    assert "--model-repository=gs://models/triton" in container["args"]
    assert ports(container) == [{"name": "http1", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"  # scale to zero
    assert annotations["autoscaling.knative.dev/max-scale"] == "4"
    assert annotations["autoscaling.knative.dev/target"] == "8"
    assert service["metadata"]["ownerReferences"][0]["kind"] == "Predictor"
    assert knative.knative_problems(service) == ([], [])


@pytest.mark.parametrize(
    ("name", "spec", "port"),
    [
        (
            "llm",
            {"runtime": "vllm", "model": {"name": "tiny", "storageUri": "/models/tiny"}, "gpus": 1},
            {"name": "http1", "containerPort": 8000},
        ),
        (
            "grpc-model",
            {"runtime": "triton", "protocol": "v2-grpc", "model": {"name": "m"}},
            {"name": "h2c", "containerPort": 8001},
        ),
        (
            "custom-model",
            {
                "runtime": "custom",
                "image": "example/model:1",
                "port": 9000,
                "protocol": "v1",
                "model": {"name": "m"},
            },
            {"name": "http1", "containerPort": 9000},
        ),
    ],
)
def test_each_runtime_gets_one_valid_knative_port(
    cluster: Cluster, name: str, spec: dict[str, Any], port: dict[str, Any]
) -> None:
    create(cluster, "predictors", name, spec)
    service = wait_for(lambda: get(cluster, "ksvc", name), f"the {name} Knative Service")
    assert ports(service["spec"]["template"]["spec"]["containers"][0]) == [port]
    errors, _ = knative.knative_problems(service)
    assert errors == []


def test_reserved_port_is_refused_in_status(cluster: Cluster) -> None:
    create(
        cluster,
        "predictors",
        "bad-port",
        {
            "runtime": "custom",
            "image": "x/y:1",
            "port": 8012,
            "protocol": "v1",
            "model": {"name": "m"},
        },
    )
    status = wait_for(lambda: ready_condition(get(cluster, "predictors", "bad-port")), "a status")
    assert status["status"] == "False"
    assert "8012 is reserved" in status["message"]


def test_graph_resolves_predictors_runs_on_the_real_router(
    cluster: Cluster, tmp_path: Path
) -> None:
    port = processes.free_port()
    local = f"http://127.0.0.1:{port}"
    for name, model in (("scaler", "scaler"), ("classifier", "logistic")):
        create(
            cluster,
            "predictors",
            name,
            {
                "runtime": "custom",
                "image": "infergraph/predictor:test",
                "port": 8080,
                "protocol": "v1",
                "model": {"name": model},
            },
        )
    create(cluster, "inferencegraphs", "iris", iris_graph())
    status = wait_for(
        lambda: ready_condition(get(cluster, "inferencegraphs", "iris")), "a graph status"
    )
    assert status["status"] == "False"
    for name in ("scaler", "classifier"):
        wait_for(partial(get, cluster, "ksvc", name), f"{name}'s Knative Service")
        make_ksvc_ready(cluster, name, local)
    config_map = wait_for(
        lambda: client.CoreV1Api(cluster.api).read_namespaced_config_map("iris-graph", NAMESPACE),
        "the graph ConfigMap",
    )
    document = json.loads(config_map.data["graph.json"])
    steps = document["spec"]["nodes"]["root"]["steps"]
    assert steps[0]["serviceUrl"] == f"{local}/v1/models/scaler:predict"
    assert steps[1]["serviceUrl"] == f"{local}/v1/models/logistic:predict"
    router = wait_for(lambda: get(cluster, "ksvc", "iris"), "the router's Knative Service")
    pod = router["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][:3] == ["router", "--graph", "/etc/infergraph/graph.json"]
    assert pod["volumes"] == [{"name": "graph", "configMap": {"name": "iris-graph"}}]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    # The operator's --otlp-endpoint setting reaches the routers it deploys.
    assert {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": OTLP_ENDPOINT} in pod["containers"][0][
        "env"
    ]
    assert knative.knative_problems(router) == ([], [])
    make_ksvc_ready(cluster, "iris", "http://iris.models.example.com")
    ready = wait_for(
        lambda: (
            (c := ready_condition(get(cluster, "inferencegraphs", "iris")))
            and c["status"] == "True"
            and c
        ),
        "the graph to be Ready",
    )
    assert ready["status"] == "True"
    assert (
        get(cluster, "inferencegraphs", "iris")["status"]["url"] == "http://iris.models.example.com"
    )
    # The ConfigMap the operator wrote, on the real router, with real predictors behind it.
    graph_file = tmp_path / "graph.json"
    graph_file.write_text(config_map.data["graph.json"])
    with processes.predictor(port, models=True, log_path=tmp_path / "p.log").start(60):
        router_port = processes.free_port()
        with processes.router(
            router_port,
            "--graph",
            str(graph_file),
            extra=("--drain-seconds", "0"),
            log_path=tmp_path / "r.log",
        ):
            status_code, answer = post_json(
                router_port, {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
            )
    assert (status_code, answer) == (200, {"predictions": [0, 2]})


def test_invalid_graph_reports_every_problem_in_status(cluster: Cluster) -> None:
    create(
        cluster,
        "inferencegraphs",
        "broken",
        {
            "nodes": {
                "main": {
                    "routerType": "Sequence",
                    "steps": [{"serviceName": "x", "condition": "$.a["}],
                }
            }
        },
    )
    status = wait_for(
        lambda: ready_condition(get(cluster, "inferencegraphs", "broken")), "a status"
    )
    assert status["status"] == "False"
    assert status["reason"] == "InvalidGraph"
    assert "no node named 'root'" in status["message"]
    assert "node 'main', step 0: JSONPath '$.a[' does not parse" in status["message"]
    with pytest.raises(client.exceptions.ApiException) as caught:
        get(cluster, "ksvc", "broken")
    assert caught.value.status == 404  # nothing deployed


def test_missing_predictor_is_named(cluster: Cluster) -> None:
    create(
        cluster,
        "inferencegraphs",
        "orphan",
        one_step_on("ghost"),
    )
    status = wait_for(
        lambda: ready_condition(get(cluster, "inferencegraphs", "orphan")), "a status"
    )
    assert status["status"] == "False"
    assert "Predictors not found: ghost" in status["message"]


def v1_predictor(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "runtime": "custom",
        "image": "infergraph/predictor:test",
        "port": 8080,
        "protocol": "v1",
        "model": {"name": model},
        **extra,
    }


def patch_spec(cluster: Cluster, plural: str, name: str, spec: dict[str, Any]) -> None:
    custom(cluster).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, plural, name, {"spec": spec}
    )


def test_editing_a_predictor_re_resolves_the_graphs_that_use_it(cluster: Cluster) -> None:
    ready_predictor(cluster, "editable", "first")
    create(cluster, "inferencegraphs", "uses-editable", one_step_on("editable"))
    core = client.CoreV1Api(cluster.api)

    def step_url() -> str:
        data = (core.read_namespaced_config_map("uses-editable-graph", NAMESPACE).data or {})[
            "graph.json"
        ]
        url: str = json.loads(data)["spec"]["nodes"]["root"]["steps"][0]["serviceUrl"]
        return url

    assert wait_for(step_url, "the ConfigMap").endswith("/v1/models/first:predict")
    patch_spec(cluster, "predictors", "editable", {"model": {"name": "second"}})
    wait_for(
        lambda: step_url().endswith("/v1/models/second:predict"), "the ConfigMap to follow the edit"
    )


def test_canary_splits_traffic_with_the_last_ready_revision(cluster: Cluster) -> None:
    ready_predictor(cluster, "canary", "m", revision="canary-00001")
    patch_spec(
        cluster, "predictors", "canary", {"canaryTrafficPercent": 20, "args": ["--new-flag"]}
    )
    traffic = wait_for(
        lambda: get(cluster, "ksvc", "canary")["spec"].get("traffic"), "a traffic split"
    )
    assert traffic == [
        {"latestRevision": True, "percent": 20, "tag": "canary"},
        {"revisionName": "canary-00001", "percent": 80, "tag": "stable"},
    ]


def test_deleting_a_graph_finishes_and_owns_what_it_made(cluster: Cluster) -> None:
    ready_predictor(cluster, "owned", "m")
    create(cluster, "inferencegraphs", "short-lived", one_step_on("owned"))
    router = wait_for(lambda: get(cluster, "ksvc", "short-lived"), "the router")
    uid = get(cluster, "inferencegraphs", "short-lived")["metadata"]["uid"]
    config_map = client.CoreV1Api(cluster.api).read_namespaced_config_map(
        "short-lived-graph", NAMESPACE
    )
    # Kubernetes' garbage collector deletes these with their owner (this API server has none).
    assert router["metadata"]["ownerReferences"][0]["uid"] == uid
    assert config_map.metadata is not None
    assert (config_map.metadata.owner_references or [])[0].uid == uid
    custom(cluster).delete_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencegraphs", "short-lived"
    )

    def gone() -> bool:
        try:
            get(cluster, "inferencegraphs", "short-lived")
        except client.exceptions.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, "the graph to be deleted (its finalizer released)")


def annotate(cluster: Cluster, name: str, annotations: dict[str, str]) -> None:
    custom(cluster).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencegraphs", name,
        {"metadata": {"annotations": annotations}},
    )  # fmt: skip


def test_standard_mode_makes_a_deployment_service_and_hpa_then_back(cluster: Cluster) -> None:
    """KServe's annotation on a graph: the real API server accepts the Deployment, Service and
    HPA the operator applies; the graph is ready when the Deployment is Available (patched
    here, as a controller-manager would; this tier has none); back to Serverless, the three go
    and a Knative Service comes."""
    ready_predictor(cluster, "std-model", "m")
    create(
        cluster,
        "inferencegraphs",
        "std",
        {**one_step_on("std-model"), "minReplicas": 2, "maxReplicas": 5},
        labels={"team": "vision"},
        annotations={"serving.kserve.io/deploymentMode": "RawDeployment"},
    )
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    autoscaling = client.AutoscalingV2Api(cluster.api)
    deployment = wait_for(
        lambda: apps.read_namespaced_deployment("std", NAMESPACE), "the router's Deployment"
    )
    assert deployment.metadata.labels["team"] == "vision"
    assert deployment.metadata.labels["serving.kserve.io/inferencegraph"] == "std"
    assert deployment.spec.selector.match_labels == {"app": "isvc.std"}
    pod = deployment.spec.template.spec
    assert pod.automount_service_account_token is False
    assert pod.termination_grace_period_seconds == knative.router_grace_seconds(None)
    assert pod.containers[0].readiness_probe.http_get.path == "/readyz"
    service = wait_for(lambda: core.read_namespaced_service("std", NAMESPACE), "the Service")
    assert [(p.port, p.target_port) for p in service.spec.ports] == [(80, 8080)]
    hpa = wait_for(
        lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler("std", NAMESPACE), "the HPA"
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 5)
    assert hpa.spec.metrics[0].resource.name == "cpu"
    assert hpa.spec.metrics[0].resource.target.average_utilization == 80
    with pytest.raises(client.exceptions.ApiException) as no_ksvc:
        get(cluster, "ksvc", "std")
    assert no_ksvc.value.status == 404
    status = wait_for(lambda: ready_condition(get(cluster, "inferencegraphs", "std")), "a status")
    assert status["status"] == "False"

    make_available(cluster, "std")

    def ready() -> Any:
        graph = get(cluster, "inferencegraphs", "std")
        cond = ready_condition(graph)
        return graph if cond and cond["status"] == "True" else None

    graph = wait_for(ready, "the graph to be Ready from its Deployment")
    assert graph["status"]["url"] == f"http://std.{NAMESPACE}.svc.cluster.local"

    # The autoscaler class 'none': no HPA.
    annotate(cluster, "std", {"serving.kserve.io/autoscalerClass": "none"})

    def hpa_gone() -> bool:
        try:
            autoscaling.read_namespaced_horizontal_pod_autoscaler("std", NAMESPACE)
        except client.exceptions.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(hpa_gone, "the HPA to go with autoscalerClass none")
    assert apps.read_namespaced_deployment("std", NAMESPACE).spec.replicas == 2

    # Back to Serverless.
    annotate(cluster, "std", {"serving.kserve.io/deploymentMode": "Serverless"})
    wait_for(lambda: get(cluster, "ksvc", "std"), "the Knative Service")

    def standard_gone() -> bool:
        for read in (apps.read_namespaced_deployment, core.read_namespaced_service):
            try:
                read("std", NAMESPACE)
                return False
            except client.exceptions.ApiException as exc:
                if exc.status != 404:
                    raise
        return True

    wait_for(standard_gone, "the Deployment and Service to go")


def raw_mode_condition(cluster: Cluster, name: str, predictor: str) -> dict[str, Any]:
    """The Ready condition of a graph on ``predictor`` annotated with a mode KServe lacks."""
    annotations = {"serving.kserve.io/deploymentMode": "Raw"}
    create(cluster, "inferencegraphs", name, one_step_on(predictor), annotations=annotations)
    cond: dict[str, Any] = wait_for(
        lambda: ready_condition(get(cluster, "inferencegraphs", name)), "a status"
    )
    assert cond["status"] == "False"
    assert "'Raw' is not a deployment mode" in cond["message"]
    return cond


def test_an_unknown_deployment_mode_is_named_in_status(cluster: Cluster) -> None:
    ready_predictor(cluster, "odd-model", "m")
    assert raw_mode_condition(cluster, "odd", "odd-model")["reason"] == "InvalidGraph"


def test_an_unknown_deployment_mode_is_named_before_missing_predictors(cluster: Cluster) -> None:
    # The user's mistake in the annotation is reported at once, not only once every Predictor
    # has an endpoint (which, for a Predictor that does not exist, is never).
    assert raw_mode_condition(cluster, "odd-early", "no-such-model")["reason"] == "InvalidGraph"


def test_a_predictor_name_its_labels_cannot_hold_is_named_in_status(cluster: Cluster) -> None:
    """Past 63 characters no label value holds a Predictor's name (past 58, Standard mode's
    app: isvc.<name> cannot), so every reconcile failed with nothing in its status."""
    name = "p" * 64
    create(cluster, "predictors", name, v1_predictor("m"))
    cond: dict[str, Any] = wait_for(
        lambda: ready_condition(get(cluster, "predictors", name)), "a status"
    )
    assert (cond["status"], cond["reason"]) == ("False", "InvalidPredictor")
    assert "the name is 64 characters, over 58" in cond["message"]


def test_a_standard_mode_predictor_is_a_deployment_a_graph_resolves(cluster: Cluster) -> None:
    create(
        cluster,
        "predictors",
        "std-pred",
        v1_predictor("iris", minReplicas=1, maxReplicas=3),
        annotations={"serving.kserve.io/deploymentMode": "Standard"},
    )
    apps = client.AppsV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    deployment = wait_for(
        lambda: apps.read_namespaced_deployment("std-pred", NAMESPACE), "the Deployment"
    )
    assert deployment.spec.template.spec.containers[0].ports[0].container_port == 8080
    service = wait_for(lambda: core.read_namespaced_service("std-pred", NAMESPACE), "Service")
    assert [(p.port, p.target_port) for p in service.spec.ports] == [(80, 8080)]
    with pytest.raises(client.exceptions.ApiException) as no_ksvc:
        get(cluster, "ksvc", "std-pred")
    assert no_ksvc.value.status == 404
    make_available(cluster, "std-pred")

    def ready() -> Any:
        predictor = get(cluster, "predictors", "std-pred")
        cond = ready_condition(predictor)
        return predictor if cond and cond["status"] == "True" else None

    predictor = wait_for(ready, "the Predictor to be Ready from its Deployment")
    url = f"http://std-pred.{NAMESPACE}.svc.cluster.local"
    assert predictor["status"]["url"] == url
    assert predictor["status"]["endpoint"]["url"] == f"{url}/v1/models/iris:predict"
    # A graph that uses it calls it at that address.
    create(cluster, "inferencegraphs", "uses-std", one_step_on("std-pred"))

    def resolved() -> Any:
        data = core.read_namespaced_config_map("uses-std-graph", NAMESPACE).data or {}
        return json.loads(data[knative.GRAPH_FILE]) if data else None

    document = wait_for(resolved, "the graph's ConfigMap")
    step = document["spec"]["nodes"]["root"]["steps"][0]
    assert step["serviceUrl"] == f"{url}/v1/models/iris:predict"


def test_grpc_ingress_and_auth_get_their_objects_and_lose_them(cluster: Cluster) -> None:
    """grpc: a <name>-grpc twin Knative Service (its one port h2c), its URL in the status;
    auth: the router's ServiceAccount and its system:auth-delegator binding. Turned off, both
    go; the binding (cluster-scoped, not owned) also goes with the graph."""
    ready_predictor(cluster, "guarded-model", "m")
    spec = {**one_step_on("guarded-model"), "grpc": True, "auth": "kubernetes"}
    create(cluster, "inferencegraphs", "guarded", spec)
    twin = wait_for(lambda: get(cluster, "ksvc", "guarded-grpc"), "the gRPC twin")
    router = twin["spec"]["template"]["spec"]["containers"][0]
    assert ports(router) == [{"name": "h2c", "containerPort": knative.GRPC_PORT}]
    main = get(cluster, "ksvc", "guarded")["spec"]["template"]["spec"]
    assert main["serviceAccountName"] == "guarded-router"
    assert "--auth" in main["containers"][0]["args"]
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    core = client.CoreV1Api(cluster.api)
    assert wait_for(lambda: core.read_namespaced_service_account("guarded-router", NAMESPACE), "SA")
    binding_name = f"infergraph-router-{NAMESPACE}-guarded"
    binding = wait_for(lambda: rbac.read_cluster_role_binding(binding_name), "the binding")
    assert binding.role_ref.name == "system:auth-delegator"
    make_ksvc_ready(cluster, "guarded", "http://guarded.ns.example.com")
    make_ksvc_ready(cluster, "guarded-grpc", "http://guarded-grpc.ns.example.com")
    status = wait_for(
        lambda: (get(cluster, "inferencegraphs", "guarded").get("status") or {}).get("grpcUrl"),
        "grpcUrl in the status",
    )
    assert status == "grpc://guarded-grpc.ns.example.com:80"
    custom(cluster).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencegraphs", "guarded",
        {"spec": {"grpc": False, "auth": "none"}},
    )  # fmt: skip

    def twin_gone() -> bool:
        try:
            get(cluster, "ksvc", "guarded-grpc")
        except client.exceptions.ApiException as exc:
            return bool(exc.status == 404)
        return False

    def binding_gone() -> bool:
        try:
            rbac.read_cluster_role_binding(binding_name)
        except client.exceptions.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(twin_gone, "the twin deleted")
    wait_for(binding_gone, "the binding deleted")
    custom(cluster).patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencegraphs", "guarded", {"spec": {"auth": "kubernetes"}}
    )
    wait_for(lambda: rbac.read_cluster_role_binding(binding_name), "the binding again")
    custom(cluster).delete_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "inferencegraphs", "guarded"
    )
    wait_for(binding_gone, "the binding deleted with the graph")
