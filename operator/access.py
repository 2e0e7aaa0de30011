"""What a graph's router needs to check its callers (``auth: kubernetes``): a ServiceAccount of
its own (unless the graph names one) and a ClusterRoleBinding of it to ``system:auth-delegator``,
which allows the TokenReviews and SubjectAccessReviews the router makes. Both reviews are
cluster-scoped, so no RoleBinding could grant them. Manifests only, no I/O."""

from __future__ import annotations

from typing import Any

from infergraph.operator import knative

NAMESPACE_LABEL = "infergraph.dev/namespace"
AUTH_DELEGATOR = "system:auth-delegator"


def router_account(graph: str, named: str | None) -> str:
    """The router's ServiceAccount: the graph's ``serviceAccountName``, else ``<graph>-router``."""
    return named or f"{graph}-router"


def binding_name(namespace: str, graph: str) -> str:
    return f"infergraph-router-{namespace}-{graph}"


def service_account(name: str, namespace: str, graph: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**knative.MANAGED_BY, knative.GRAPH_LABEL: graph},
            "ownerReferences": [owner],
        },
    }


def auth_delegator_binding(namespace: str, graph: str, account: str) -> dict[str, Any]:
    """Cluster-scoped, so it cannot be owned by the graph: labelled with it instead, and deleted
    by the operator when the graph goes or turns ``auth`` off."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": binding_name(namespace, graph),
            "labels": {
                **knative.MANAGED_BY,
                knative.GRAPH_LABEL: graph,
                NAMESPACE_LABEL: namespace,
            },
        },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": AUTH_DELEGATOR,
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }
