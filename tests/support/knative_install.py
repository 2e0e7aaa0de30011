"""Knative Serving in the local cluster, from its own release manifests, and the tests' stand-in
for a networking layer.

The manifests are those of knative.dev/serving's ``config/core`` (with the networking and
caching CRDs and ``config-network`` from their own modules), applied as released; the only
changes are the image references (``ko://knative.dev/serving/cmd/X`` becomes the locally built
``localhost/knative/X``), the queue-proxy image in ``config-deployment``, the registries whose
tags are not resolved (``localhost``, as nothing is pushed to a registry), and shorter
scale-to-zero windows in ``config-autoscaler`` so that the scale-to-zero test takes seconds.

No Knative networking layer can run here (Kourier, Istio and Contour all need Envoy).
``IngressStandIn`` does the one thing the Route waits for: it marks each KIngress ready, with a
load balancer that is the Kubernetes Service of the revision its rule sends the traffic to. The
Route's Service ``<name>.<namespace>.svc.cluster.local`` is then an ExternalName for it, so a
call by that name reaches the revision's pods through their queue-proxy (or the activator,
when scaled to zero), as it would through an ingress: the headers an ingress would add for the
activator are not added.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from infergraph.testing.cluster import Cluster
from infergraph.testing.paths import CACHE

KNATIVE_VERSION = "v0.50.0"
CONFIG = CACHE / f"knative-{KNATIVE_VERSION}" / "config"
SYSTEM = "knative-serving"
KO = "ko://knative.dev/serving/cmd/"
DEPLOYMENTS = ("controller", "webhook", "autoscaler", "activator")
# config-autoscaler: Knative's minimums where it has them, so that an idle revision goes to
# zero within about 10 s (defaults: 30 s grace, 60 s stable window).
AUTOSCALER = {
    "scale-to-zero-grace-period": "1s",
    "stable-window": "6s",
    "scale-to-zero-pod-retention-period": "0s",
    # The activator stays out of a revision's path while it has pods (Knative's default keeps
    # it in for small revisions): it finds the revision from headers an ingress sets, or from a
    # Host of <revision>.<namespace>.svc.cluster.local, neither of which a call by the
    # Service's own name carries here.
    "target-burst-capacity": "0",
}


def image(name: str) -> str:
    return f"localhost/knative/{name}:{KNATIVE_VERSION}"


def _documents(*paths: Path) -> Iterator[dict[str, Any]]:
    for path in paths:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield _local_images(document)


def _local_images(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _local_images(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_local_images(value) for value in node]
    if isinstance(node, str) and node.startswith(KO):
        return image(node.removeprefix(KO))
    return node


def _yaml(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def install(cluster: Cluster, timeout: float = 180) -> None:
    """Knative Serving's CRDs, configuration, deployments and webhooks; returns when all four
    deployments are available and the webhooks are registered."""
    core, networking, caching = CONFIG / "core", CONFIG / "networking", CONFIG / "caching"
    if not core.is_dir():
        raise FileNotFoundError(f"{core} is missing: run `make cluster` (tests/cluster/build.sh)")
    crds = [
        core / "100-namespace.yaml",
        *_yaml(core / "200-roles"),
        core / "200-serviceaccount.yaml",
        *_yaml(core / "300-resources"),
        *(
            networking / f
            for f in (
                "certificate.yaml",
                "domain-claim.yaml",
                "ingress.yaml",
                "serverlessservice.yaml",
            )
        ),
        caching / "image.yaml",
        core / "webhooks" / "secret.yaml",
    ]
    for document in _documents(*crds):
        cluster.apply(document)
    _wait_established(cluster, timeout)
    deadline = time.monotonic() + timeout
    for document in _documents(*_yaml(core / "configmaps"), networking / "config-network.yaml"):
        cluster.apply(_configured(document))
    rest = [core / "300-knativecertificate.yaml", core / "999-cache.yaml"]
    rest += [core / "deployments" / f"{name}.yaml" for name in DEPLOYMENTS]
    for document in _documents(*rest):
        # Discovery lags a CRD's Established condition by a moment.
        _retry(lambda document=document: cluster.apply(document), deadline)
    wait_available(cluster, SYSTEM, ["webhook"], deadline - time.monotonic())
    for document in _documents(*_yaml(core / "webhooks")):
        if document["kind"] != "Secret":
            cluster.apply(document)
    wait_available(cluster, SYSTEM, list(DEPLOYMENTS), deadline - time.monotonic())


def _configured(document: dict[str, Any]) -> dict[str, Any]:
    name = document["metadata"]["name"]
    data = dict(document.get("data") or {})
    if name == "config-deployment":
        data["queue-sidecar-image"] = image("queue")
        # Knative resolves localhost/infergraph/router:tag as an image of Docker Hub's.
        data["registries-skipping-tag-resolving"] = (
            "kind.local,ko.local,dev.local,localhost,index.docker.io,docker.io"
        )
    elif name == "config-autoscaler":
        data.update(AUTOSCALER)
    else:
        return document
    # Knative's webhook checks these maps against the example they carry: keep it.
    return {**document, "data": data}


def _retry(action: Any, deadline: float) -> None:
    while True:
        try:
            action()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _wait_established(cluster: Cluster, timeout: float) -> None:
    api: Any = client.ApiextensionsV1Api(cluster.api)
    deadline = time.monotonic() + timeout
    while True:
        crds = api.list_custom_resource_definition().items
        pending = [
            crd.metadata.name
            for crd in crds
            if crd.spec.group.endswith("knative.dev")
            and not any(
                c.type == "Established" and c.status == "True"
                for c in (crd.status.conditions or [])
            )
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not established: {pending}")
        time.sleep(0.2)


def wait_available(cluster: Cluster, namespace: str, names: list[str], timeout: float) -> None:
    apps: Any = client.AppsV1Api(cluster.api)
    deadline = time.monotonic() + max(timeout, 1)
    while True:
        waiting = []
        for name in names:
            try:
                status = apps.read_namespaced_deployment(name, namespace).status
            except client.ApiException:
                waiting.append(name)
                continue
            if not any(
                c.type == "Available" and c.status == "True" for c in (status.conditions or [])
            ):
                waiting.append(name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"deployments in {namespace} not available: {waiting}")
        time.sleep(0.5)


class IngressStandIn:
    """Marks every KIngress ready, its load balancer the revision Service its rule targets.

    What a networking layer would report; the tests say so where they rely on it."""

    GROUP, VERSION, PLURAL = "networking.internal.knative.dev", "v1alpha1", "ingresses"

    def __init__(self, cluster: Cluster, interval: float = 0.3) -> None:
        self.api: Any = client.CustomObjectsApi(cluster.api)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kingress-stand-in", daemon=True)
        self.marked = 0

    def __enter__(self) -> IngressStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            # The API server may be going away at the end of the session.
            with contextlib.suppress(Exception):
                self._mark_all()

    def _mark_all(self) -> None:
        found = self.api.list_cluster_custom_object(self.GROUP, self.VERSION, self.PLURAL)
        for ingress in found["items"]:
            status = self.status(ingress)
            if status is not None:
                self.api.patch_namespaced_custom_object_status(
                    self.GROUP,
                    self.VERSION,
                    ingress["metadata"]["namespace"],
                    self.PLURAL,
                    ingress["metadata"]["name"],
                    {"status": status},
                )
                self.marked += 1

    @staticmethod
    def status(ingress: dict[str, Any]) -> dict[str, Any] | None:
        """The status to write, or None when it is current."""
        target = IngressStandIn.target(ingress)
        if target is None:
            return None
        balancer = {"ingress": [{"domainInternal": target}]}
        generation = ingress["metadata"].get("generation")
        current = ingress.get("status") or {}
        if (
            current.get("observedGeneration") == generation
            and current.get("privateLoadBalancer") == balancer
        ):
            return None
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conditions = [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("LoadBalancerReady", "NetworkConfigured", "Ready")
        ]
        return {
            "observedGeneration": generation,
            "conditions": conditions,
            "publicLoadBalancer": copy.deepcopy(balancer),
            "privateLoadBalancer": balancer,
        }

    @staticmethod
    def target(ingress: dict[str, Any]) -> str | None:
        """The cluster DNS name of the revision Service that gets most of the traffic."""
        splits = [
            split
            for rule in (ingress.get("spec") or {}).get("rules") or []
            for path in (rule.get("http") or {}).get("paths") or []
            for split in path.get("splits") or []
        ]
        if not splits:
            return None
        best = max(splits, key=lambda split: split.get("percent", 0))
        return f"{best['serviceName']}.{best['serviceNamespace']}.svc.cluster.local"
