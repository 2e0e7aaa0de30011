"""The protocols a step may speak, and where each protocol's inference requests go.

This is the router's vocabulary: the engine compiles steps with it, the transports dispatch on
it. What is known about particular model-server runtimes (ports, health endpoints, images) is
not here but in ``infergraph.predictors.servers``.

- ``v1``: KServe v1 REST, ``POST /v1/models/<model>:predict`` with ``{"instances": [...]}``;
- ``v2``: Open Inference Protocol REST, ``POST /v2/models/<model>[/versions/<v>]/infer``;
- ``v2-grpc``: Open Inference Protocol over gRPC (``ModelInfer``), as Triton serves it;
- ``openai``: OpenAI-compatible HTTP as vLLM serves it, ``/v1/completions`` and
  ``/v1/chat/completions``, with server-sent events when ``"stream": true``.
"""

from __future__ import annotations

import enum


class Protocol(enum.StrEnum):
    V1 = "v1"
    V2 = "v2"
    V2_GRPC = "v2-grpc"
    OPENAI = "openai"


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


def parse_grpc_model_path(path: str) -> tuple[str | None, str | None]:
    """``/v2/models/<model>[/versions/<v>]`` -> (model, version); anything else -> (None, None)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
        version = parts[4] if len(parts) >= 5 and parts[3] == "versions" else None
        return parts[2], version
    return None, None


# Internal media types of bodies that are Open Inference Protocol messages in protobuf's wire
# format (a graph reached over gRPC ingress whose steps all speak ``v2-grpc``): never sent to a
# client over HTTP, only between the gRPC ingress, the engine and the ``v2-grpc`` transport.
OIP_INFER_REQUEST = "application/x-protobuf; messageType=inference.ModelInferRequest"
OIP_INFER_RESPONSE = "application/x-protobuf; messageType=inference.ModelInferResponse"
OIP_MEDIA = (OIP_INFER_REQUEST, OIP_INFER_RESPONSE)
