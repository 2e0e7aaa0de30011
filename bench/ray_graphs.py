# pyright: reportMissingImports=false
"""The benchmark graphs as Ray Serve applications (run with the Ray virtual environment's Python).

Each graph in graphs/bench-*.yaml is written as Ray Serve deployment composition would write it:
an ingress deployment that calls the predictor over HTTP with an async client (aiohttp, one
session per replica) and composes the results as the InferenceGraph does (a Sequence feeds each
reply to the next step, a Switch tests the request, an Ensemble merges the replies under their
step names, a Splitter picks a step by weight). One application per graph, at ``/<graph>``.

Usage: ray_graphs.py PORT PREDICTOR_URL [REPLICAS]; serves until killed.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import aiohttp
import orjson
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

GRAPHS = ["sequence-1", "sequence-3", "switch", "ensemble-3", "splitter"]


@serve.deployment(max_ongoing_requests=512)
class Graph:
    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.session: aiohttp.ClientSession | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.url, data=body, headers=headers) as reply:
            return reply.status, await reply.read()

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        status, out = await self.run(body)
        return Response(out, status_code=status, media_type="application/json")

    async def run(self, body: bytes) -> tuple[int, bytes]:
        if self.kind == "sequence-3":
            status, out = 200, body
            for _ in range(3):
                status, out = await self.post(out)
                if status >= 400:
                    break
            return status, out
        if self.kind == "ensemble-3":
            replies = await asyncio.gather(*(self.post(body) for _ in range(3)))
            if any(status >= 400 for status, _ in replies):
                return 500, b'{"error": "step failed"}'
            merged: dict[str, Any] = {
                f"step{i + 1}": orjson.loads(out) for i, (_, out) in enumerate(replies)
            }
            return 200, orjson.dumps(merged)
        if self.kind == "switch":
            document = orjson.loads(body)
            instances = document.get("instances") if isinstance(document, dict) else None
            if instances is None:
                return 404, b'{"error": "no step matched"}'
            # The graph's conditions in order: an instance with modelId "other" (step "other"),
            # else instances exists (step "chosen"); both steps call the same predictor.
            _other = any(isinstance(i, dict) and i.get("modelId") == "other" for i in instances)
            return await self.post(body)
        if self.kind == "splitter":
            random.choices(["a", "b"], weights=[50, 50])  # both steps call the same predictor
            return await self.post(body)
        return await self.post(body)


def main() -> int:
    port, predictor = int(sys.argv[1]), sys.argv[2]
    replicas = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    ray.init(include_dashboard=False, object_store_memory=256 * 1024 * 1024, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for kind in GRAPHS:
        options = {"num_cpus": 0}  # two cores: CPU reservations would leave replicas unplaced
        app = Graph.options(  # type: ignore[attr-defined]  # serve.deployment adds it
            num_replicas=replicas, ray_actor_options=options
        ).bind(kind, predictor)
        serve.run(app, name=kind, route_prefix=f"/{kind}", blocking=False)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
