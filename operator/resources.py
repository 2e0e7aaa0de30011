"""The operator's custom resources, as pydantic models: the single source of their schemas.

``InferenceGraph`` keeps KServe's InferenceGraph ``spec`` (a KServe user changes only the
``apiVersion``) plus the router pod settings KServe offers. ``Predictor`` describes a model
server (Triton, vLLM or a custom image) that the operator runs as a Knative Service.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from infergraph.router.engine.spec import (
    InferenceRouter,
    OutlierDetection,
    RetryBudget,
    RetryConfig,
    RouterTimeouts,
)
from infergraph.router.protocols import Protocol

GROUP = "infergraph.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Quantity = str | int
ScaleMetric = Literal["concurrency", "rps", "cpu", "memory"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Resources(_Spec):
    """Container resources, as in a pod spec."""

    limits: dict[str, Quantity] | None = None
    requests: dict[str, Quantity] | None = None


class PodPlacement(_Spec):
    """Scheduling and autoscaling settings shared by routers and predictors."""

    resources: Resources | None = None
    min_replicas: int | None = Field(default=None, alias="minReplicas", ge=0)
    max_replicas: int | None = Field(default=None, alias="maxReplicas", ge=0)
    scale_target: int | None = Field(default=None, alias="scaleTarget", ge=1)
    scale_metric: ScaleMetric | None = Field(default=None, alias="scaleMetric")
    node_selector: dict[str, str] | None = Field(default=None, alias="nodeSelector")
    tolerations: list[dict[str, Any]] | None = None


class InferenceGraphSpec(PodPlacement):
    """KServe's InferenceGraph spec: nodes and routerTimeouts, and the router pod's settings."""

    nodes: dict[str, InferenceRouter]
    router_timeouts: RouterTimeouts | None = Field(default=None, alias="routerTimeouts")
    timeout: int | None = Field(
        default=None, ge=1, description="request timeout in seconds: the router's deadline too"
    )
    default_retry: RetryConfig | None = Field(default=None, alias="defaultRetry")
    retry_budget: RetryBudget | None = Field(default=None, alias="retryBudget")
    outlier_detection: OutlierDetection | None = Field(default=None, alias="outlierDetection")
    max_in_flight: int | None = Field(default=None, alias="maxInFlight", ge=1)
    grpc: bool = Field(
        default=False,
        description="also serve the Open Inference Protocol over gRPC (a <name>-grpc Knative "
        "Service; in Standard mode a second port, 8081, on the graph's Service)",
    )
    auth: Literal["none", "kubernetes"] = Field(
        default="none",
        description="kubernetes: callers need a bearer token the API server accepts and RBAC "
        "get on this InferenceGraph (the operator gives the router system:auth-delegator)",
    )
    affinity: dict[str, Any] | None = None
    service_account_name: str | None = Field(default=None, alias="serviceAccountName")


class ModelSource(_Spec):
    name: str = Field(description="the model's name, as clients and graph steps call it")
    storage_uri: str | None = Field(
        default=None,
        alias="storageUri",
        description="Triton: the model repository; vLLM: a model path or hub id; custom: passed on",
    )


class PredictorSpec(PodPlacement):
    runtime: Literal["triton", "vllm", "custom"]
    model: ModelSource
    protocol: Protocol | None = Field(
        default=None,
        description="derived from the runtime when absent: triton v2, vllm openai; custom must say",
    )
    image: str | None = Field(default=None, description="custom runtime image (or an override)")
    args: list[str] | None = None
    port: int | None = Field(default=None, ge=1, le=65535, description="custom runtime port")
    gpus: int = Field(default=0, ge=0)
    canary_traffic_percent: int | None = Field(
        default=None, alias="canaryTrafficPercent", ge=0, le=100
    )

    def resolved_protocol(self) -> Protocol | None:
        if self.protocol is not None:
            return self.protocol
        return {"triton": Protocol.V2, "vllm": Protocol.OPENAI}.get(self.runtime)


class Condition(_Spec):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None


class Endpoint(_Spec):
    url: str
    protocol: Protocol | None = None
    model: str | None = None


class PredictorStatus(_Spec):
    url: str | None = None
    endpoint: Endpoint | None = None
    conditions: list[Condition] = Field(default_factory=list)


class InferenceGraphStatus(_Spec):
    url: str | None = None
    grpc_url: str | None = Field(default=None, alias="grpcUrl")
    conditions: list[Condition] = Field(default_factory=list)


KINDS: dict[str, tuple[type[BaseModel], type[BaseModel], str, list[str]]] = {
    # kind: (spec model, status model, plural, short names)
    "InferenceGraph": (InferenceGraphSpec, InferenceGraphStatus, "inferencegraphs", ["ig"]),
    "Predictor": (PredictorSpec, PredictorStatus, "predictors", ["pred"]),
}
