"""A fake transport for engine tests: no sockets, scripted replies, every call recorded."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import UpstreamError
from infergraph.router.engine.plan import GraphPlan, compile_plan
from infergraph.router.engine.spec import parse_spec
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply, StepCall

Script = Reply | UpstreamError | Callable[[StepCall], Awaitable[Reply]]


def url(name: str) -> str:
    return f"http://{name}.test/predict"


def reply(status: int = 200, body: Any = None, raw: bytes | None = None) -> Reply:
    return Reply(status, raw if raw is not None else orjson.dumps(body), "application/json")


def plan(nodes: dict[str, Any], **spec: Any) -> GraphPlan:
    return compile_plan(parse_spec({"nodes": nodes, **spec}, default_name="test"))


@dataclass
class FakeTransport:
    """Answers each URL from ``script``; a model not in the script echoes its input."""

    script: dict[str, Script] = field(default_factory=dict)
    calls: list[StepCall] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    def bodies(self, name: str) -> list[Any]:
        return [orjson.loads(c.body) for c in self.calls if c.target.url == url(name)]

    def called(self) -> list[str]:
        return [c.target.url.split("//")[1].split(".")[0] for c in self.calls]

    async def send(self, call: StepCall) -> Reply:
        self.calls.append(call)
        scripted = self.script.get(call.target.url)
        try:
            if scripted is None:
                return Reply(200, call.body, "application/json")
            if isinstance(scripted, UpstreamError):
                raise scripted
            if isinstance(scripted, Reply):
                await asyncio.sleep(0)
                return scripted
            return await scripted(call)
        except asyncio.CancelledError:
            self.cancelled.append(call.target.url)
            raise


async def run(
    graph: GraphPlan, fake: FakeTransport, body: Any, *, seed: int = 0, raw: bytes | None = None
) -> Reply:
    ctx = ExecutionContext(transport=fake, rng=random.Random(seed))
    return await run_graph(graph, raw if raw is not None else orjson.dumps(body), ctx)
