"""Running one step (a service call or a nested node) and dispatching a node to its router type.

Every router-type module has the same signature, ``run(node, payload, ctx, run_step)``; this
module owns the dispatch table and the only call into the transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from infergraph.router.engine import ensemble, sequence, splitter, switch
from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import GraphRequestError, NoRouteMatched
from infergraph.router.engine.payload import Payload
from infergraph.router.engine.plan import NodePlan, RouterType, StepPlan
from infergraph.router.engine.transport import Reply, StepCall

StepRunner = Callable[[StepPlan, Payload, ExecutionContext], Awaitable[Reply]]
NodeRunner = Callable[[NodePlan, Payload, ExecutionContext, StepRunner], Awaitable[Reply]]

ROUTERS: dict[RouterType, NodeRunner] = {
    RouterType.SEQUENCE: sequence.run,
    RouterType.SWITCH: switch.run,
    RouterType.ENSEMBLE: ensemble.run,
    RouterType.SPLITTER: splitter.run,
}


async def run_node(node: NodePlan, payload: Payload, ctx: ExecutionContext) -> Reply:
    return await ROUTERS[node.router_type](node, payload, ctx, run_step)


async def run_step(step: StepPlan, payload: Payload, ctx: ExecutionContext) -> Reply:
    """Run a step's target with ``payload`` as its input."""
    if step.node is not None:
        try:
            return await run_node(step.node, payload, ctx)
        except NoRouteMatched as exc:
            # Only the root Switch answers 404; a nested one fails its parent with 500.
            raise GraphRequestError(exc.cause) from exc
    assert step.service is not None
    step.service.check()
    call = StepCall(
        target=step.service, body=payload.raw, headers=ctx.headers, timeout=ctx.service_timeout
    )
    ctx.call_started()
    try:
        return await ctx.transport.send(call)
    finally:
        ctx.call_finished()


async def run_graph(root: NodePlan, body: bytes, ctx: ExecutionContext) -> Reply:
    """Run a graph from its root node on a request body."""
    return await run_node(root, Payload(body), ctx)
