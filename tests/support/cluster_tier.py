"""What the cluster tier's tests share: waiting with diagnostics, the API clients, readiness of
the objects the operator and Knative write, and requests from the node."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from kubernetes import client

from infergraph.testing import cluster
from infergraph.testing.cluster import GROUP, NAMESPACE, VERSION
from infergraph.testing.localcluster import Tier


def wait_for(
    check: Callable[[], Any], what: str, timeout: float = 120, tier: Tier | None = None
) -> Any:
    """``cluster.wait_for`` at the pace of pods, describing the cluster on timeout."""
    describe = partial(diagnostics, tier) if tier is not None else None
    return cluster.wait_for(check, what, timeout, interval=0.5, describe=describe)


def diagnostics(tier: Tier) -> str:
    """What the cluster looks like: objects' conditions, pods, recent events."""
    lines = []
    for group, version, plural in (
        (GROUP, VERSION, "predictors"),
        (GROUP, VERSION, "inferencegraphs"),
        ("serving.knative.dev", "v1", "services"),
        ("serving.knative.dev", "v1", "revisions"),
        ("networking.internal.knative.dev", "v1alpha1", "ingresses"),
    ):
        found = custom(tier).list_namespaced_custom_object(group, version, NAMESPACE, plural)
        for item in found["items"]:
            conditions = [
                (c.get("type"), c.get("status"), c.get("message"))
                for c in (item.get("status") or {}).get("conditions") or []
                if c.get("status") != "True"
            ]
            lines.append(f"{plural}/{item['metadata']['name']}: {conditions}")
    for pod in core(tier).list_namespaced_pod(NAMESPACE).items:
        states = [(c.name, c.ready, c.restart_count) for c in pod.status.container_statuses or []]
        lines.append(f"pod/{pod.metadata.name}: {pod.status.phase} {states}")
    events = core(tier).list_namespaced_event(NAMESPACE).items[-15:]
    lines += [f"event {e.involved_object.name}: {e.reason} {e.message}" for e in events]
    return "\n".join(lines)


# The clients' models are typed with every field optional: the tests read them as Any.
def custom(tier: Tier) -> Any:
    return client.CustomObjectsApi(tier.kube.api)


def core(tier: Tier) -> Any:
    return client.CoreV1Api(tier.kube.api)


def apps(tier: Tier) -> Any:
    return client.AppsV1Api(tier.kube.api)


def create(tier: Tier, plural: str, name: str, spec: dict[str, Any], **metadata: Any) -> None:
    cluster.create(tier.kube, plural, name, spec, **metadata)


def get(tier: Tier, plural: str, name: str) -> Any:
    return cluster.get(tier.kube, plural, name)


def ready(body: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (body.get("status") or {}).get("conditions") or []
    )


def iris_predictor(model: str, **placement: Any) -> dict[str, Any]:
    return {
        "runtime": "custom",
        "image": "",  # set per tier (the local image's tag)
        "port": 8080,
        "protocol": "v1",
        "model": {"name": model},
        **placement,
    }


def running_pods(tier: Tier, selector: str) -> list[Any]:
    pods = core(tier).list_namespaced_pod(NAMESPACE, label_selector=selector).items
    return [
        pod
        for pod in pods
        if pod.status.phase == "Running"
        and pod.metadata.deletion_timestamp is None
        and all(s.ready for s in pod.status.container_statuses or [])
    ]


def serving_directly(tier: Tier, service: str) -> bool:
    """Whether the latest revision's Service leads to its own pods, not to the activator: in
    its Endpoints, and in the node's kube-proxy rules.

    Knative puts the activator in a revision's path while it scales (and at zero); the
    activator then needs an ingress's headers to find the revision, which nothing adds here
    (see knative_install: target-burst-capacity 0 takes it out once pods are up). kube-proxy
    follows the Endpoints within its sync period, so a request right after they change can
    still reach the activator (which answers 404 "Error getting active endpoint")."""
    revision = (get(tier, "ksvc", service).get("status") or {}).get("latestReadyRevisionName")
    if not revision:
        return False
    endpoints = core(tier).read_namespaced_endpoints(revision, NAMESPACE)
    addresses = [
        address for subset in endpoints.subsets or [] for address in subset.addresses or []
    ]
    if not addresses or not all(
        a.target_ref is not None and a.target_ref.namespace == NAMESPACE for a in addresses
    ):
        return False
    rules = tier.node.netns.run(["iptables-save", "-t", "nat"]).stdout
    routed = re.findall(
        rf'--comment "{NAMESPACE}/{re.escape(revision)}:[^"]*" .*--to-destination ([\d.]+):',
        rules,
    )
    return bool(routed) and set(routed) <= {a.ip for a in addresses}


def service_ip(tier: Tier, name: str) -> str:
    ip: str = core(tier).read_namespaced_service(name, NAMESPACE).spec.cluster_ip
    return ip


def post(tier: Tier, url: str, document: Any, headers: dict[str, str] | None = None) -> Any:
    reply = tier.node.netns.http(url, json.dumps(document).encode(), headers, timeout=60)
    assert reply.status == 200, (url, reply.status, reply.body[:500])
    return reply.json()
