"""The operator's wiring into kopf: which handlers its registry holds (and the webhook only
when a server is configured), what its startup activities set, how handlers find the
Reconciler in kopf's memo, and what each resource event asks of it.

No API server: the Reconciler here records what it is asked instead of calling one.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any
from unittest import mock

import kopf
import pytest
from kubernetes import client

from infergraph.operator import handlers, main
from infergraph.operator.reconcile import OperatorSettings, Reconciler

PREDICTORS = "infergraph.dev/v1alpha1/predictors"
GRAPHS = "infergraph.dev/v1alpha1/inferencegraphs"
KSVCS = "serving.knative.dev/v1/services"


def resource_handlers(registry: kopf.OperatorRegistry) -> list[tuple[str, ...]]:
    """(kind of event, handler id, resource, and what else filters it) for every handler."""
    rows: list[tuple[str, ...]] = []
    for h in registry._changing.get_all_handlers():
        assert h.selector is not None
        event = "resume" if h.initial else str(h.reason.value if h.reason else None)
        field = ".".join(h.field) if h.field else ""
        optional = "optional" if h.requires_finalizer is False else ""
        selector = f"{h.selector.group}/{h.selector.version}/{h.selector.any_name}"
        rows.append((event, h.id, selector, field, optional))
    for w in registry._watching.get_all_handlers():
        assert w.selector is not None
        selector = f"{w.selector.group}/{w.selector.version}/{w.selector.any_name}"
        rows.append(("event", w.id, selector, repr(w.labels), ""))
    for v in registry._webhooks.get_all_handlers():
        assert v.selector is not None
        selector = f"{v.selector.group}/{v.selector.version}/{v.selector.any_name}"
        rows.append((str(v.reason.value), v.id, selector, "", ""))
    return sorted(rows)


def activities(registry: kopf.OperatorRegistry) -> list[tuple[str, str, str]]:
    return sorted(
        (str(a.activity.value if a.activity else None), a.id, a.errors.name if a.errors else "")
        for a in registry._activities.get_all_handlers()
    )


RESOURCE_HANDLERS = [
    ("create", "graph_changed", GRAPHS, "", ""),
    ("create", "predictor_changed", PREDICTORS, "", ""),
    ("delete", "graph_deleted", GRAPHS, "", ""),
    ("delete", "predictor_deleted", PREDICTORS, "", "optional"),
    (
        "event",
        "knative_service_changed",
        KSVCS,
        "{'app.kubernetes.io/managed-by': 'infergraph'}",
        "",
    ),
    (
        "event",
        "standard_deployment_changed",
        "apps/v1/deployments",
        "{'app.kubernetes.io/managed-by': 'infergraph', "
        "'infergraph.dev/deployment-mode': 'Standard'}",
        "",
    ),
    ("resume", "graph_changed", GRAPHS, "", ""),
    ("resume", "predictor_changed", PREDICTORS, "", ""),
    ("update", "graph_changed/metadata.annotations", GRAPHS, "metadata.annotations", ""),
    ("update", "graph_changed/spec", GRAPHS, "spec", ""),
    ("update", "predictor_changed/metadata.annotations", PREDICTORS, "metadata.annotations", ""),
    ("update", "predictor_changed/spec", PREDICTORS, "spec", ""),
]
ACTIVITIES = [
    ("authentication", "login_via_client", "IGNORED"),
    ("startup", "configure_kopf", ""),
    ("startup", "connect", "PERMANENT"),
]


def test_registry_without_admission() -> None:
    registry = handlers.build_registry(None)
    assert resource_handlers(registry) == RESOURCE_HANDLERS
    assert activities(registry) == ACTIVITIES


def test_registry_with_admission() -> None:
    registry = handlers.build_registry(kopf.WebhookServer(port=9443))
    assert resource_handlers(registry) == sorted(
        [*RESOURCE_HANDLERS, ("validating", "validate-graph", GRAPHS, "", "")]
    )
    assert activities(registry) == sorted([*ACTIVITIES, ("startup", "serve_admission", "")])


def test_each_registry_is_its_own() -> None:
    """Nothing is registered on kopf's default registry, nor shared between two builds."""
    first, second = handlers.build_registry(None), handlers.build_registry(None)
    assert first is not second
    assert resource_handlers(first) == resource_handlers(second)
    with_webhook = handlers.build_registry(kopf.WebhookServer(port=9443))
    assert not first._webhooks.get_all_handlers()
    assert with_webhook._webhooks.get_all_handlers()


def test_configure_kopf() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure_kopf(settings=settings)
    assert settings.persistence.finalizer == "infergraph.dev/finalizer"
    assert settings.posting.level == logging.WARNING
    assert settings.watching.server_timeout == 60


def test_serve_admission() -> None:
    server = kopf.WebhookServer(port=9443, host="127.0.0.1")
    settings = kopf.OperatorSettings()
    handlers.serve_admission(server, settings=settings)
    assert settings.admission.server is server
    assert settings.admission.managed == "validate.infergraph.dev"


def graph_spec(nodes: dict[str, Any]) -> kopf.Spec:
    return kopf.Body({"metadata": {"name": "g"}, "spec": {"nodes": nodes}}).spec


def test_validate_graph_refuses_with_every_problem() -> None:
    spec = graph_spec({"main": {"routerType": "Sequence", "steps": [{"nodeName": "ghost"}]}})
    with pytest.raises(kopf.AdmissionError) as caught:
        handlers.validate_graph(spec=spec, name="broken")
    assert caught.value.code == 422
    assert str(caught.value) == (
        "invalid graph:\n"
        "  - the graph has no node named 'root' (nodes: main)\n"
        "  - node 'main', step 0: nodeName 'ghost' is not a node of this graph"
    )


def test_validate_graph_refuses_a_name_its_labels_cannot_hold() -> None:
    """A name of 59 characters or more passed: the ConfigMap and Standard mode's pods carry it
    in label values, which Kubernetes holds to 63 characters, and every reconcile then failed
    without a word in the graph's status. 58 characters (app: isvc.<58>) still fit."""
    spec = graph_spec({"root": {"routerType": "Sequence", "steps": [{"serviceName": "later"}]}})
    handlers.validate_graph(spec=spec, name="g" * 58)
    with pytest.raises(kopf.AdmissionError) as caught:
        handlers.validate_graph(spec=spec, name="g" * 59)
    assert caught.value.code == 422
    assert "the name is 59 characters, over 58" in str(caught.value)


def test_validate_graph_refuses_a_spec_too_deep_to_read_with_a_reason() -> None:
    """A request template nested 600 levels deep ran copy.deepcopy out of stack: the webhook
    denied it with code 500 and "maximum recursion depth exceeded", and without the webhook
    every reconcile failed. Now it is an invalid graph, 422 with the reason."""
    template: Any = "$request"
    for _ in range(600):
        template = {"x": template}
    step = {"serviceName": "later", "request": template}
    spec = graph_spec({"root": {"routerType": "Sequence", "steps": [step]}})
    with pytest.raises(kopf.AdmissionError) as caught:
        handlers.validate_graph(spec=spec, name="deep")
    assert caught.value.code == 422
    assert "the spec nests over 100 levels deep" in str(caught.value)


@pytest.mark.parametrize("name", ["fine", None])
def test_validate_graph_admits_a_valid_graph(name: str | None) -> None:
    spec = graph_spec({"root": {"routerType": "Sequence", "steps": [{"serviceName": "later"}]}})
    handlers.validate_graph(spec=spec, name=name)


class RecordingReconciler(Reconciler):
    """A Reconciler that records what handlers ask of it (and makes no API call)."""

    def __init__(self) -> None:
        super().__init__(client.ApiClient(client.Configuration()), OperatorSettings())
        self.calls: list[tuple[str, ...]] = []

    def reconcile_predictor(self, body: dict[str, Any]) -> None:
        self.calls.append(("reconcile_predictor", body["metadata"]["name"]))

    def mirror_predictor(self, namespace: str, name: str, extra: list[str] | None = None) -> None:
        self.calls.append(("mirror_predictor", namespace, name))

    def refresh_graphs(self, namespace: str, predictor: str) -> None:
        self.calls.append(("refresh_graphs", namespace, predictor))

    def graph(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("graph", namespace, name))
        return {"metadata": {"name": name, "namespace": namespace}, "spec": {}}

    def reconcile_graph(self, body: dict[str, Any]) -> None:
        self.calls.append(("reconcile_graph", body["metadata"]["name"]))


def memo_with(reconciler: Reconciler) -> kopf.Memo:
    memo = handlers.new_memo(reconciler.settings)
    memo[handlers.RECONCILER] = reconciler
    return copy.copy(memo)  # as kopf hands each object its own copy of the operator's memo


def body(kind: str, name: str, labels: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body(
        {"kind": kind, "metadata": {"name": name, "namespace": "models", "labels": labels or {}}}
    )


def test_predictor_changed_reconciles_it_then_its_graphs() -> None:
    reconciler = RecordingReconciler()
    handlers.predictor_changed(body=body("Predictor", "scaler"), memo=memo_with(reconciler))
    assert reconciler.calls == [
        ("reconcile_predictor", "scaler"),
        ("refresh_graphs", "models", "scaler"),
    ]


def test_predictor_deleted_refreshes_its_graphs() -> None:
    reconciler = RecordingReconciler()
    handlers.predictor_deleted(body=body("Predictor", "scaler"), memo=memo_with(reconciler))
    assert reconciler.calls == [("refresh_graphs", "models", "scaler")]


def test_graph_changed_reconciles_it() -> None:
    reconciler = RecordingReconciler()
    handlers.graph_changed(body=body("InferenceGraph", "iris"), memo=memo_with(reconciler))
    assert reconciler.calls == [("reconcile_graph", "iris")]


KSVC_EVENTS: list[tuple[str, str | None, dict[str, str], list[tuple[str, ...]]]] = [
    (
        "a Predictor's service changed: mirror its status, refresh its graphs",
        "MODIFIED",
        {"infergraph.dev/predictor": "scaler"},
        [("mirror_predictor", "models", "scaler"), ("refresh_graphs", "models", "scaler")],
    ),
    (
        "listed at start (no event type)",
        None,
        {"infergraph.dev/predictor": "scaler"},
        [("mirror_predictor", "models", "scaler"), ("refresh_graphs", "models", "scaler")],
    ),
    (
        "a router's service changed: reconcile its graph",
        "ADDED",
        {"infergraph.dev/graph": "iris"},
        [("graph", "models", "iris"), ("reconcile_graph", "iris")],
    ),
    ("deleted: nothing to do", "DELETED", {"infergraph.dev/predictor": "scaler"}, []),
    ("neither label: nothing to do", "MODIFIED", {}, []),
]


@pytest.mark.parametrize(
    ("event", "labels", "calls"), [c[1:] for c in KSVC_EVENTS], ids=[c[0] for c in KSVC_EVENTS]
)
def test_knative_service_changed(
    event: str | None, labels: dict[str, str], calls: list[tuple[str, ...]]
) -> None:
    reconciler = RecordingReconciler()
    labels = {"app.kubernetes.io/managed-by": "infergraph", **labels}
    service = body("Service", "scaler", labels)
    handlers.knative_service_changed(body=service, type=event, memo=memo_with(reconciler))
    assert reconciler.calls == calls


def test_memo_carries_the_settings() -> None:
    settings = OperatorSettings(router_image="infergraph/router:test", otlp_endpoint="http://o")
    memo = handlers.new_memo(settings)
    assert handlers.settings_of(memo) is settings
    assert handlers.settings_of(copy.copy(memo)) is settings


def test_every_object_shares_the_one_reconciler() -> None:
    reconciler = RecordingReconciler()
    memo = handlers.new_memo(reconciler.settings)
    memo[handlers.RECONCILER] = reconciler
    first, second = copy.copy(memo), copy.copy(memo)
    assert handlers.reconciler_of(first) is handlers.reconciler_of(second) is reconciler


def test_handlers_need_connect_to_have_run() -> None:
    memo = handlers.new_memo(OperatorSettings())
    with pytest.raises(TypeError, match="the memo has no Reconciler"):
        handlers.reconciler_of(memo)
    with pytest.raises(TypeError, match="the memo has no OperatorSettings"):
        handlers.settings_of(kopf.Memo())


def test_no_webhook_server_without_a_port() -> None:
    assert main.webhook_server(port=None, host="127.0.0.1", cert="c.pem", key="k.pem") is None


def test_webhook_server_from_flags() -> None:
    server = main.webhook_server(
        port=9443, host="127.0.0.1", addr="0.0.0.0", cert="tls.crt", key="tls.key"
    )
    assert server is not None
    assert (server.port, server.host, server.addr, server.certfile, server.pkeyfile) == (
        9443,
        "127.0.0.1",
        "0.0.0.0",
        "tls.crt",
        "tls.key",
    )


def test_webhook_registered_as_a_service_reference() -> None:
    """In a cluster the API server reaches the operator through its Service: kopf registers a
    ``service`` client config (port 443, kopf's path), not a URL the API server cannot resolve."""
    server = main.webhook_server(
        port=0, addr="127.0.0.1", service="infergraph-system/infergraph-operator"
    )
    assert isinstance(server, main.ServiceWebhookServer)

    async def first_config() -> Any:
        configs = server.__call__(lambda *_: None)
        try:
            return await anext(configs)
        finally:
            await configs.aclose()

    with mock.patch.object(kopf.WebhookServer, "_build_ssl", return_value=(b"PEM", None)):
        config = asyncio.run(first_config())
    assert "url" not in config
    assert config["service"] == {
        "namespace": "infergraph-system",
        "name": "infergraph-operator",
        "port": 443,
        "path": "",
    }


def test_webhook_service_must_name_namespace_and_service() -> None:
    with pytest.raises(ValueError, match="NAMESPACE/NAME"):
        main.webhook_server(port=9443, service="infergraph-operator")


def test_the_operators_identity_needs_no_user_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image runs as uid 65532, which /etc/passwd does not know (OpenShift's random uids
    neither): kopf's default identity (getpass.getuser) raised KeyError and the pod crashed."""

    def no_such_user(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr("pwd.getpwuid", no_such_user)
    assert main.identity(None).startswith("uid")
    assert main.identity("infergraph-operator-7d9f-abcde") == "infergraph-operator-7d9f-abcde"
