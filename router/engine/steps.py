"""Running one step (a service call or a nested node) and dispatching a node to its router type.

Every router-type module has the same signature, ``run(node, payload, ctx, run_step, final)``;
``final`` says whether the node's reply is the graph's answer (only such a step may stream).
This module owns the dispatch table and the only call into the transport.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from infergraph.router.engine import attempts, ensemble, sequence, splitter, switch
from infergraph.router.engine.context import ExecutionContext, loop_time
from infergraph.router.engine.errors import (
    BadRequest,
    GraphOverloaded,
    NestedNoRouteMatched,
    NoRouteMatched,
)
from infergraph.router.engine.payload import Payload
from infergraph.router.engine.plan import GraphPlan, NodePlan, RouterType, StepPlan, StepTarget
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.protocols import Protocol

StepRunner = Callable[[StepPlan, Payload, ExecutionContext, bool], Awaitable[Reply]]
NodeRunner = Callable[[NodePlan, Payload, ExecutionContext, StepRunner, bool], Awaitable[Reply]]

ROUTERS: dict[RouterType, NodeRunner] = {
    RouterType.SEQUENCE: sequence.run,
    RouterType.SWITCH: switch.run,
    RouterType.ENSEMBLE: ensemble.run,
    RouterType.SPLITTER: splitter.run,
}


async def run_node(node: NodePlan, payload: Payload, ctx: ExecutionContext, final: bool) -> Reply:
    observer = ctx.observer
    if observer is None:
        return await ROUTERS[node.router_type](node, payload, ctx, run_step, final)
    token = observer.node_started(node)
    try:
        reply = await ROUTERS[node.router_type](node, payload, ctx, run_step, final)
    except BaseException as error:
        observer.node_finished(token, node, None, error)
        raise
    observer.node_finished(token, node, reply, None)
    return reply


async def run_step(step: StepPlan, payload: Payload, ctx: ExecutionContext, final: bool) -> Reply:
    """Run a step's target with ``payload`` as its input (through its policy, if it has one)."""
    if step.policy is not None:
        policy = attempts.StepAttempts(step, payload, ctx, final, call_service, run_target)
        return await policy.run()
    return await run_target(step, payload, ctx, final)


async def run_target(step: StepPlan, payload: Payload, ctx: ExecutionContext, final: bool) -> Reply:
    """Run a step's node, or call its service once, with no policy."""
    if step.node is not None:
        try:
            return await run_node(step.node, payload, ctx, final)
        except NoRouteMatched as exc:
            # Only the root Switch answers 404; a nested one fails its parent with 500.
            raise NestedNoRouteMatched() from exc
    return await call_service(step, payload, ctx, final, None, ctx.service_timeout)


async def call_service(  # noqa: PLR0917 (attempts.Send: positional, as it runs on every call)
    step: StepPlan,
    payload: Payload,
    ctx: ExecutionContext,
    final: bool,
    replica: StepTarget | None,
    seconds: float | None,
    number: int = 1,
    hedge: bool = False,
) -> Reply:
    """One call to the step's service (or to ``replica``) within ``seconds``, as
    attempt ``number`` (a hedge or not): the only call into the transport."""
    service, chat_service = step.service, step.chat_service
    if replica is not None:
        service, chat_service = replica.service, replica.chat_service
    assert service is not None
    service.check()
    stream = False
    if step.protocol is Protocol.OPENAI:
        if chat_service is not None and b'"messages"' in payload.raw:
            service = chat_service
        if ctx.stream_requested:
            if not final:
                raise BadRequest(
                    f"the request asks for a stream, but step {step.key!r} does not produce the "
                    "graph's answer (an Ensemble branch or an earlier Sequence step cannot "
                    'stream); send "stream": false'
                )
            stream = True
    call = StepCall(
        target=service,
        body=payload.raw,
        headers=ctx.headers,
        timeout=seconds,
        protocol=step.protocol,
        model=step.model,
        model_version=step.model_version,
        stream=stream,
        graph=ctx.graph,
        node=step.owner,
        step=step.key,
        trace_headers=ctx.trace_headers,
        attempt=number,
        hedge=hedge,
        media=payload.media,
    )
    watcher = ctx.calls
    if watcher is None:
        return await ctx.transport.send(call)
    started = watcher.call_started()
    try:
        reply = await ctx.transport.send(call)
    except BaseException as error:
        watcher.call_finished(call, started, None, error)
        raise
    watcher.call_finished(call, started, reply, None)
    return reply


def wants_stream(payload: Payload) -> bool:
    """Whether an OpenAI-style request asks for server-sent events."""
    document = payload.object_with("stream")
    return document is not None and document["stream"] is True


async def run_graph(
    plan: GraphPlan, body: bytes, ctx: ExecutionContext, media: str | None = None
) -> Reply:
    """Run a graph from its root node on a request body (a binary OIP message when ``media``
    says so: only for a plan that ``carries_tensors``, with ``ctx.tensors`` set)."""
    payload = Payload(body, media)
    payload.owner = plan.root  # held only here: the root node may release it (sequence.py)
    del body
    if plan.streams:
        ctx.stream_requested = wants_stream(payload)
    if not plan.resilient:
        return await run_node(plan.root, payload, ctx, True)
    runtime = ctx.runtime = plan.runtime
    if ctx.clock is loop_time:  # the loop's own bound method: one call less per reading
        ctx.clock = ctx.loop().time
    graph = plan.policy
    if graph.max_in_flight is not None and runtime.active >= graph.max_in_flight:
        if ctx.observer is not None:
            ctx.observer.policy_event(
                None, "shed", {"in_flight": runtime.active, "limit": graph.max_in_flight}
            )
        raise GraphOverloaded(
            f"graph {plan.name} is serving {runtime.active} requests, its maxInFlight: "
            "try again later"
        )
    runtime.active += 1
    try:
        if graph.timeout is None:
            return await run_node(plan.root, payload, ctx, True)
        # Every step call and every backoff is bounded by what is left of the deadline
        # (attempts.py), which answers 504 naming the step; between them the router only
        # computes, so no timer of its own runs for the whole request.
        ctx.timeout = graph.timeout
        ctx.deadline = ctx.clock() + graph.timeout
        return await run_node(plan.root, payload, ctx, True)
    finally:
        runtime.active -= 1
