"""Switch: the first step whose condition matches the node input runs; its reply is the node's.

Input that is not JSON matches nothing (KServe's 404 at the root). Input that is JSON to gjson
but that a condition cannot read (a JSONPath condition on a body that is not UTF-8, a body nested
deeper than the engine reads) is the client's to fix: 400 with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from infergraph.router.engine.conditions import Unevaluable
from infergraph.router.engine.errors import BadRequest, NoRouteMatched
from infergraph.router.engine.mapping import input_from_node

if TYPE_CHECKING:
    from infergraph.router.engine.context import ExecutionContext
    from infergraph.router.engine.payload import Payload
    from infergraph.router.engine.plan import NodePlan, StepPlan
    from infergraph.router.engine.steps import StepRunner
    from infergraph.router.engine.transport import Reply


def choose(node: NodePlan, payload: Payload) -> StepPlan:
    """The step to run, or ``NoRouteMatched`` (also when the input is not JSON)."""
    if payload.is_json():
        for step in node.steps:
            if step.condition is None:
                continue
            try:
                if step.condition.matches(payload):
                    return step
            except Unevaluable as exc:
                raise BadRequest(f"Switch {node.name!r}, step {step.key!r}: {exc}") from exc
    elif (too_deep := payload.too_deep) is not None:
        raise BadRequest(f"Switch {node.name!r}: {too_deep}")
    raise NoRouteMatched()


async def run(
    node: NodePlan, payload: Payload, ctx: ExecutionContext, run_step: StepRunner, final: bool
) -> Reply:
    step = choose(node, payload)
    if ctx.observer is not None and step.condition is not None:
        ctx.observer.step_chosen(node, step, f"condition {step.condition.source} matched")
    return await run_step(step, input_from_node(step.input, payload), ctx, final)
