"""Sequence: steps run in order, each on the node input or on the previous step's response.

A step's condition reads the previous response: when that is not JSON, or is JSON the
condition cannot read, the answer is KServe's 500 ``invalid response`` (the model's fault).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infergraph.router.engine.conditions import Unevaluable
from infergraph.router.engine.errors import InvalidResponse
from infergraph.router.engine.mapping import Sources
from infergraph.router.engine.payload import Payload
from infergraph.router.engine.transport import Reply

if TYPE_CHECKING:
    from infergraph.router.engine.context import ExecutionContext
    from infergraph.router.engine.plan import NodePlan
    from infergraph.router.engine.steps import StepRunner


async def run(
    node: NodePlan, payload: Payload, ctx: ExecutionContext, run_step: StepRunner, final: bool
) -> Reply:
    previous: Reply | None = None
    earlier: dict[str, Reply] = {}
    last = len(node.steps) - 1
    for step in node.steps:
        if step.condition is not None:
            body = Payload(previous.body if previous is not None else b"")
            if not body.is_json():
                raise InvalidResponse()
            try:
                matched = step.condition.matches(body)
            except Unevaluable as exc:
                raise InvalidResponse() from exc
            if not matched:
                assert previous is not None
                return Reply(200, previous.body, previous.content_type)
        if step.input.passthrough:
            step_input = payload
        else:
            step_input = step.input.build(Sources(payload, previous, earlier, ctx.tensors))
        reply = await run_step(step, step_input, ctx, final and step.index == last)
        if step.index == node.last_input_step and payload.owner is node:
            payload.release()  # the graph's input, which no later step reads
        if step.hard and not reply.ok:
            return reply
        previous = reply
        if step.key in node.referenced:
            earlier[step.key] = reply
    assert previous is not None
    return previous
