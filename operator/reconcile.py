"""Reconciliation against the API server: Predictors to Knative Services, InferenceGraphs to a
ConfigMap plus a router Knative Service, and status mirrored back.

Objects are written with server-side apply under one field manager, so every handler is
idempotent and repeated calls converge; conflicts with other managers are forced in our favour
only for the fields we own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from infergraph.operator import graphs, knative
from infergraph.operator.resources import (
    API_VERSION,
    GROUP,
    VERSION,
    Endpoint,
    InferenceGraphSpec,
    PredictorSpec,
)

log = logging.getLogger("infergraph.operator")
MANAGER = "infergraph-operator"
APPLY = "application/apply-patch+yaml"
KSVC = ("serving.knative.dev", "v1", "services")


@dataclass(frozen=True)
class OperatorSettings:
    router_image: str = knative.ROUTER_IMAGE
    otlp_endpoint: str | None = None


def condition(status: bool | None, reason: str, message: str = "") -> dict[str, Any]:
    value = "Unknown" if status is None else ("True" if status else "False")
    return {
        "type": "Ready",
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def ksvc_ready(service: dict[str, Any] | None) -> tuple[bool, str | None, str]:
    """(ready, url, message) from a Knative Service's status."""
    if service is None:
        return False, None, "the Knative Service does not exist yet"
    status = service.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
            return ready, status.get("url"), cond.get("message") or cond.get("reason") or ""
    return False, status.get("url"), "the Knative Service has not reported readiness yet"


class Reconciler:
    def __init__(self, api: client.ApiClient, settings: OperatorSettings) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.settings = settings

    # reading
    def _get_custom(self, group: str, version: str, plural: str, ns: str, name: str) -> Any:
        try:
            return self.custom.get_namespaced_custom_object(group, version, ns, plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def ksvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._get_custom(*KSVC, namespace, name)
        return result

    def predictor(self, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self._get_custom(
            GROUP, VERSION, "predictors", namespace, name
        )
        return result

    # writing
    def apply_ksvc(self, service: dict[str, Any]) -> None:
        meta = service["metadata"]
        self.custom.patch_namespaced_custom_object(
            *KSVC[:2],
            meta["namespace"],
            KSVC[2],
            meta["name"],
            service,
            field_manager=MANAGER,
            force=True,
            _content_type=APPLY,
        )

    def set_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise

    # predictors
    def reconcile_predictor(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        spec = PredictorSpec.model_validate(body.get("spec") or {})
        existing = self.ksvc(namespace, name)
        previous = None
        if existing is not None:
            previous = (existing.get("status") or {}).get("latestReadyRevisionName")
        service = knative.predictor_service(
            name, namespace, spec, owner_reference(body), previous_revision=previous
        )
        errors, warnings = knative.knative_problems(service)
        if errors:
            self.set_status(
                "predictors",
                namespace,
                name,
                {"conditions": [condition(False, "InvalidPredictor", "; ".join(errors))]},
            )
            return
        self.apply_ksvc(service)
        self.mirror_predictor(namespace, name, extra=warnings)

    def mirror_predictor(self, namespace: str, name: str, extra: list[str] | None = None) -> None:
        body = self.predictor(namespace, name)
        if body is None:
            return
        spec = PredictorSpec.model_validate(body.get("spec") or {})
        ready, url, message = ksvc_ready(self.ksvc(namespace, name))
        status: dict[str, Any] = {"url": url}
        if url:
            endpoint_url, protocol = knative.inference_endpoint(url, spec)
            status["endpoint"] = Endpoint(
                url=endpoint_url, protocol=protocol, model=spec.model.name
            ).model_dump(mode="json", exclude_none=True)
        message = "; ".join([m for m in [message, *(extra or [])] if m])
        reason = "Ready" if ready else "KnativeServiceNotReady"
        status["conditions"] = [condition(ready, reason, message)]
        self.set_status("predictors", namespace, name, status)

    # graphs
    def graphs_referencing(self, namespace: str, predictor: str) -> list[dict[str, Any]]:
        listing: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencegraphs"
        )
        return [
            g
            for g in listing.get("items", [])
            if predictor in graphs.referenced_predictors(g.get("spec") or {})
        ]

    def reconcile_graph(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        spec = body.get("spec") or {}
        problems = graphs.problems(spec, name)
        if problems:
            message = "invalid graph:\n" + "\n".join(f"  - {p}" for p in problems)
            status = {"conditions": [condition(False, "InvalidGraph", message)]}
            self.set_status("inferencegraphs", namespace, name, status)
            return
        endpoints: dict[str, Endpoint] = {}
        missing, not_ready = [], []
        referenced = sorted(graphs.referenced_predictors(spec))
        for predictor_name in referenced:
            predictor = self.predictor(namespace, predictor_name)
            if predictor is None:
                missing.append(predictor_name)
                continue
            pstatus = predictor.get("status") or {}
            if pstatus.get("endpoint"):
                endpoints[predictor_name] = Endpoint.model_validate(pstatus["endpoint"])
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in pstatus.get("conditions") or []
            )
            if not ready or predictor_name not in endpoints:
                not_ready.append(predictor_name)
        unresolved = [p for p in referenced if p not in endpoints]
        if unresolved:
            message = f"Predictors without an endpoint yet: {', '.join(unresolved)}"
            if missing:
                message = f"Predictors not found: {', '.join(missing)}"
            self.set_status(
                "inferencegraphs",
                namespace,
                name,
                {"conditions": [condition(False, "PredictorsNotReady", message)]},
            )
            return
        resolved = graphs.resolve(spec, endpoints)
        document = {
            "apiVersion": API_VERSION,
            "kind": "InferenceGraph",
            "metadata": {"name": name, "namespace": namespace},
            "spec": resolved,
        }
        config_name = f"{name}-graph"
        owner = owner_reference(body)
        self.core.patch_namespaced_config_map(
            config_name,
            namespace,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": config_name,
                    "namespace": namespace,
                    "labels": {**knative.MANAGED_BY, knative.GRAPH_LABEL: name},
                    "ownerReferences": [owner],
                },
                "data": {knative.GRAPH_FILE: json.dumps(document, indent=2, sort_keys=True)},
            },
            field_manager=MANAGER,
            force=True,
            _content_type=APPLY,
        )
        env = {}
        if self.settings.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.settings.otlp_endpoint
        settings = InferenceGraphSpec.model_validate(spec)
        service = knative.router_service(
            name,
            namespace,
            config_name,
            settings,
            owner,
            image=self.settings.router_image,
            timeout=settings.timeout,
            service_account=settings.service_account_name,
            affinity=settings.affinity,
            env=env,
        )
        self.apply_ksvc(service)
        self.mirror_graph(namespace, name, not_ready)

    def mirror_graph(self, namespace: str, name: str, not_ready: list[str]) -> None:
        ready, url, message = ksvc_ready(self.ksvc(namespace, name))
        reasons = []
        if not ready:
            reasons.append(f"router: {message}")
        if not_ready:
            reasons.append(f"Predictors not ready: {', '.join(not_ready)}")
        overall = ready and not not_ready
        status = {
            "url": url,
            "conditions": [
                condition(overall, "Ready" if overall else "NotReady", "; ".join(reasons))
            ],
        }
        self.set_status("inferencegraphs", namespace, name, status)
