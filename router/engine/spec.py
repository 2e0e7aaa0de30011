"""The InferenceGraph spec as pydantic models, with KServe's field names, and how to read it.

A spec is read from the JSON KServe passes with ``--graph-json``, or from a YAML/JSON document
holding either the bare ``spec`` or a whole custom resource. Fields KServe also passes for the
router pod (resources, affinity, replicas, ...) are accepted and ignored.

Whatever the text, reading it ends in a spec or in ``GraphSpecError``: YAML's own failures (a
timestamp with month 13 raises ``ValueError``, deep nesting ``RecursionError``) are reported as
problems too.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from infergraph.router.engine.errors import GraphSpecError, SpecProblem


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _Strict(_Model):
    """A model of ours, not KServe's: a misspelt field is a problem, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


RetryOn = Literal[
    "5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes", "timeout"
]


def _millis(alias: str, default: int | None = None) -> Any:
    return Field(default=default, alias=alias, ge=0)


class RetryConfig(_Strict):
    """A step's retry policy (KServe PR #5386's names; ``retryOn`` in Envoy's vocabulary)."""

    max_retries: int = Field(default=3, alias="maxRetries", ge=0, le=10)
    initial_delay_ms: int = _millis("initialDelayMs", 100)
    max_delay_ms: int = _millis("maxDelayMs", 300_000)
    retry_on: list[RetryOn] | None = Field(default=None, alias="retryOn")
    retriable_status_codes: list[int] | None = Field(default=None, alias="retriableStatusCodes")


class HedgeConfig(_Strict):
    """Send one more attempt when the first has not answered after ``afterMs``."""

    after_ms: int = Field(alias="afterMs", ge=1)


class FallbackTarget(_Strict):
    """Where a step goes when it still fails after its retries: a service or a node."""

    node_name: str | None = Field(default=None, alias="nodeName")
    service_url: str | None = Field(default=None, alias="serviceUrl")
    protocol: str | None = None
    model: str | None = None
    model_version: str | None = Field(default=None, alias="modelVersion")
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class InferenceStep(_Model):
    """One step of a node: a target (another node or a service) and how to call it."""

    name: str | None = None
    node_name: str | None = Field(default=None, alias="nodeName")
    service_name: str | None = Field(default=None, alias="serviceName")
    service_url: str | None = Field(default=None, alias="serviceUrl")
    data: str | None = None
    condition: str | None = None
    weight: int | None = None
    dependency: str | None = None
    map_predictions_to_instances: bool = Field(default=False, alias="mapPredictionsToInstances")
    # Beyond KServe: protocol-aware steps and data mapping (see engine/mapping.py).
    protocol: str | None = None
    model: str | None = None
    model_version: str | None = Field(default=None, alias="modelVersion")
    outputs_to_inputs: bool | dict[str, str] = Field(default=False, alias="outputsToInputs")
    request: dict[str, Any] | list[Any] | None = None
    # Beyond KServe: resilience (see engine/policy.py).
    retry: RetryConfig | None = None
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    endpoints: list[str] | None = None
    hedge: HedgeConfig | None = None
    fallback: FallbackTarget | None = None
    max_in_flight: int | None = Field(default=None, alias="maxInFlight", ge=1)


class InferenceRouter(_Model):
    """A node: how its steps are combined (``routerType``) and the steps themselves."""

    router_type: str = Field(alias="routerType")
    steps: list[InferenceStep] = Field(default_factory=list)
    # Ensemble joins beyond KServe's merge of every step (after Seldon's join types).
    join: Literal["all", "any"] | None = None
    min_success: int | None = Field(default=None, alias="minSuccess", ge=1)


def _seconds(alias: str) -> Any:
    return Field(default=None, alias=alias, ge=0, allow_inf_nan=False)


class RouterTimeouts(_Model):
    """KServe's ``routerTimeouts`` in seconds; 0 means no timeout (infinity is not a number)."""

    server_read: float | None = _seconds("serverRead")
    server_write: float | None = _seconds("serverWrite")
    server_idle: float | None = _seconds("serverIdle")
    service_client: float | None = _seconds("serviceClient")


class RetryBudget(_Strict):
    """Retries and hedges in flight, as a share of the graph's requests in flight (Envoy's)."""

    percent: float = Field(default=20.0, ge=0, le=100, allow_inf_nan=False)
    min_retry_concurrency: int = Field(default=3, alias="minRetryConcurrency", ge=0)


class OutlierDetection(_Strict):
    """When a replica of a step with ``endpoints`` is ejected (Envoy's fields and defaults)."""

    consecutive_5xx: int = Field(default=5, alias="consecutive5xx", ge=0)
    consecutive_gateway_failure: int = Field(default=0, alias="consecutiveGatewayFailure", ge=0)
    base_ejection_time_ms: int = _millis("baseEjectionTimeMs", 30_000)
    max_ejection_time_ms: int = _millis("maxEjectionTimeMs", 300_000)
    max_ejection_percent: int = Field(default=10, alias="maxEjectionPercent", ge=0, le=100)


class InferenceGraphSpec(_Model):
    """The ``spec`` of an InferenceGraph: ``nodes``, ``routerTimeouts`` and (beyond KServe)
    the graph-wide resilience settings; KServe's ``timeout`` is the per-request deadline."""

    nodes: dict[str, InferenceRouter]
    router_timeouts: RouterTimeouts | None = Field(default=None, alias="routerTimeouts")
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    default_retry: RetryConfig | None = Field(default=None, alias="defaultRetry")
    retry_budget: RetryBudget | None = Field(default=None, alias="retryBudget")
    outlier_detection: OutlierDetection | None = Field(default=None, alias="outlierDetection")
    max_in_flight: int | None = Field(default=None, alias="maxInFlight", ge=1)


class NamedSpec(_Model):
    """A spec together with the graph's name (from the resource's metadata, or the file)."""

    name: str
    spec: InferenceGraphSpec


def _problem_from_pydantic(error: Any) -> SpecProblem:
    loc = [str(part) for part in error["loc"]]
    node = step = None
    if len(loc) >= 2 and loc[0] == "nodes":
        node = loc[1]
        if len(loc) >= 4 and loc[2] == "steps":
            step = loc[3]
            loc = loc[4:]
        else:
            loc = loc[2:]
    field = ".".join(loc)
    message = error["msg"] if not field else f"{field}: {error['msg']}"
    return SpecProblem(message, node=node, step=step)


def parse_spec(document: Any, *, default_name: str, source: str | None = None) -> NamedSpec:
    """Validate a decoded document (bare spec or whole custom resource) into a ``NamedSpec``."""
    if not isinstance(document, dict):
        raise GraphSpecError([SpecProblem("the graph must be a JSON/YAML object")], source)
    name = default_name
    body: Any = document
    if "spec" in document and ("kind" in document or "apiVersion" in document):
        metadata = document.get("metadata") or {}
        if isinstance(metadata, dict) and isinstance(metadata.get("name"), str):
            name = metadata["name"]
        body = document["spec"]
    if not isinstance(body, dict) or not body.get("nodes"):
        raise GraphSpecError([SpecProblem("the graph has no nodes")], source)
    try:
        spec = InferenceGraphSpec.model_validate(body)
    except ValidationError as exc:
        raise GraphSpecError([_problem_from_pydantic(e) for e in exc.errors()], source) from exc
    return NamedSpec(name=name, spec=spec)


def load_text(text: str | bytes, *, default_name: str, source: str | None = None) -> NamedSpec:
    """Read a graph from JSON or YAML text."""
    if not text.strip():
        raise GraphSpecError([SpecProblem("the graph is empty")], source)
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            document = yaml.safe_load(text)
        except RecursionError as exc:
            problem = SpecProblem("not valid JSON or YAML: it nests too deeply")
            raise GraphSpecError([problem], source) from exc
        except Exception as exc:  # YAMLError, and ValueError from a timestamp like 2024-13-45
            raise GraphSpecError([SpecProblem(f"not valid JSON or YAML: {exc}")], source) from exc
    return parse_spec(document, default_name=default_name, source=source)
