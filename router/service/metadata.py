"""A graph's metadata as the model it fronts, for gRPC ingress's ``ModelMetadata``.

The inputs are those of the graph's first step's model (the first step of the root, followed
into nested nodes) and the outputs those of its answering step's (the last step of a Sequence,
the first of other nodes), each asked of its model server: ``GET /v2/models/<m>`` for a v2 REST
step, the ``ModelMetadata`` RPC for a ``v2-grpc`` one. Steps of other protocols describe
nothing, and a server that does not answer within two seconds neither (the call still
succeeds, with fewer tensors). Answers are kept for ten seconds per graph.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import grpc  # type: ignore[import-untyped]

from infergraph.router.engine.plan import GraphPlan, NodePlan, RouterType, StepPlan
from infergraph.router.http import oip
from infergraph.router.protocols import Protocol

Tensor = dict[str, Any]
ASK_SECONDS = 2.0
KEEP_SECONDS = 10.0
_V2_INFER = re.compile(r"^(/v2/models/[^/]+(?:/versions/[^/]+)?)/infer$")


def _first(node: NodePlan) -> StepPlan:
    step = node.steps[0]
    return _first(step.node) if step.node is not None else step


def _answering(node: NodePlan) -> StepPlan:
    step = node.steps[-1] if node.router_type is RouterType.SEQUENCE else node.steps[0]
    return _answering(step.node) if step.node is not None else step


class ModelMetadata:
    """Asks the model servers, and remembers their answers briefly."""

    def __init__(self) -> None:
        self._kept: dict[int, tuple[float, GraphPlan, dict[str, list[Tensor]]]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def describe(self, plan: GraphPlan) -> dict[str, list[Tensor]]:
        kept = self._kept.get(id(plan))
        if kept is not None and kept[1] is plan and time.monotonic() - kept[0] < KEEP_SECONDS:
            return kept[2]
        first, last = _first(plan.root), _answering(plan.root)
        asked = await asyncio.gather(
            self._ask(first), self._ask(last) if last is not first else _none()
        )
        first_meta, last_meta = asked[0], asked[1] if last is not first else asked[0]
        described = {
            "inputs": first_meta.get("inputs", []),
            "outputs": last_meta.get("outputs", []),
        }
        self._kept[id(plan)] = (time.monotonic(), plan, described)
        return described

    async def _ask(self, step: StepPlan) -> dict[str, list[Tensor]]:
        try:
            async with asyncio.timeout(ASK_SECONDS):
                if step.protocol is Protocol.V2_GRPC:
                    return await self._ask_grpc(step)
                return await self._ask_rest(step)
        except (TimeoutError, OSError, aiohttp.ClientError, grpc.RpcError, ValueError):
            return {}

    async def _ask_rest(self, step: StepPlan) -> dict[str, list[Tensor]]:
        service = step.service
        if service is None or not service.scheme.startswith("http"):
            return {}
        found = _V2_INFER.match(service.path)
        if found is None:
            return {}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"{service.scheme}://{service.authority}{found.group(1)}"
        async with self._session.get(url) as response:
            if response.status != 200:
                return {}
            document = await response.json(content_type=None)
        return {kind: _tensors(document.get(kind)) for kind in ("inputs", "outputs")}

    async def _ask_grpc(self, step: StepPlan) -> dict[str, list[Tensor]]:
        service = step.service
        assert service is not None
        async with grpc.aio.insecure_channel(f"{service.host}:{service.port}") as channel:
            call = channel.unary_unary(
                oip.method_path("ModelMetadata"),
                request_serializer=oip.message("ModelMetadataRequest").SerializeToString,
                response_deserializer=oip.message("ModelMetadataResponse").FromString,
            )
            request = oip.message("ModelMetadataRequest")(
                name=step.model or "", version=step.model_version or ""
            )
            response = await call(request)
        return {
            kind: [
                {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                for t in getattr(response, kind)
            ]
            for kind in ("inputs", "outputs")
        }


async def _none() -> dict[str, list[Tensor]]:
    return {}


def _tensors(found: Any) -> list[Tensor]:
    if not isinstance(found, list):
        return []
    return [
        {"name": t["name"], "datatype": t["datatype"], "shape": [int(d) for d in t["shape"]]}
        for t in found
        if isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and isinstance(t.get("datatype"), str)
        and isinstance(t.get("shape"), list)
    ]
