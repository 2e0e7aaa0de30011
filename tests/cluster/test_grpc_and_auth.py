"""gRPC ingress and client authentication on the real cluster, from the node as a client in
the cluster's network would call them.

- Knative: a graph with ``grpc: true`` gets a ``<name>-grpc`` twin whose one port is h2c; a
  tritonclient gRPC call goes through the twin revision's queue-proxy to the router, and from it
  to an identity model in its own pod, and every tensor comes back as sent.
- Standard: the graph's Service carries gRPC on 8081 beside HTTP on 80, through kube-proxy.
- ``auth: kubernetes``: the router, in its pod, asks the cluster's API server (its
  ServiceAccount bound to ``system:auth-delegator`` by the operator) about real ServiceAccount
  tokens: one RBAC allows, one it does not, none; over REST and over gRPC.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from typing import Any

import pytest
from kubernetes import client

from infergraph.testing.cluster import NAMESPACE
from infergraph.testing.cluster_tier import (
    core,
    create,
    get,
    iris_predictor,
    ready,
    service_ip,
    serving_directly,
    wait_for,
)
from infergraph.testing.localcluster import Tier
from infergraph.testing.oip_call import expected_outputs

pytestmark = pytest.mark.timeout(600)
STANDARD = {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}}
V2_REQUEST = {"id": "rest", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [0.5, -1.0]}]}  # fmt: skip


def echo_graph(**settings: Any) -> dict[str, Any]:
    """One step: the identity model of the ``echo`` Predictor (v2 REST)."""
    return {
        "nodes": {
            "root": {"routerType": "Sequence", "steps": [{"name": "echo", "serviceName": "echo"}]}
        },
        "minReplicas": 1,
        **settings,
    }


@pytest.fixture(scope="module")
def echo(tier: Tier) -> None:
    """The local predictor's v2 ``identity`` model, Ready and serving."""
    spec = {**iris_predictor("identity", minReplicas=1), "image": tier.image("predictor")}
    create(tier, "predictors", "echo", {**spec, "protocol": "v2"})
    wait_for(lambda: ready(get(tier, "predictors", "echo")), "echo Ready", 180, tier)
    wait_for(partial(serving_directly, tier, "echo"), "echo's pods in its path")


def ready_graph(tier: Tier, name: str) -> Any:
    return wait_for(lambda: ready(b := get(tier, "inferencegraphs", name)) and b, name, 240, tier)


def grpc_call(tier: Tier, address: str, model: str, token: str | None = None) -> Any:
    """tritonclient's ModelInfer from the node (infergraph.testing.oip_call)."""
    argv = [sys.executable, "-m", "infergraph.testing.oip_call", address, model]
    done = tier.node.netns.run([*argv, *(["--token", token] if token else [])], timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def answered(tier: Tier, address: str, model: str, token: str | None = None) -> Any:
    """The first call that is not refused for want of an endpoint (kube-proxy programs a new
    Service's endpoints within its sync period)."""
    seen: list[Any] = []

    def call() -> Any:
        seen.append(grpc_call(tier, address, model, token))
        return seen[-1]["code"] != "StatusCode.UNAVAILABLE" and seen[-1]

    try:
        return wait_for(call, f"a gRPC answer from {address}", 60, tier)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}\nthe last call: {seen[-1:]}") from None


# A revision's Service carries HTTP/1 on port 80 and h2c on 81 (Knative's names: http, http2),
# each to its queue-proxy. The networking layer that clients reach on port 80 (status.url,
# status.grpcUrl) and that sends gRPC on to 81 cannot run here: the tests call 81 themselves.
H2C_PORT = 81


def revision_address(tier: Tier, service: str, port: int = 80) -> str:
    wait_for(partial(serving_directly, tier, service), f"{service}'s pods in its path")
    revision = get(tier, "ksvc", service)["status"]["latestReadyRevisionName"]
    return f"{service_ip(tier, revision)}:{port}"


def http(tier: Tier, address: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return tier.node.netns.http(f"http://{address}/", json.dumps(V2_REQUEST).encode(), headers, 30)


def test_grpc_ingress_through_queue_proxy_to_the_graphs_twin(tier: Tier, echo: None) -> None:
    create(tier, "inferencegraphs", "echo-graph", echo_graph(grpc=True))
    body = ready_graph(tier, "echo-graph")
    assert body["status"]["grpcUrl"] == f"grpc://echo-graph-grpc.{NAMESPACE}.svc.cluster.local:80"
    twin = get(tier, "ksvc", "echo-graph-grpc")
    (port,) = twin["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert port["name"] == "h2c"
    result = answered(tier, revision_address(tier, "echo-graph-grpc", H2C_PORT), "echo-graph")
    assert result["code"] == "OK", result
    assert result["id"] == "in-cluster"
    assert result["outputs"] == expected_outputs()
    # The graph's own Service still answers REST.
    reply = http(tier, revision_address(tier, "echo-graph"))
    assert reply.status == 200, reply.body
    assert reply.json()["outputs"] == V2_REQUEST["inputs"]


def test_standard_mode_serves_grpc_beside_http_through_kube_proxy(tier: Tier, echo: None) -> None:
    create(tier, "inferencegraphs", "std-echo", echo_graph(grpc=True), **STANDARD)
    body = ready_graph(tier, "std-echo")
    assert body["status"]["grpcUrl"] == f"grpc://std-echo.{NAMESPACE}.svc.cluster.local:8081"
    service = core(tier).read_namespaced_service("std-echo", NAMESPACE)
    assert sorted((p.port, p.target_port) for p in service.spec.ports) == [(80, 8080), (8081, 8081)]
    ip = service_ip(tier, "std-echo")
    result = answered(tier, f"{ip}:8081", "std-echo")
    assert result["code"] == "OK", result
    assert result["outputs"] == expected_outputs()
    reply = http(tier, f"{ip}:80")
    assert reply.status == 200, reply.body


def _token(tier: Tier, account: str) -> str:
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    review = core(tier).create_namespaced_service_account_token(account, NAMESPACE, request)
    return str(review.status.token)


def _callers(tier: Tier, graph: str) -> dict[str, str]:
    """ServiceAccounts ``alice`` (RBAC lets her get the graph) and ``bob``; their tokens."""
    for account in ("alice", "bob"):
        tier.kube.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": account, "namespace": NAMESPACE}}
        )  # fmt: skip
    rbac = "rbac.authorization.k8s.io"
    tier.kube.apply(
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": {"name": f"use-{graph}", "namespace": NAMESPACE},
            "rules": [{"apiGroups": ["infergraph.dev"], "resources": ["inferencegraphs"],
                       "resourceNames": [graph], "verbs": ["get"]}],
        }
    )  # fmt: skip
    tier.kube.apply(
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"use-{graph}", "namespace": NAMESPACE},
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": f"use-{graph}"},
            "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": NAMESPACE}],
        }
    )
    return {account: _token(tier, account) for account in ("alice", "bob")}


def test_callers_are_checked_by_the_api_server_from_the_routers_pod(tier: Tier, echo: None) -> None:
    tokens = _callers(tier, "guarded")
    create(tier, "inferencegraphs", "guarded", echo_graph(grpc=True, auth="kubernetes"))
    ready_graph(tier, "guarded")
    (container,) = get(tier, "ksvc", "guarded")["spec"]["template"]["spec"]["containers"]
    assert "--auth" in container["args"]

    rest = revision_address(tier, "guarded")
    alice = http(tier, rest, tokens["alice"])
    assert alice.status == 200, alice.body
    assert alice.json()["outputs"] == V2_REQUEST["inputs"]
    bob = http(tier, rest, tokens["bob"])
    assert bob.status == 403, bob.body
    assert bob.json()["cause"].startswith(
        f"system:serviceaccount:{NAMESPACE}:bob may not get infergraph.dev/inferencegraphs "
        f"'guarded' in namespace {NAMESPACE}"
    )
    nobody = http(tier, rest)
    assert nobody.status == 401, nobody.body

    grpc = revision_address(tier, "guarded-grpc", H2C_PORT)
    allowed = answered(tier, grpc, "guarded", tokens["alice"])
    assert allowed["code"] == "OK", allowed
    assert allowed["outputs"] == expected_outputs()
    denied = grpc_call(tier, grpc, "guarded", tokens["bob"])
    assert denied["code"] == "StatusCode.PERMISSION_DENIED", denied
    anonymous = grpc_call(tier, grpc, "guarded")
    assert anonymous["code"] == "StatusCode.UNAUTHENTICATED", anonymous
