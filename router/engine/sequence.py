"""Sequence: steps run in order, each on the node input or on the previous step's response."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infergraph.router.engine.errors import InvalidResponse
from infergraph.router.engine.payload import NotJSON, Payload
from infergraph.router.engine.transport import Reply

if TYPE_CHECKING:
    from infergraph.router.engine.context import ExecutionContext
    from infergraph.router.engine.plan import NodePlan
    from infergraph.router.engine.steps import StepRunner


def predictions_to_instances(payload: Payload) -> Payload:
    """``{"predictions": [...], ...}`` becomes ``{"instances": [...]}``; the rest is kept."""
    if b'"predictions"' not in payload.raw:
        return payload
    try:
        document = payload.json()
    except NotJSON:
        return payload
    if isinstance(document, dict):
        predictions = document.get("predictions")
        if isinstance(predictions, list) and predictions:
            return Payload.of_json({"instances": predictions})
    return payload


async def run(
    node: NodePlan, payload: Payload, ctx: ExecutionContext, run_step: StepRunner
) -> Reply:
    previous: Reply | None = None
    for step in node.steps:
        if step.condition is not None:
            last = Payload(previous.body if previous is not None else b"")
            if not last.is_json():
                raise InvalidResponse()
            if not step.condition.matches(last):
                assert previous is not None
                return Reply(200, previous.body, previous.content_type)
        step_input = payload
        if step.data == "$response" and previous is not None:
            step_input = Payload(previous.body)
        if step.map_predictions_to_instances:
            step_input = predictions_to_instances(step_input)
        reply = await run_step(step, step_input, ctx)
        if step.hard and not reply.ok:
            return reply
        previous = reply
    assert previous is not None
    return previous
