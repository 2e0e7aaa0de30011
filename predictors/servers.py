"""What infergraph knows about model-server runtimes: the protocols each speaks, its ports and
health endpoints, and the ready path of a model. The operator, the local predictors, the demo
and the tests use it; the protocol vocabulary itself (names, inference paths) is the router's,
in ``infergraph.router.protocols``.
"""

from __future__ import annotations

from dataclasses import dataclass

from infergraph.router.protocols import Protocol

V2_HEALTH_READY = "/v2/health/ready"
V2_HEALTH_LIVE = "/v2/health/live"


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


def model_ready_path(protocol: Protocol, model: str) -> str:
    if protocol is Protocol.V1:
        return f"/v1/models/{model}"
    if protocol is Protocol.OPENAI:
        return "/v1/models"
    return f"/v2/models/{model}/ready"
