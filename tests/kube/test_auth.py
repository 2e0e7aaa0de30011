"""``--auth kubernetes`` against the real API server, with real ServiceAccount tokens (from the
TokenRequest API): a caller RBAC allows, one it does not, a token the API server no longer
accepts (its ServiceAccount deleted), a made-up token, none, and an API server that cannot be
reached (refused, closed). The router asks with its own ServiceAccount, bound to
``system:auth-delegator`` as a real deployment would be."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as triton
from kubernetes import client
from tritonclient.utils import InferenceServerException

from infergraph.predictors import processes
from infergraph.testing.cluster import NAMESPACE, Cluster
from infergraph.testing.harness import Predictor, request

GRAPH = "guarded"


def token_for(cluster: Cluster, name: str) -> str:
    core = client.CoreV1Api(cluster.api)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    review = core.create_namespaced_service_account_token(name, NAMESPACE, request)
    assert review.status is not None
    return str(review.status.token)


def service_account(cluster: Cluster, name: str) -> None:
    cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": name, "namespace": NAMESPACE}}
    )  # fmt: skip


@pytest.fixture(scope="module")
def tokens(cluster: Cluster) -> dict[str, str]:
    for name in ("ig-router", "alice", "bob", "gone"):
        service_account(cluster, name)
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "ig-router-auth-delegator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": "ig-router", "namespace": NAMESPACE}],
        }
    )  # fmt: skip
    for who in ("alice", "gone"):
        cluster.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": f"use-{GRAPH}-{who}", "namespace": NAMESPACE},
                "rules": [{"apiGroups": ["serving.kserve.io"], "resources": ["inferencegraphs"],
                           "resourceNames": [GRAPH], "verbs": ["get"]}],
            }
        )  # fmt: skip
        cluster.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": f"use-{GRAPH}-{who}", "namespace": NAMESPACE},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": f"use-{GRAPH}-{who}"},
                "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": NAMESPACE}],
            }
        )  # fmt: skip
    return {name: token_for(cluster, name) for name in ("ig-router", "alice", "bob", "gone")}


def guarded_router(
    cluster: Cluster,
    tokens: dict[str, str],
    predictor: Predictor,
    tmp_path: Path,
    api_url: str,
    grpc_port: int | None = None,
) -> processes.ServerProcess:
    (tmp_path / "router.token").write_text(tokens["ig-router"])
    work = cluster.admin_kubeconfig.parent
    steps = [{"serviceUrl": predictor.url("s")}]
    spec = json.dumps(
        {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "InferenceGraph",
            "metadata": {"name": GRAPH},  # the name the reviews ask about
            "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": steps}}},
        }
    )
    port = processes.free_port()
    return processes.router(
        port,
        "--graph-json",
        spec,
        extra=(
            "--drain-seconds", "0", "--auth", "kubernetes", "--auth-api-url", api_url,
            "--auth-token-file", str(tmp_path / "router.token"),
            "--auth-ca-file", str(work / "certs" / "apiserver.crt"),
            "--auth-namespace", NAMESPACE, "--auth-cache-seconds", "0.5",
            *(("--grpc-port", str(grpc_port)) if grpc_port is not None else ()),
        ),
        log_path=tmp_path / "router.log",
    )  # fmt: skip


def _port(server: processes.ServerProcess) -> int:
    return int(server.ready_url.split(":")[2].split("/")[0])


def post(port: int, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return request(port, {}, headers=headers)


def test_tokens_and_access_are_checked_by_the_api_server(
    cluster: Cluster, tokens: dict[str, str], predictor: Predictor, tmp_path: Path
) -> None:
    with guarded_router(cluster, tokens, predictor, tmp_path, cluster.url) as router:
        port = _port(router)
        assert request(port, method="GET", path="/readyz").status == 200  # probes stay open
        allowed = post(port, tokens["alice"])
        assert allowed.status == 200, allowed.body
        denied = post(port, tokens["bob"])
        assert denied.status == 403
        assert "may not get serving.kserve.io/inferencegraphs 'guarded'" in denied.json()["cause"]
        for token in (None, "not-a-token"):
            refused = post(port, token)
            assert refused.status == 401
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert post(port, tokens["gone"]).status == 200
        client.CoreV1Api(cluster.api).delete_namespaced_service_account("gone", NAMESPACE)
        # Past the router's 0.5 s cache, and the API server's own view of ServiceAccounts.
        deadline = time.monotonic() + 20
        revoked = post(port, tokens["gone"])
        while revoked.status == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            revoked = post(port, tokens["gone"])
        assert revoked.status == 401
        assert "does not accept the token" in revoked.json()["cause"]


def reviews_made(cluster: Cluster) -> dict[str, int]:
    """TokenReviews and SubjectAccessReviews the API server has answered, from its metrics."""
    asked = cluster.api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response: Any = cluster.api.call_api(*asked)  # a RESTResponse, typed loosely
    response.read()
    counts = {"tokenreviews": 0, "subjectaccessreviews": 0}
    for line in response.data.decode().splitlines():
        if line.startswith("apiserver_request_total{"):
            for resource in counts:
                if f'resource="{resource}"' in line:
                    counts[resource] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def test_calls_at_once_with_one_token_share_its_reviews(
    cluster: Cluster, tokens: dict[str, str], predictor: Predictor, tmp_path: Path
) -> None:
    """Each call needing a review that another is already asking for waits for that one, as
    the API server's own token cache does: 20 calls at once, one TokenReview and one
    SubjectAccessReview (one each per call before). A token over 16 KiB is refused unasked."""
    with guarded_router(cluster, tokens, predictor, tmp_path, cluster.url) as router:
        port = _port(router)
        before = reviews_made(cluster)
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda _: post(port, tokens["alice"]).status, range(20)))
        made = reviews_made(cluster)
        assert statuses == [200] * 20
        # At most one more each, should the calls outlast the router's 0.5 s cache.
        assert made["tokenreviews"] - before["tokenreviews"] <= 2, (before, made)
        assert made["subjectaccessreviews"] - before["subjectaccessreviews"] <= 2
        huge = post(port, "x" * (16 * 1024 + 1))
        assert huge.status == 401
        assert "over 16384 bytes" in huge.json()["cause"]
        assert reviews_made(cluster)["tokenreviews"] == made["tokenreviews"]


def test_an_unreachable_api_server_refuses_every_call(
    cluster: Cluster, tokens: dict[str, str], predictor: Predictor, tmp_path: Path
) -> None:
    dead = f"https://127.0.0.1:{processes.free_port()}"
    with guarded_router(cluster, tokens, predictor, tmp_path, dead) as router:
        predictor.clear()
        refused = post(_port(router), tokens["alice"])
        assert refused.status == 403
        assert "unreachable" in refused.json()["cause"]
        assert predictor.calls() == []  # the graph did not run


def test_grpc_ingress_checks_the_same_way(
    cluster: Cluster, tokens: dict[str, str], predictor: Predictor, tmp_path: Path
) -> None:
    grpc_port = processes.free_port()
    with (
        guarded_router(cluster, tokens, predictor, tmp_path, cluster.url, grpc_port),
        triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c,
    ):
        assert c.is_server_live()  # server-wide probes stay open
        allowed = {"authorization": f"Bearer {tokens['alice']}"}
        assert c.is_model_ready(GRAPH, headers=allowed)
        c.infer(GRAPH, [], headers=allowed)
        for headers, code in (
            ({"authorization": f"Bearer {tokens['bob']}"}, "PERMISSION_DENIED"),
            ({}, "UNAUTHENTICATED"),
        ):
            with pytest.raises(InferenceServerException) as raised:
                c.infer(GRAPH, [], headers=headers)
            assert raised.value.status() == f"StatusCode.{code}"
            with pytest.raises(InferenceServerException) as raised:
                c.get_model_metadata(GRAPH, headers=headers)
            assert raised.value.status() == f"StatusCode.{code}"
