"""kopf handlers: what the operator does when Predictors, InferenceGraphs and the Knative
Services it made change. The work itself is in ``reconcile``; this module only wires events."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes import client, config

from infergraph.operator import graphs
from infergraph.operator.knative import GRAPH_LABEL, MANAGED_BY, PREDICTOR_LABEL
from infergraph.operator.reconcile import OperatorSettings, Reconciler
from infergraph.operator.resources import GROUP, VERSION

log = logging.getLogger("infergraph.operator")
SETTINGS = OperatorSettings()
_reconciler: Reconciler | None = None


def configure(settings: OperatorSettings) -> None:
    global SETTINGS  # noqa: PLW0603 - set once, at start-up, before kopf runs handlers
    SETTINGS = settings


def reconciler() -> Reconciler:
    global _reconciler  # noqa: PLW0603 - one API client for the process, made on first use
    if _reconciler is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        _reconciler = Reconciler(client.ApiClient(), SETTINGS)
    return _reconciler


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 60


@kopf.on.resume(GROUP, VERSION, "predictors")
@kopf.on.create(GROUP, VERSION, "predictors")
@kopf.on.update(GROUP, VERSION, "predictors", field="spec")
def predictor_changed(body: kopf.Body, **_: Any) -> None:
    reconciler().reconcile_predictor(dict(body))
    refresh_graphs(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.delete(GROUP, VERSION, "predictors", optional=True)
def predictor_deleted(body: kopf.Body, **_: Any) -> None:
    refresh_graphs(body["metadata"]["namespace"], body["metadata"]["name"])


@kopf.on.resume(GROUP, VERSION, "inferencegraphs")
@kopf.on.create(GROUP, VERSION, "inferencegraphs")
@kopf.on.update(GROUP, VERSION, "inferencegraphs", field="spec")
def graph_changed(body: kopf.Body, **_: Any) -> None:
    reconciler().reconcile_graph(dict(body))


@kopf.on.event("serving.knative.dev", "v1", "services", labels=MANAGED_BY)
def knative_service_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
    labels = body["metadata"].get("labels") or {}
    namespace = body["metadata"]["namespace"]
    if type == "DELETED":
        return
    if PREDICTOR_LABEL in labels:
        name = labels[PREDICTOR_LABEL]
        reconciler().mirror_predictor(namespace, name)
        refresh_graphs(namespace, name)
    elif GRAPH_LABEL in labels:
        graph: Any = reconciler().custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencegraphs", labels[GRAPH_LABEL]
        )
        reconciler().reconcile_graph(graph)


def refresh_graphs(namespace: str, predictor: str) -> None:
    """A Predictor changed: re-resolve every graph that refers to it."""
    for graph in reconciler().graphs_referencing(namespace, predictor):
        reconciler().reconcile_graph(graph)


def validate_graph(spec: kopf.Spec, name: str | None, **_: Any) -> None:
    """The admission webhook: the same messages as ``infergraph validate``."""
    problems = graphs.problems(dict(spec), name or "graph")
    if problems:
        raise kopf.AdmissionError(
            "invalid graph:\n" + "\n".join(f"  - {p}" for p in problems), code=422
        )


def register_admission(server: kopf.WebhookServer) -> None:
    """Serve ``validate_graph`` as a validating webhook (kopf manages its configuration)."""

    @kopf.on.startup()
    def admission(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = server
        settings.admission.managed = f"validate.{GROUP}"

    kopf.on.validate(GROUP, VERSION, "inferencegraphs")(validate_graph)
