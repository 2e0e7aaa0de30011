"""kopf handlers: what the operator does when Predictors, InferenceGraphs and the Knative
Services it made change. The work itself is in ``reconcile``; this module only wires events.

Nothing here is global: ``build_registry`` registers the handlers on a registry of their own,
which ``main`` hands to ``kopf.operator`` together with a memo from ``new_memo``. The memo
carries the operator's settings; the ``connect`` startup handler adds the ``Reconciler`` (one
API client for the process) before any resource handler runs, and every handler takes it from
the memo kopf passes in (kopf gives each object a shallow copy of that memo, so all share the
one ``Reconciler``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import kopf
from kubernetes import client, config

from infergraph.operator import graphs
from infergraph.operator.knative import GRAPH_LABEL, MANAGED_BY, PREDICTOR_LABEL
from infergraph.operator.reconcile import OperatorSettings, Reconciler
from infergraph.operator.resources import GROUP, VERSION
from infergraph.operator.standard import MODE_LABEL

FINALIZER = f"{GROUP}/finalizer"
WEBHOOK_CONFIGURATION = f"validate.{GROUP}"
# The memo's keys.
SETTINGS = "settings"
RECONCILER = "reconciler"


def new_memo(settings: OperatorSettings) -> kopf.Memo:
    """The memo the operator starts with: its settings (``connect`` adds the Reconciler)."""
    memo = kopf.Memo()
    memo[SETTINGS] = settings
    return memo


def settings_of(memo: kopf.Memo) -> OperatorSettings:
    settings = memo.get(SETTINGS)
    if not isinstance(settings, OperatorSettings):
        raise TypeError(f"the memo has no OperatorSettings (got {settings!r}): see new_memo")
    return settings


def reconciler_of(memo: kopf.Memo) -> Reconciler:
    reconciler = memo.get(RECONCILER)
    if not isinstance(reconciler, Reconciler):
        raise TypeError(f"the memo has no Reconciler (got {reconciler!r}): see connect")
    return reconciler


def api_client() -> client.ApiClient:
    """A client for the cluster the operator runs in, or else the one kubeconfig names."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


# Activities.
def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60


def connect(memo: kopf.Memo, **_: Any) -> None:
    """Put the process's one Reconciler in the memo, before any resource handler runs."""
    memo[RECONCILER] = Reconciler(api_client(), settings_of(memo))


def serve_admission(server: kopf.WebhookServer, settings: kopf.OperatorSettings, **_: Any) -> None:
    """Serve the webhooks with ``server``; kopf manages their validating configuration."""
    settings.admission.server = server
    settings.admission.managed = WEBHOOK_CONFIGURATION


# Resources.
def predictor_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler = reconciler_of(memo)
    reconciler.reconcile_predictor(dict(body))
    reconciler.refresh_graphs(body["metadata"]["namespace"], body["metadata"]["name"])


def predictor_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler_of(memo).refresh_graphs(body["metadata"]["namespace"], body["metadata"]["name"])


def graph_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler_of(memo).reconcile_graph(dict(body))


def graph_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The one object of a graph that its deletion does not take along: the cluster-scoped
    binding of its router (owned objects go with the graph)."""
    meta = body["metadata"]
    reconciler_of(memo).delete_access(meta["namespace"], meta["name"])


def standard_deployment_changed(
    body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A Standard-mode Deployment changed: its availability is its graph's or Predictor's,
    as a Knative Service's readiness is in Serverless mode."""
    knative_service_changed(body, type, memo)


def knative_service_changed(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    labels = body["metadata"].get("labels") or {}
    namespace = body["metadata"]["namespace"]
    if type == "DELETED":
        return
    reconciler = reconciler_of(memo)
    if PREDICTOR_LABEL in labels:
        name = labels[PREDICTOR_LABEL]
        reconciler.mirror_predictor(namespace, name)
        reconciler.refresh_graphs(namespace, name)
    elif GRAPH_LABEL in labels:
        reconciler.reconcile_graph(reconciler.graph(namespace, labels[GRAPH_LABEL]))


# Admission.
def validate_graph(spec: kopf.Spec, name: str | None, **_: Any) -> None:
    """The admission webhook: the same messages as ``infergraph validate``."""
    problems = graphs.problems(dict(spec), name or "graph")
    if problems:
        raise kopf.AdmissionError(graphs.invalid_graph_message(problems), code=422)


def build_registry(admission: kopf.WebhookServer | None = None) -> kopf.OperatorRegistry:
    """The operator's handlers; with ``admission``, also the validating webhook it serves."""
    registry = kopf.OperatorRegistry()
    # kopf's default registry logs in with the Kubernetes client library; so does this one.
    kopf.on.login(registry=registry, id="login_via_client", errors=kopf.ErrorsMode.IGNORED)(
        kopf.login_via_client
    )
    kopf.on.startup(registry=registry)(configure_kopf)
    # Without an API client there is nothing to do: stop the operator rather than retry.
    kopf.on.startup(registry=registry, errors=kopf.ErrorsMode.PERMANENT)(connect)

    predictors = (GROUP, VERSION, "predictors")
    kopf.on.resume(*predictors, registry=registry)(predictor_changed)
    kopf.on.create(*predictors, registry=registry)(predictor_changed)
    kopf.on.update(*predictors, registry=registry, field="spec")(predictor_changed)
    kopf.on.update(*predictors, registry=registry, field="metadata.annotations")(predictor_changed)
    kopf.on.delete(*predictors, registry=registry, optional=True)(predictor_deleted)

    inference_graphs = (GROUP, VERSION, "inferencegraphs")
    kopf.on.resume(*inference_graphs, registry=registry)(graph_changed)
    kopf.on.create(*inference_graphs, registry=registry)(graph_changed)
    kopf.on.update(*inference_graphs, registry=registry, field="spec")(graph_changed)
    # Not optional: kopf's finalizer holds the graph until its binding is gone.
    kopf.on.delete(*inference_graphs, registry=registry)(graph_deleted)
    # KServe's deployment-mode and autoscaler-class annotations choose what the graph becomes.
    kopf.on.update(*inference_graphs, registry=registry, field="metadata.annotations")(
        graph_changed
    )

    kopf.on.event("serving.knative.dev", "v1", "services", registry=registry, labels=MANAGED_BY)(
        knative_service_changed
    )
    # Only the Deployments made for Standard mode (not Knative's revision Deployments).
    standard_mode = {**MANAGED_BY, MODE_LABEL: "Standard"}
    kopf.on.event("apps", "v1", "deployments", registry=registry, labels=standard_mode)(
        standard_deployment_changed
    )

    if admission is not None:
        kopf.on.startup(registry=registry, id="serve_admission")(
            functools.partial(serve_admission, admission)
        )
        # The id is the webhook's path: a Service reference allows only RFC 1123 segments.
        kopf.on.validate(*inference_graphs, id="validate-graph", registry=registry)(validate_graph)
    return registry
