"""The validating webhook: the API server itself refuses an invalid InferenceGraph at create
time, with the messages of `infergraph validate`.

Runs after test_operator.py (which needs invalid graphs admitted, to check their status): the
webhook configuration this module's operator registers applies to the whole cluster, and it is
deleted at the end.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from infergraph.predictors import processes
from infergraph.testing.cluster import Cluster

GROUP, VERSION, NAMESPACE = "infergraph.dev", "v1alpha1", "guarded"
WEBHOOK_CONFIG = f"validate.{GROUP}"


@pytest.fixture(scope="module")
def webhook_operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    work = tmp_path_factory.mktemp("webhook")
    cert, key = work / "tls.crt", work / "tls.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    port = processes.free_port()
    log = work / "operator.log"
    process = subprocess.Popen(
        [
            processes.CLI,
            *("operator", "--namespace", NAMESPACE),
            *("--webhook-port", str(port), "--webhook-host", "127.0.0.1"),
            *(
                "--webhook-addr",
                "127.0.0.1",
                "--webhook-cert",
                str(cert),
                "--webhook-key",
                str(key),
            ),
        ],
        env=processes.child_env({"KUBECONFIG": str(cluster.operator_kubeconfig)}),
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(work),
    )
    admission = client.AdmissionregistrationV1Api(cluster.api)
    deadline = time.monotonic() + 30
    while True:
        try:
            config = admission.read_validating_webhook_configuration(WEBHOOK_CONFIG)
            if config.webhooks:
                break
        except client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(
                f"the webhook was not registered; see {log}:\n{Path(log).read_text()[-3000:]}"
            )
        time.sleep(0.2)
    yield
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
    admission.delete_validating_webhook_configuration(WEBHOOK_CONFIG)


def graph(name: str, nodes: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceGraph",
        "metadata": {"name": name},
        "spec": {"nodes": nodes},
    }


@pytest.mark.usefixtures("webhook_operator")
def test_invalid_graph_is_refused_at_apply_time(cluster: Cluster) -> None:
    api = client.CustomObjectsApi(cluster.api)
    invalid = graph(
        "broken",
        {
            "main": {
                "routerType": "Sequence",
                "steps": [{"serviceUrl": "http://m/", "condition": "$.a["}],
            }
        },
    )
    with pytest.raises(client.exceptions.ApiException) as caught:
        api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "inferencegraphs", invalid)
    assert caught.value.status in (400, 422)
    body = str(caught.value.body)
    assert "denied the request" in body
    assert "no node named 'root'" in body
    assert "node 'main', step 0: JSONPath '$.a[' does not parse" in body
    valid = graph(
        "fine", {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": "http://m/"}]}}
    )
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "inferencegraphs", valid)
