"""The operator tests' handle on their API server, and the names they share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, dynamic

OPERATOR_USER = "system:serviceaccount:infergraph-system:infergraph-operator"
KUBE_VERSION = "v1.36.3"  # as tests/kube/build.sh builds it
NAMESPACE = "models"
OPERATOR_NAMESPACE = "infergraph-system"
OTLP_ENDPOINT = "http://jaeger.infergraph-system:4318"


@dataclass
class Cluster:
    url: str
    admin_kubeconfig: Path
    operator_kubeconfig: Path
    api: client.ApiClient

    @property
    def dynamic(self) -> dynamic.DynamicClient:
        return dynamic.DynamicClient(self.api)  # type: ignore[no-untyped-call]

    def apply(self, document: dict[str, Any]) -> Any:
        resource = self.dynamic.resources.get(
            api_version=document["apiVersion"], kind=document["kind"]
        )
        return resource.server_side_apply(
            body=document,
            namespace=document["metadata"].get("namespace"),
            field_manager="tests",
            force_conflicts=True,
        )

    def apply_file(self, path: Path) -> None:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                self.apply(document)


GROUP, VERSION = "infergraph.dev", "v1alpha1"


def wait_for(
    check: Callable[[], Any],
    what: str,
    timeout: float = 20,
    *,
    interval: float = 0.1,
    describe: Callable[[], str] | None = None,
) -> Any:
    """``check()``'s first true value, asked every ``interval`` seconds (an object not found
    yet counts as false); on timeout an ``AssertionError`` with the last value seen and
    ``describe()``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(interval)
    seen = f"; last seen: {last}" + (f"\n{describe()}" if describe is not None else "")
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{seen}")


def custom(cluster: Cluster) -> Any:
    """The custom-objects client (its models are read as Any, every field being optional)."""
    return client.CustomObjectsApi(cluster.api)


def create(cluster: Cluster, plural: str, name: str, spec: dict[str, Any], **metadata: Any) -> None:
    """Create a Predictor or InferenceGraph in NAMESPACE; ``metadata``: labels, annotations."""
    kind = {"predictors": "Predictor", "inferencegraphs": "InferenceGraph"}[plural]
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }
    custom(cluster).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, body)


def get(cluster: Cluster, plural: str, name: str) -> Any:
    """A Predictor, InferenceGraph or (``ksvc``) Knative Service in NAMESPACE."""
    if plural == "ksvc":
        return custom(cluster).get_namespaced_custom_object(
            "serving.knative.dev", "v1", NAMESPACE, "services", name
        )
    return custom(cluster).get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, plural, name)


def iris_graph(scaler: str = "scaler", classifier: str = "classifier") -> dict[str, Any]:
    """A Sequence: scale the rows with ``scaler``, then classify them with ``classifier``."""
    return {
        "nodes": {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "scale", "serviceName": scaler},
                    {
                        "name": "classify",
                        "serviceName": classifier,
                        "data": "$response",
                        "mapPredictionsToInstances": True,
                    },
                ],
            }
        },
        "minReplicas": 1,
    }


def kubeconfig(path: Path, url: str, token: str) -> Path:
    """A kubeconfig for ``url`` with a bearer token (the server's certificate is not checked)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "test", "cluster": {"server": url, "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "user", "user": {"token": token}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
                "current-context": "test",
            }
        )
    )
    return path
