"""Reconciliation against the API server: Predictors to Knative Services, InferenceGraphs to a
ConfigMap plus a router Knative Service, and status mirrored back.

Objects are written with server-side apply under one field manager, so every handler is
idempotent and repeated calls converge; conflicts with other managers are forced in our favour
only for the fields we own.

What a status says is decided by pure functions (``predictor_status``, ``graph_status``,
``predictor_readiness`` ...) from the objects read; ``Reconciler`` only reads and writes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from infergraph.operator import access, graphs, knative, standard
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
    """What the operator puts in the routers it deploys (from its command line)."""

    router_image: str = knative.ROUTER_IMAGE
    otlp_endpoint: str | None = None
    # For objects without KServe's deployment-mode annotation (KServe's
    # deploy.defaultDeploymentMode).
    default_mode: standard.DeploymentMode = "Serverless"

    def router_env(self) -> dict[str, str]:
        """The environment of every graph router."""
        env = {}
        if self.otlp_endpoint:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        return env


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


def is_ready(body: dict[str, Any]) -> bool:
    """Whether an object's status has a Ready condition that is True."""
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (body.get("status") or {}).get("conditions") or []
    )


def admission_refusal(exc: ApiException) -> str | None:
    """The message of an admission webhook that refused an object (Knative's, for a Service our
    own checks let through), or None for any other failure, which is retried."""
    if exc.status not in (400, 422):
        return None
    try:
        message = str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        return None
    return message if "admission webhook" in message else None


def invalid_predictor_status(errors: list[str]) -> dict[str, Any]:
    """A Predictor whose Knative Service Knative would refuse (nothing is applied)."""
    return {"conditions": [condition(False, "InvalidPredictor", "; ".join(errors))]}


def predictor_status(
    spec: PredictorSpec,
    service: dict[str, Any] | None,
    extra: list[str] | None = None,
    server: tuple[bool, str | None, str] | None = None,
) -> dict[str, Any]:
    """A Predictor's status from its Knative Service: URL, inference endpoint, readiness.

    ``extra`` are messages appended to the condition's (warnings about the manifest);
    ``server`` is (ready, url, message) when it is not a Knative Service (Standard mode).
    """
    ready, url, message = server if server is not None else ksvc_ready(service)
    status: dict[str, Any] = {"url": url}
    # Routers call a Predictor from inside the cluster: at Knative's cluster-local address
    # (status.address.url, http://<name>.<namespace>.svc.cluster.local), as KServe's graphs do;
    # status.url is the public one (<name>.<namespace>.example.com by default).
    address = ((service or {}).get("status") or {}).get("address", {}).get("url") or url
    if address:
        endpoint_url, protocol = knative.inference_endpoint(address, spec)
        status["endpoint"] = Endpoint(
            url=endpoint_url, protocol=protocol, model=spec.model.name
        ).model_dump(mode="json", exclude_none=True)
    message = "; ".join([m for m in [message, *(extra or [])] if m])
    reason = "Ready" if ready else ("NotReady" if server is not None else "KnativeServiceNotReady")
    status["conditions"] = [condition(ready, reason, message)]
    return status


@dataclass(frozen=True)
class PredictorReadiness:
    """Where a graph's Predictors stand, each list in the order the Predictors were given."""

    endpoints: dict[str, Endpoint]
    missing: list[str]  # no such Predictor
    unresolved: list[str]  # no endpoint yet (missing ones included): the graph cannot deploy
    not_ready: list[str]  # not Ready, or no endpoint: the graph deploys, and is not Ready


def predictor_readiness(predictors: Mapping[str, dict[str, Any] | None]) -> PredictorReadiness:
    """From each referenced Predictor's object (None: not found): endpoints and what is lacking."""
    endpoints: dict[str, Endpoint] = {}
    missing, not_ready = [], []
    for name, predictor in predictors.items():
        if predictor is None:
            missing.append(name)
            continue
        endpoint = (predictor.get("status") or {}).get("endpoint")
        if endpoint:
            endpoints[name] = Endpoint.model_validate(endpoint)
        if not is_ready(predictor) or name not in endpoints:
            not_ready.append(name)
    unresolved = [name for name in predictors if name not in endpoints]
    return PredictorReadiness(endpoints, missing, unresolved, not_ready)


def invalid_graph_status(problems: list[str]) -> dict[str, Any]:
    """A graph that does not compile (nothing is deployed), with every problem named."""
    return {
        "conditions": [condition(False, "InvalidGraph", graphs.invalid_graph_message(problems))]
    }


def unresolved_graph_status(readiness: PredictorReadiness) -> dict[str, Any] | None:
    """The status of a graph that cannot be deployed yet, or None when every step resolves."""
    if not readiness.unresolved:
        return None
    message = f"Predictors without an endpoint yet: {', '.join(readiness.unresolved)}"
    if readiness.missing:
        message = f"Predictors not found: {', '.join(readiness.missing)}"
    return {"conditions": [condition(False, "PredictorsNotReady", message)]}


def graph_status(
    service: dict[str, Any] | None,
    not_ready: list[str],
    router: tuple[bool, str | None, str] | None = None,
) -> dict[str, Any]:
    """A deployed graph's status: Ready when its router and all its Predictors are.

    ``router`` is (ready, url, message) when it is not a Knative Service (Standard mode)."""
    ready, url, message = router if router is not None else ksvc_ready(service)
    reasons = []
    if not ready:
        reasons.append(f"router: {message}")
    if not_ready:
        reasons.append(f"Predictors not ready: {', '.join(not_ready)}")
    overall = ready and not not_ready
    return {
        "url": url,
        "conditions": [condition(overall, "Ready" if overall else "NotReady", "; ".join(reasons))],
    }


def grpc_address(url: str | None) -> str | None:
    """A Knative URL (``http://host``) as the address gRPC clients dial (``grpc://host:80``)."""
    if not url:
        return None
    host = url.split("://", 1)[-1].rstrip("/")
    return f"grpc://{host}:{443 if url.startswith('https') else 80}"


def graph_config_map(
    name: str, namespace: str, resolved: dict[str, Any], owner: dict[str, Any]
) -> dict[str, Any]:
    """The ConfigMap the graph's router reads: the graph with every step's URL filled in."""
    document = {
        "apiVersion": API_VERSION,
        "kind": "InferenceGraph",
        "metadata": {"name": name, "namespace": namespace},
        "spec": resolved,
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(name),
            "namespace": namespace,
            "labels": {**knative.MANAGED_BY, knative.GRAPH_LABEL: name},
            "ownerReferences": [owner],
        },
        "data": {knative.GRAPH_FILE: json.dumps(document, indent=2, sort_keys=True)},
    }


# Annotations of ours and of tools that are not copied from a graph onto its objects.
_NOT_COPIED = ("kopf.zalando.org/", "kubectl.kubernetes.io/")


def copied_metadata(body: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """The graph's labels and annotations, as KServe copies them onto Standard-mode objects."""
    meta = body.get("metadata") or {}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(_NOT_COPIED)
    }
    return dict(meta.get("labels") or {}), annotations


def config_map_name(graph: str) -> str:
    """The name of the ConfigMap holding the resolved graph ``graph``."""
    return f"{graph}-graph"


class Reconciler:
    def __init__(self, api: client.ApiClient, settings: OperatorSettings) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
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

    def graph(self, namespace: str, name: str) -> dict[str, Any]:
        """An InferenceGraph (an ``ApiException`` when there is none)."""
        body = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, "inferencegraphs", name
        )
        return cast("dict[str, Any]", body)

    def deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read(self.apps.read_namespaced_deployment, namespace, name)

    # writing
    def apply(self, manifest: dict[str, Any]) -> None:
        """Server-side apply of a Deployment, Service or HPA."""
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        options: dict[str, Any] = {"field_manager": MANAGER, "force": True, "_content_type": APPLY}
        kind = manifest["kind"]
        if kind == "Deployment":
            self.apps.patch_namespaced_deployment(name, namespace, manifest, **options)
        elif kind == "Service":
            self.core.patch_namespaced_service(name, namespace, manifest, **options)
        elif kind == "HorizontalPodAutoscaler":
            self.autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                name, namespace, manifest, **options
            )
        else:
            raise ValueError(f"cannot apply a {kind}")

    def apply_standard(
        self, deployment: dict[str, Any], service: dict[str, Any], hpa: dict[str, Any] | None
    ) -> None:
        """Standard mode's objects for a graph or Predictor: the Deployment, the Service, the
        HPA (or none, deleting one made before), and no Knative Service (the object may have
        left Serverless mode)."""
        meta = deployment["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self.apply(deployment)
        self.apply(service)
        if hpa is not None:
            self.apply(hpa)
        else:
            self.delete_ours("HorizontalPodAutoscaler", namespace, name)
        self.delete_ours("ksvc", namespace, name)

    def apply_access(
        self, namespace: str, graph: str, named: str | None, owner: dict[str, Any], auth: bool
    ) -> str | None:
        """The router's ServiceAccount (made when the graph names none) and its binding to
        ``system:auth-delegator`` when the graph checks its callers; the account to run as."""
        if not auth:
            self.delete_access(namespace, graph)
            return named
        account = access.router_account(graph, named)
        options: dict[str, Any] = {"field_manager": MANAGER, "force": True, "_content_type": APPLY}
        if named is None:
            manifest = access.service_account(account, namespace, graph, owner)
            self.core.patch_namespaced_service_account(account, namespace, manifest, **options)
        binding = access.auth_delegator_binding(namespace, graph, account)
        self.rbac.patch_cluster_role_binding(binding["metadata"]["name"], binding, **options)
        return account

    def delete_access(self, namespace: str, graph: str) -> None:
        """Remove the graph's auth-delegator binding, if this operator made one."""
        name = access.binding_name(namespace, graph)
        try:
            found = self.rbac.read_cluster_role_binding(name)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        labels = (found.metadata.labels if found.metadata is not None else None) or {}
        if (
            labels.get(access.NAMESPACE_LABEL) == namespace
            and labels.get(knative.GRAPH_LABEL) == graph
        ):
            try:
                self.rbac.delete_cluster_role_binding(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def leave_standard(self, namespace: str, name: str) -> None:
        """Delete the Standard-mode objects of a graph or Predictor now in Serverless mode."""
        for kind in ("HorizontalPodAutoscaler", "Service", "Deployment"):
            self.delete_ours(kind, namespace, name)

    def delete_ours(
        self, kind: str, namespace: str, name: str, owner_name: str | None = None
    ) -> None:
        """Delete an object this operator made for a graph or Predictor (it carries that
        label, naming ``owner_name``, by default the object's own name); a missing one, or one
        someone else made, is left alone."""
        readers = {
            "ksvc": lambda: self.ksvc(namespace, name),
            "Deployment": lambda: self.deployment(namespace, name),
            "Service": lambda: self._read(self.core.read_namespaced_service, namespace, name),
            "HorizontalPodAutoscaler": lambda: self._read(
                self.autoscaling.read_namespaced_horizontal_pod_autoscaler, namespace, name
            ),
        }
        found = readers[kind]()
        labels = ((found or {}).get("metadata") or {}).get("labels") or {}
        owned = owner_name or name
        if owned not in (labels.get(knative.GRAPH_LABEL), labels.get(knative.PREDICTOR_LABEL)):
            return
        try:
            if kind == "ksvc":
                self.custom.delete_namespaced_custom_object(*KSVC[:2], namespace, KSVC[2], name)
            elif kind == "Deployment":
                self.apps.delete_namespaced_deployment(name, namespace)
            elif kind == "Service":
                self.core.delete_namespaced_service(name, namespace)
            else:
                self.autoscaling.delete_namespaced_horizontal_pod_autoscaler(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _read(self, read: Any, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found = read(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: dict[str, Any] = self.core.api_client.sanitize_for_serialization(found)
        return result

    def apply_ksvc(self, service: dict[str, Any]) -> str | None:
        """Apply a Knative Service; the message of the admission webhook that refused it, if one
        did (other failures raise, and kopf retries)."""
        meta = service["metadata"]
        try:
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
        except ApiException as exc:
            refusal = admission_refusal(exc)
            if refusal is None:
                raise
            return refusal
        return None

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
        if (long := graphs.name_problem(name)) is not None:
            self.set_status("predictors", namespace, name, invalid_predictor_status([long]))
            return
        spec = PredictorSpec.model_validate(body.get("spec") or {})
        owner = owner_reference(body)
        labels, annotations = copied_metadata(body)
        try:
            mode = standard.deployment_mode(annotations, self.settings.default_mode)
            hpa = standard.hpa(name, namespace, spec, owner, labels=labels, annotations=annotations)
        except standard.ModeError as exc:
            self.set_status("predictors", namespace, name, invalid_predictor_status([str(exc)]))
            return
        if mode == "Standard":
            deployment = standard.predictor_deployment(
                name, namespace, spec, owner, labels=labels, annotations=annotations
            )
            service = standard.predictor_k8s_service(
                name, namespace, deployment, owner, labels=labels, annotations=annotations
            )
            self.apply_standard(deployment, service, hpa)
            self.mirror_predictor(namespace, name)
            return
        self.leave_standard(namespace, name)
        existing = self.ksvc(namespace, name)
        previous = None
        if existing is not None:
            previous = (existing.get("status") or {}).get("latestReadyRevisionName")
        service = knative.predictor_service(
            name, namespace, spec, owner_reference(body), previous_revision=previous
        )
        errors, warnings = knative.knative_problems(service)
        if errors:
            self.set_status("predictors", namespace, name, invalid_predictor_status(errors))
            return
        refusal = self.apply_ksvc(service)
        if refusal is not None:
            status = invalid_predictor_status([refusal, *warnings])
            self.set_status("predictors", namespace, name, status)
            return
        self.mirror_predictor(namespace, name, extra=warnings)

    def mirror_predictor(self, namespace: str, name: str, extra: list[str] | None = None) -> None:
        body = self.predictor(namespace, name)
        if body is None:
            return
        spec = PredictorSpec.model_validate(body.get("spec") or {})
        try:
            _, annotations = copied_metadata(body)
            mode = standard.deployment_mode(annotations, self.settings.default_mode)
        except standard.ModeError:
            return  # reconcile_predictor has said so in the status
        if mode == "Standard":
            ready, message = standard.deployment_ready(self.deployment(namespace, name))
            server = (ready, standard.cluster_url(name, namespace), message)
            status = predictor_status(spec, None, extra, server)
        else:
            status = predictor_status(spec, self.ksvc(namespace, name), extra)
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

    def refresh_graphs(self, namespace: str, predictor: str) -> None:
        """A Predictor changed: re-resolve every graph that refers to it."""
        for graph in self.graphs_referencing(namespace, predictor):
            self.reconcile_graph(graph)

    def reconcile_graph(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        spec = body.get("spec") or {}
        problems = graphs.problems(spec, name)
        if problems:
            self.set_status("inferencegraphs", namespace, name, invalid_graph_status(problems))
            return
        settings = InferenceGraphSpec.model_validate(spec)
        owner = owner_reference(body)
        labels, annotations = copied_metadata(body)
        # A mode the annotations cannot name is the user's mistake whatever the Predictors'
        # state, so it is reported first, not once they have endpoints.
        try:
            mode = standard.deployment_mode(annotations, self.settings.default_mode)
            hpa = standard.hpa(
                name, namespace, settings, owner, labels=labels, annotations=annotations
            )
        except standard.ModeError as exc:
            self.set_status("inferencegraphs", namespace, name, invalid_graph_status([str(exc)]))
            return
        referenced = sorted(graphs.referenced_predictors(spec))
        readiness = predictor_readiness({p: self.predictor(namespace, p) for p in referenced})
        unresolved = unresolved_graph_status(readiness)
        if unresolved is not None:
            self.set_status("inferencegraphs", namespace, name, unresolved)
            return
        config_name = config_map_name(name)
        self.core.patch_namespaced_config_map(
            config_name,
            namespace,
            graph_config_map(name, namespace, graphs.resolve(spec, readiness.endpoints), owner),
            field_manager=MANAGER,
            force=True,
            _content_type=APPLY,
        )
        server_write = settings.router_timeouts.server_write if settings.router_timeouts else None
        auth = settings.auth == "kubernetes"
        account = self.apply_access(namespace, name, settings.service_account_name, owner, auth)
        if mode == "Standard":
            deployment = standard.router_deployment(
                name,
                namespace,
                config_name,
                settings,
                owner,
                image=self.settings.router_image,
                server_write=server_write,
                service_account=account,
                affinity=settings.affinity,
                env=self.settings.router_env(),
                labels=labels,
                annotations=annotations,
                grpc=settings.grpc,
                auth=auth,
            )
            service = standard.router_k8s_service(
                name, namespace, owner, labels=labels, annotations=annotations, grpc=settings.grpc
            )
            self.apply_standard(deployment, service, hpa)
            self.delete_ours("ksvc", namespace, name + knative.GRPC_SUFFIX, owner_name=name)
        else:
            common: dict[str, Any] = {
                "image": self.settings.router_image,
                "timeout": settings.timeout,
                "server_write": server_write,
                "service_account": account,
                "affinity": settings.affinity,
                "env": self.settings.router_env(),
                "auth": auth,
                "graph": name,
            }
            services = [
                knative.router_service(name, namespace, config_name, settings, owner, **common)
            ]
            twin = name + knative.GRPC_SUFFIX
            if settings.grpc:
                services.append(
                    knative.router_service(
                        twin, namespace, config_name, settings, owner, grpc="only", **common
                    )
                )
            for service in services:
                refusal = self.apply_ksvc(service)
                if refusal is not None:
                    status = invalid_graph_status([refusal])
                    self.set_status("inferencegraphs", namespace, name, status)
                    return
            if not settings.grpc:
                self.delete_ours("ksvc", namespace, twin, owner_name=name)
            self.leave_standard(namespace, name)
        self.mirror_graph(namespace, name, readiness.not_ready, mode)

    def mirror_graph(
        self,
        namespace: str,
        name: str,
        not_ready: list[str],
        mode: standard.DeploymentMode = "Serverless",
    ) -> None:
        grpc = bool(((self._graph_or_none(namespace, name) or {}).get("spec") or {}).get("grpc"))
        if mode == "Standard":
            ready, message = standard.deployment_ready(self.deployment(namespace, name))
            router = (ready, standard.cluster_url(name, namespace), message)
            status = graph_status(None, not_ready, router)
            if grpc:
                status["grpcUrl"] = standard.cluster_grpc_address(name, namespace)
        else:
            status = graph_status(self.ksvc(namespace, name), not_ready)
            if grpc:
                twin = self.ksvc(namespace, name + knative.GRPC_SUFFIX)
                twin_ready, twin_url, twin_message = ksvc_ready(twin)
                status["grpcUrl"] = grpc_address(twin_url)
                if not twin_ready:
                    status["conditions"] = [
                        condition(False, "NotReady", f"gRPC router: {twin_message}")
                    ]
        self.set_status("inferencegraphs", namespace, name, status)

    def _graph_or_none(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.graph(namespace, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
