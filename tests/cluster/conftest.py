"""The cluster tier: a real one-node Kubernetes cluster with Knative Serving, and the operator
running in it from its image, set up once for the session (tests/support/localcluster.py and
knative_install.py say how).

The operator is installed as the README says: the CRDs, namespace and RBAC of deploy/, a TLS
pair for its webhook in the Secret deploy/operator.yaml names, and that Deployment with the
image set to the locally built one (nothing is pushed to a registry) and ``--router-image`` set
to the local router image.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes import client, config

from infergraph.operator.handlers import WEBHOOK_CONFIGURATION
from infergraph.testing import knative_install, localcluster
from infergraph.testing.cluster import NAMESPACE, OPERATOR_NAMESPACE, Cluster
from infergraph.testing.localcluster import Tier
from infergraph.testing.paths import CACHE, REPO


def _webhook_secret(work: Path) -> dict[str, Any]:
    name = f"infergraph-operator.{OPERATOR_NAMESPACE}.svc"
    key, cert = work / "webhook.key", work / "webhook.crt"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
            *("-addext", f"subjectAltName=DNS:{name}"),
        ],
        check=True,
        capture_output=True,
    )
    import base64  # noqa: PLC0415

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "infergraph-webhook-tls", "namespace": OPERATOR_NAMESPACE},
        "data": {
            "tls.crt": base64.b64encode(cert.read_bytes()).decode(),
            "tls.key": base64.b64encode(key.read_bytes()).decode(),
        },
    }


def _operator_documents(tag: str) -> list[dict[str, Any]]:
    """deploy/operator.yaml with the local images: what a user's kustomize overlay would do."""
    documents = [
        d for d in yaml.safe_load_all((REPO / "deploy" / "operator.yaml").read_text()) if d
    ]
    for document in documents:
        if document["kind"] == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            container["image"] = f"localhost/infergraph/operator:{tag}"
            container["args"] += [f"--router-image=localhost/infergraph/router:{tag}"]
    return documents


def _wait_node_ready(kube: Cluster, timeout: float = 60) -> None:
    core: Any = client.CoreV1Api(kube.api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in core.list_node().items:
            if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
                return
        time.sleep(0.5)
    raise TimeoutError("the node did not get Ready")


def _wait_webhook_registered(kube: Cluster, timeout: float = 60) -> None:
    admission: Any = client.AdmissionregistrationV1Api(kube.api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if admission.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION).webhooks:
                return
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(0.5)
    raise TimeoutError("the operator did not register its webhook")


@pytest.fixture(scope="session")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    work = tmp_path_factory.mktemp("cluster")
    # The clients trust the API server's self-signed certificate without checking it.
    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    tag = (CACHE / "images" / "tag").read_text().strip()
    with localcluster.running(work) as node:
        timings = node.timings
        api = config.new_client_from_config(str(node.kubeconfig))  # type: ignore[no-untyped-call]
        kube = Cluster(node.url, node.kubeconfig, node.kubeconfig, api)
        started = time.monotonic()
        _wait_node_ready(kube)
        timings["node ready"] = time.monotonic() - started
        started = time.monotonic()
        knative_install.install(kube)
        timings["knative"] = time.monotonic() - started
        with knative_install.IngressStandIn(kube):
            started = time.monotonic()
            for path in sorted((REPO / "deploy" / "crds").glob("*.yaml")):
                kube.apply_file(path)
            kube.apply_file(REPO / "deploy" / "namespace.yaml")
            kube.apply_file(REPO / "deploy" / "rbac.yaml")
            kube.apply(_webhook_secret(work))
            for document in _operator_documents(tag):
                kube.apply(document)
            kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            knative_install.wait_available(kube, OPERATOR_NAMESPACE, ["infergraph-operator"], 120)
            _wait_webhook_registered(kube)
            timings["operator"] = time.monotonic() - started
            print(
                "cluster: set-up times (s): "
                + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
                file=sys.stderr,
            )
            yield Tier(node, kube, tag, timings)
