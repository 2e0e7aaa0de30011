"""Prometheus metrics (``GET /metrics``): requests, latencies and errors per graph, node and step.

Labels are the graph's own names (graph, node, step, router type) and bounded codes, never
request data. ``overhead`` is the router's own time per request: total time minus the wall
time during which at least one downstream call was outstanding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infergraph.router.engine import errors
from infergraph.router.engine.plan import NodePlan, StepPlan
from infergraph.router.engine.transport import Reply, StepCall, Transport

FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OVERHEAD = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


def cause(error: BaseException) -> str:
    """The bounded error cause label."""
    for kind, label in (
        (errors.UpstreamTimeout, "timeout"),
        (errors.UpstreamConnectionError, "connection"),
        (errors.InvalidStepUrl, "connection"),
        (errors.NoRouteMatched, "no_route"),
        (errors.BadRequest, "bad_request"),
        (errors.DeadlineExceeded, "timeout"),
    ):
        if isinstance(error, kind):
            return label
    if isinstance(error, errors.GraphRequestError) and "None of the routes" in error.cause:
        return "no_route"  # a nested Switch that matched nothing
    return "internal"


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "infergraph_requests", "Graph requests", ["graph", "code"], registry=r
        )
        self.request_seconds = Histogram(
            "infergraph_request_seconds",
            "Graph request latency",
            ["graph"],
            buckets=FAST,
            registry=r,
        )
        self.in_flight = Gauge(
            "infergraph_requests_in_flight", "Graph requests being served", ["graph"], registry=r
        )
        self.overhead_seconds = Histogram(
            "infergraph_overhead_seconds",
            "Router time per request outside downstream calls",
            ["graph"],
            buckets=OVERHEAD,
            registry=r,
        )
        self.node_seconds = Histogram(
            "infergraph_node_seconds",
            "Node latency",
            ["graph", "node", "router_type"],
            buckets=FAST,
            registry=r,
        )
        self.step_seconds = Histogram(
            "infergraph_step_seconds",
            "Step call latency",
            ["graph", "node", "step"],
            buckets=FAST,
            registry=r,
        )
        self.step_calls = Counter(
            "infergraph_step_calls",
            "Step calls by status",
            ["graph", "node", "step", "code"],
            registry=r,
        )
        self.errors = Counter(
            "infergraph_errors", "Failures by cause", ["graph", "cause"], registry=r
        )

    def observer(self, graph: str) -> MetricsObserver:
        return MetricsObserver(self, graph)

    def request_failed(self, graph: str, error: BaseException) -> None:
        self.errors.labels(graph, cause(error)).inc()


class MetricsObserver:
    """Node latencies for one graph."""

    def __init__(self, metrics: RouterMetrics, graph: str) -> None:
        self.metrics = metrics
        self.graph = graph

    def node_started(self, node: NodePlan) -> object:
        return time.perf_counter()

    def node_finished(
        self, token: object, node: NodePlan, reply: Reply | None, error: BaseException | None
    ) -> None:
        assert isinstance(token, float)
        self.metrics.node_seconds.labels(self.graph, node.name, node.router_type.value).observe(
            time.perf_counter() - token
        )

    def step_chosen(self, node: NodePlan, step: StepPlan, reason: str) -> None:
        return None

    def branches_cancelled(self, node: NodePlan, steps: Sequence[StepPlan]) -> None:
        return None


class MetricsTransport:
    """Step call latency and status, and upstream failures by cause."""

    def __init__(self, inner: Transport, metrics: RouterMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def send(self, call: StepCall) -> Reply:
        started = time.perf_counter()
        try:
            reply = await self.inner.send(call)
        except errors.GraphRequestError as error:
            self.metrics.step_calls.labels(call.graph, call.node, call.step, "error").inc()
            self.metrics.errors.labels(call.graph, cause(error)).inc()
            raise
        self.metrics.step_seconds.labels(call.graph, call.node, call.step).observe(
            time.perf_counter() - started
        )
        self.metrics.step_calls.labels(call.graph, call.node, call.step, str(reply.status)).inc()
        if reply.status >= 400:
            self.metrics.errors.labels(call.graph, "upstream_status").inc()
        return reply
