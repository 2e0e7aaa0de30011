"""What infergraph knows about model servers: the protocols they speak, their ports, paths and
health endpoints, and how to build the endpoint URL of a model. One place, used by the router's
protocol code, the demo, the tests and the operator.

Protocols:

- ``v1``: KServe v1 REST, ``POST /v1/models/<model>:predict`` with ``{"instances": [...]}``;
- ``v2``: Open Inference Protocol REST, ``POST /v2/models/<model>[/versions/<v>]/infer``;
- ``v2-grpc``: Open Inference Protocol over gRPC (``ModelInfer``), as Triton serves it;
- ``openai``: OpenAI-compatible HTTP as vLLM serves it, ``/v1/completions`` and
  ``/v1/chat/completions``, with server-sent events when ``"stream": true``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

V2_HEALTH_READY = "/v2/health/ready"
V2_HEALTH_LIVE = "/v2/health/live"


class Protocol(enum.StrEnum):
    V1 = "v1"
    V2 = "v2"
    V2_GRPC = "v2-grpc"
    OPENAI = "openai"


@dataclass(frozen=True, slots=True)
class ModelServer:
    """A model server runtime: what it speaks and where."""

    name: str
    protocols: tuple[Protocol, ...]
    http_port: int
    grpc_port: int | None
    ready_path: str
    live_path: str
    metrics_port: int | None
    metrics_path: str = "/metrics"


TRITON = ModelServer(
    name="triton",
    protocols=(Protocol.V2, Protocol.V2_GRPC),
    http_port=8000,
    grpc_port=8001,
    ready_path=V2_HEALTH_READY,
    live_path=V2_HEALTH_LIVE,
    metrics_port=8002,
)
VLLM = ModelServer(
    name="vllm",
    protocols=(Protocol.OPENAI,),
    http_port=8000,
    grpc_port=None,
    ready_path="/health",
    live_path="/health",
    metrics_port=8000,
)
KSERVE = ModelServer(
    name="kserve",
    protocols=(Protocol.V1, Protocol.V2, Protocol.V2_GRPC),
    http_port=8080,
    grpc_port=8081,
    ready_path=V2_HEALTH_READY,
    live_path=V2_HEALTH_LIVE,
    metrics_port=8080,
)
SERVERS = {server.name: server for server in (TRITON, VLLM, KSERVE)}

OPENAI_COMPLETIONS = "/v1/completions"
OPENAI_CHAT = "/v1/chat/completions"


def inference_path(
    protocol: Protocol, model: str | None = None, version: str | None = None, *, chat: bool = False
) -> str:
    """The path a model's inference requests go to (for ``v2-grpc``, the model's REST twin)."""
    if protocol is Protocol.OPENAI:
        return OPENAI_CHAT if chat else OPENAI_COMPLETIONS
    if not model:
        raise ValueError(f"protocol {protocol} needs a model name")
    if protocol is Protocol.V1:
        return f"/v1/models/{model}:predict"
    versioned = f"/versions/{version}" if version else ""
    return f"/v2/models/{model}{versioned}/infer"


def model_ready_path(protocol: Protocol, model: str) -> str:
    if protocol is Protocol.V1:
        return f"/v1/models/{model}"
    if protocol is Protocol.OPENAI:
        return "/v1/models"
    return f"/v2/models/{model}/ready"


def endpoint_url(
    base_url: str, protocol: Protocol, model: str | None, version: str | None = None
) -> str:
    """``base_url`` plus the protocol's inference path (``grpc://`` URLs stay as they are)."""
    if protocol is Protocol.V2_GRPC:
        return base_url
    return base_url.rstrip("/") + inference_path(protocol, model, version)


def parse_grpc_model_path(path: str) -> tuple[str | None, str | None]:
    """``/v2/models/<model>[/versions/<v>]`` -> (model, version); anything else -> (None, None)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
        version = parts[4] if len(parts) >= 5 and parts[3] == "versions" else None
        return parts[2], version
    return None, None
