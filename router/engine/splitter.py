"""Splitter: one step picked at random with probability weight/100 runs on the node input."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infergraph.router.engine.mapping import input_from_node

if TYPE_CHECKING:
    import random

    from infergraph.router.engine.context import ExecutionContext
    from infergraph.router.engine.payload import Payload
    from infergraph.router.engine.plan import NodePlan, StepPlan
    from infergraph.router.engine.steps import StepRunner
    from infergraph.router.engine.transport import Reply


def choose(node: NodePlan, rng: random.Random) -> StepPlan:
    """Draw a step; weights are integers summing to 100 (checked at load), weight 0 never wins."""
    draw = rng.random() * 100
    cumulative = 0
    for step in node.steps:
        cumulative += step.weight
        if draw < cumulative:
            return step
    # Unreachable with weights summing to 100; guards float rounding at the top end.
    return next(s for s in reversed(node.steps) if s.weight > 0)


async def run(
    node: NodePlan, payload: Payload, ctx: ExecutionContext, run_step: StepRunner, final: bool
) -> Reply:
    step = choose(node, ctx.rng)
    if ctx.observer is not None:
        ctx.observer.step_chosen(node, step, f"weight {step.weight}")
    return await run_step(step, input_from_node(step.input, payload), ctx, final)
