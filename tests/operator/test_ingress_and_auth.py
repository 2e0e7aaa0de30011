"""What the operator builds for a graph with gRPC ingress (``grpc: true``) or client
authentication (``auth: kubernetes``), in both modes. Pure builders; tests/kube applies them to
a real API server and the cluster tier runs them."""

from __future__ import annotations

from typing import Any

from infergraph.operator import access, knative, standard
from infergraph.operator.reconcile import grpc_address
from infergraph.operator.resources import InferenceGraphSpec

OWNER = {"apiVersion": "infergraph.dev/v1alpha1", "kind": "InferenceGraph", "name": "iris",
         "uid": "u", "controller": True, "blockOwnerDeletion": True}  # fmt: skip
NODES = {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://m/"}]}}


def graph(**spec: Any) -> InferenceGraphSpec:
    return InferenceGraphSpec.model_validate({"nodes": NODES, **spec})


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    pod = manifest["spec"]["template"]["spec"]
    found: dict[str, Any] = pod["containers"][0]
    return found


def test_the_grpc_twin_is_a_knative_service_knative_admits() -> None:
    twin = knative.router_service(
        "iris-grpc", "ns", "iris-graph", graph(grpc=True), OWNER, grpc="only", graph="iris"
    )
    router = container(twin)
    assert router["ports"] == [{"name": "h2c", "containerPort": knative.GRPC_PORT}]
    assert router["args"][-2:] == ["--grpc-port", str(knative.GRPC_PORT)]
    assert router["readinessProbe"]["tcpSocket"] == {"port": knative.GRPC_PORT}
    assert twin["metadata"]["labels"][knative.GRAPH_LABEL] == "iris"  # its graph's, not its own
    assert knative.knative_problems(twin) == ([], [])


def test_standard_mode_serves_both_ports_on_one_service() -> None:
    deployment = standard.router_deployment("iris", "ns", "iris-graph", graph(), OWNER, grpc=True)
    router = container(deployment)
    assert [p["containerPort"] for p in router["ports"]] == [8080, knative.GRPC_PORT]
    assert "--grpc-port" in router["args"]
    service = standard.router_k8s_service("iris", "ns", OWNER, grpc=True)
    grpc = service["spec"]["ports"][1]
    assert (grpc["port"], grpc["targetPort"], grpc["appProtocol"]) == (
        knative.GRPC_PORT, knative.GRPC_PORT, "kubernetes.io/h2c",
    )  # fmt: skip
    assert standard.cluster_grpc_address("iris", "ns") == "grpc://iris.ns.svc.cluster.local:8081"
    assert grpc_address("http://iris-grpc.ns.example.com") == "grpc://iris-grpc.ns.example.com:80"


def test_auth_runs_the_router_with_a_token_and_the_reviews_it_needs() -> None:
    ksvc = knative.router_service(
        "iris", "ns", "iris-graph", graph(auth="kubernetes"), OWNER, auth=True,
        service_account="iris-router",
    )  # fmt: skip
    args = container(ksvc)["args"]
    assert args[args.index("--auth") + 1] == "kubernetes"
    assert args[args.index("--auth-resource") + 1] == "infergraph.dev/inferencegraphs"
    assert ksvc["spec"]["template"]["spec"]["serviceAccountName"] == "iris-router"
    deployment = standard.router_deployment("iris", "ns", "iris-graph", graph(), OWNER, auth=True)
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    plain = standard.router_deployment("iris", "ns", "iris-graph", graph(), OWNER)
    assert plain["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert access.router_account("iris", None) == "iris-router"
    assert access.router_account("iris", "mine") == "mine"
    binding = access.auth_delegator_binding("ns", "iris", "iris-router")
    assert binding["roleRef"]["name"] == "system:auth-delegator"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "iris-router", "namespace": "ns"}
    ]
    assert binding["metadata"]["labels"][access.NAMESPACE_LABEL] == "ns"
