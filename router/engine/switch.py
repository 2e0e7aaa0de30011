"""Switch: the first step whose condition matches the node input runs; its reply is the node's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infergraph.router.engine.errors import NoRouteMatched
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
            if step.condition is not None and step.condition.matches(payload):
                return step
    raise NoRouteMatched()


async def run(
    node: NodePlan, payload: Payload, ctx: ExecutionContext, run_step: StepRunner, final: bool
) -> Reply:
    step = choose(node, payload)
    if ctx.observer is not None and step.condition is not None:
        ctx.observer.step_chosen(node, step, f"condition {step.condition.source} matched")
    return await run_step(step, input_from_node(step.input, payload), ctx, final)
