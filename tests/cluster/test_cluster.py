"""End to end on the real cluster: the operator in a pod, Knative reconciling what it writes,
requests through queue-proxy to the router and from it to the predictor pods by cluster DNS,
hot reload, scale to zero through the activator, and Standard mode through kube-proxy.

Where the tests stand in for a networking layer (none can run here), they say so: a KIngress
is marked ready by ``IngressStandIn`` (tests/support/knative_install.py), and requests from the
tests go to Kubernetes Services, from the node.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import pytest
from kubernetes import client

from infergraph.operator.handlers import WEBHOOK_CONFIGURATION
from infergraph.predictors.models import ModelZoo
from infergraph.testing import cluster
from infergraph.testing.cluster import GROUP, NAMESPACE, OPERATOR_NAMESPACE, VERSION
from infergraph.testing.cluster_tier import (
    apps,
    core,
    create,
    custom,
    get,
    iris_predictor,
    post,
    ready,
    running_pods,
    service_ip,
    serving_directly,
    wait_for,
)
from infergraph.testing.localcluster import Tier

# Pods start, models train and Knative reconciles: minutes, not pytest's default two.
pytestmark = pytest.mark.timeout(600)
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.2, 4.8, 1.8]]


@pytest.fixture(scope="module")
def expected() -> dict[str, list[Any]]:
    zoo = ModelZoo.train()
    scaled = zoo.predict_v1("scaler", {"instances": ROWS})
    return {model: zoo.predict_v1(model, {"instances": scaled}) for model in ("logistic", "forest")}


@pytest.fixture(scope="module")
def iris(tier: Tier) -> str:
    """Predictors and a graph applied with the Kubernetes client, Ready; the router's revision."""
    image = tier.image("predictor")
    for name, model in (("scaler", "scaler"), ("classifier", "logistic")):
        spec = {**iris_predictor(model, minReplicas=1), "image": image}
        create(tier, "predictors", name, spec)
    create(tier, "inferencegraphs", "iris", cluster.iris_graph())
    body = wait_for(
        lambda: ready(b := get(tier, "inferencegraphs", "iris")) and b, "iris Ready", 240, tier
    )
    # Knative's default domain is svc.cluster.local: the public URL is the cluster-local one.
    assert body["status"]["url"] == f"http://iris.{NAMESPACE}.svc.cluster.local"
    for name in ("iris", "scaler", "classifier"):
        wait_for(partial(serving_directly, tier, name), f"{name}'s pods in its path")
    revision: str = get(tier, "ksvc", "iris")["status"]["latestReadyRevisionName"]
    return revision


def test_the_operator_runs_in_the_cluster_with_its_webhook(tier: Tier) -> None:
    pods = (
        core(tier)
        .list_namespaced_pod(
            OPERATOR_NAMESPACE, label_selector="app.kubernetes.io/name=infergraph-operator"
        )
        .items
    )
    assert len(pods) == 1
    pod = pods[0]
    assert pod.status.phase == "Running"
    assert pod.spec.service_account_name == "infergraph-operator"
    assert pod.spec.containers[0].image == tier.image("operator")
    # Registered as a Service reference, which the API server resolves to the pod.
    admission: Any = client.AdmissionregistrationV1Api(tier.kube.api)
    webhook = admission.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION)
    service = webhook.webhooks[0].client_config.service
    assert (service.namespace, service.name, service.port) == (
        OPERATOR_NAMESPACE,
        "infergraph-operator",
        443,
    )
    # The API server calls it: an invalid graph is refused at create, naming node and step.
    bad = {
        "nodes": {
            "root": {"routerType": "Sequence", "steps": [{"name": "a", "nodeName": "missing"}]}
        }
    }
    with pytest.raises(client.ApiException) as refused:
        create(tier, "inferencegraphs", "refused", bad)
    assert refused.value.status == 422  # the code the operator's webhook answers with
    message = str(refused.value.body)
    assert (
        'admission webhook "validate-graph.validate.infergraph.dev"' in message
        or "denied the request" in message
    )
    assert "root" in message
    assert "missing" in message


def test_a_request_reaches_the_router_through_queue_proxy_and_the_predictors_by_dns(
    tier: Tier, iris: str, expected: dict[str, list[Any]]
) -> None:
    # Knative's own webhook admitted every Service the operator wrote, and its controller
    # reconciled each to a Revision whose pods run (router or model server + queue-proxy).
    for name in ("iris", "scaler", "classifier"):
        ksvc = get(tier, "ksvc", name)
        assert ready(ksvc), ksvc.get("status")
        assert ksvc["status"]["address"]["url"] == f"http://{name}.{NAMESPACE}.svc.cluster.local"
        pods = running_pods(tier, f"serving.knative.dev/service={name}")
        assert pods, f"no running pod for {name}"
        assert sorted(c.name for c in pods[0].spec.containers) == sorted(
            [pods[0].spec.containers[0].name, "queue-proxy"]
        )
    # The graph the router runs calls the predictors at their cluster DNS names.
    config_map = core(tier).read_namespaced_config_map("iris-graph", NAMESPACE)
    steps = json.loads(config_map.data["graph.json"])["spec"]["nodes"]["root"]["steps"]
    assert [s["serviceUrl"] for s in steps] == [
        f"http://scaler.{NAMESPACE}.svc.cluster.local/v1/models/scaler:predict",
        f"http://classifier.{NAMESPACE}.svc.cluster.local/v1/models/logistic:predict",
    ]
    # The router's revision Service (port 80) is its queue-proxy's port.
    answer = post(tier, f"http://{service_ip(tier, iris)}/", {"instances": ROWS})
    assert answer == {"predictions": expected["logistic"]}


def test_editing_the_graph_reaches_the_running_router_without_a_new_revision(
    tier: Tier, iris: str, expected: dict[str, list[Any]]
) -> None:
    create(
        tier,
        "predictors",
        "forest",
        {**iris_predictor("forest", minReplicas=1), "image": tier.image("predictor")},
    )
    wait_for(lambda: ready(get(tier, "predictors", "forest")), "forest Ready", 180, tier)
    wait_for(lambda: serving_directly(tier, "forest"), "forest's pods in its path")
    (router,) = running_pods(tier, "serving.knative.dev/service=iris")
    custom(tier).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        "inferencegraphs",
        "iris",
        {"spec": cluster.iris_graph(classifier="forest")},
    )
    url = f"http://{service_ip(tier, iris)}/"

    def answers_with_forest() -> bool:
        return bool(post(tier, url, {"instances": ROWS}) == {"predictions": expected["forest"]})

    # The forest and logistic models disagree on the third row (2 and 1), so the answer tells
    # which ran.
    assert expected["forest"] != expected["logistic"]
    wait_for(answers_with_forest, "the router to run the edited graph", 120)
    ksvc = get(tier, "ksvc", "iris")
    assert ksvc["status"]["latestReadyRevisionName"] == iris
    (same,) = running_pods(tier, "serving.knative.dev/service=iris")
    assert same.metadata.uid == router.metadata.uid
    assert same.status.container_statuses[0].restart_count == 0


def test_an_idle_predictor_scales_to_zero_and_the_activator_brings_it_back(
    tier: Tier, expected: dict[str, list[Any]]
) -> None:
    image = tier.image("predictor")
    create(
        tier, "predictors", "sleepy", {**iris_predictor("logistic", minReplicas=0), "image": image}
    )
    wait_for(lambda: ready(get(tier, "predictors", "sleepy")), "sleepy Ready", 180, tier)
    revision = get(tier, "ksvc", "sleepy")["status"]["latestReadyRevisionName"]
    # The autoscaler (config-autoscaler: 6 s stable window, 1 s grace) takes the idle
    # revision's pods away.
    started = time.monotonic()
    wait_for(
        lambda: (
            not core(tier)
            .list_namespaced_pod(
                NAMESPACE, label_selector=f"serving.knative.dev/revision={revision}"
            )
            .items
        ),
        "sleepy's pods to go away",
        180,
    )
    to_zero = time.monotonic() - started
    # Its Service now points at the activator, which holds the request until a pod is back. The
    # request names the revision in its Host header, as a caller of the revision's Service by
    # its cluster DNS name does (an ingress would set Knative's revision headers instead).
    zoo = ModelZoo.train()
    scaled = zoo.predict_v1("scaler", {"instances": ROWS})
    started = time.monotonic()
    answer = post(
        tier,
        f"http://{service_ip(tier, revision)}/v1/models/logistic:predict",
        {"instances": scaled},
        {"Host": f"{revision}.{NAMESPACE}.svc.cluster.local"},
    )
    cold_start = time.monotonic() - started
    tier.timings["scale to zero"] = to_zero
    tier.timings["cold start"] = cold_start
    print(f"cluster: scaled to zero in {to_zero:.1f} s; cold start {cold_start:.1f} s")
    assert answer == {"predictions": expected["logistic"]}
    # A new pod answered it (the idle autoscaler may already be taking it away again).
    pods = core(tier).list_namespaced_pod(
        NAMESPACE, label_selector=f"serving.knative.dev/revision={revision}"
    )
    assert [pod.metadata.name for pod in pods.items]


STANDARD = {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}}


def test_standard_mode_end_to_end_through_kube_proxy_and_coredns(
    tier: Tier, expected: dict[str, list[Any]]
) -> None:
    image = tier.image("predictor")
    for name, model in (("std-scaler", "scaler"), ("std-classifier", "logistic")):
        create(tier, "predictors", name, {**iris_predictor(model), "image": image}, **STANDARD)
    spec = cluster.iris_graph("std-scaler", "std-classifier")
    create(tier, "inferencegraphs", "std-iris", spec, **STANDARD)
    body = wait_for(
        lambda: ready(b := get(tier, "inferencegraphs", "std-iris")) and b,
        "std-iris Ready",
        240,
        tier,
    )
    assert body["status"]["url"] == f"http://std-iris.{NAMESPACE}.svc.cluster.local"
    # Deployments, Services and HPAs, no Knative Service.
    for name in ("std-iris", "std-scaler", "std-classifier"):
        deployment = apps(tier).read_namespaced_deployment(name, NAMESPACE)
        assert deployment.status.available_replicas >= 1
        with pytest.raises(client.ApiException) as missing:
            get(tier, "ksvc", name)
        assert missing.value.status == 404
    # The Service's ClusterIP (port 80, kube-proxy) to the router, which calls the predictors
    # at their Services' cluster DNS names (CoreDNS).
    # Deployments are Available as soon as a pod is ready; kube-proxy programs its Service's
    # new endpoints a moment later (its sync period is a second), so the first calls may be
    # refused: a short wait, then the answer.
    url = f"http://{service_ip(tier, 'std-iris')}/"
    body = json.dumps({"instances": ROWS}).encode()
    reply = wait_for(
        lambda: (r := tier.node.netns.http(url, body, timeout=30)).status == 200 and r,
        "the Standard-mode graph to answer",
        30,
        tier,
    )
    assert reply.json() == {"predictions": expected["logistic"]}
