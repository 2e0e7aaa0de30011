"""Step calls sent straight to a transport, reported to a request's ``CallWatcher`` (the
recorder's ``UpstreamTime``) as the engine's ``call_service`` reports them: for transport tests
that read the step metrics a call leaves."""

from __future__ import annotations

from infergraph.router.engine.transport import Reply, StepCall, Transport
from infergraph.router.observability.metrics import RouterMetrics
from infergraph.router.observability.recorder import UpstreamTime


async def watched_send(transport: Transport, metrics: RouterMetrics, call: StepCall) -> Reply:
    """``transport.send(call)``, with its outcome recorded in ``metrics`` for ``call.graph``."""
    watcher = UpstreamTime(metrics.for_graph(call.graph))
    started = watcher.call_started()
    try:
        reply = await transport.send(call)
    except BaseException as error:
        watcher.call_finished(call, started, None, error)
        raise
    watcher.call_finished(call, started, reply, None)
    return reply
