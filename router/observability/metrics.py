"""Prometheus metrics (``GET /metrics``): requests, latencies and errors per graph, node and step.

Labels are the graph's own names (graph, node, step, router type) and bounded codes, never
request data. ``overhead`` is the router's own time per request: total time minus the wall
time during which at least one downstream call was outstanding.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from infergraph.router.engine import errors
from infergraph.router.engine.plan import NodePlan, StepPlan
from infergraph.router.engine.transport import Reply, StepCall

FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OVERHEAD = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


def cause(error: BaseException) -> str:
    """The bounded error cause label."""
    for kind, label in (
        (errors.GraphOverloaded, "shed"),
        (errors.StepOverloaded, "shed"),
        (errors.GraphTimeout, "timeout"),
        (errors.NoHealthyReplica, "no_healthy_replica"),
        (errors.UpstreamTimeout, "timeout"),
        (errors.UpstreamConnectionError, "connection"),
        (errors.UpstreamOverloaded, "overloaded"),
        (errors.InvalidStepUrl, "connection"),
        (errors.NoRouteMatched, "no_route"),
        (errors.NestedNoRouteMatched, "no_route"),
        (errors.BadRequest, "bad_request"),
        (errors.DeadlineExceeded, "timeout"),
        (errors.MappingError, "mapping"),
        (errors.InvalidResponse, "invalid_response"),
        (errors.EnsembleMergeError, "invalid_response"),
    ):
        if isinstance(error, kind):
            return label
    return "internal"


class _Value:
    """A counter or gauge for one label set. The router updates metrics only on its event loop
    thread, so plain numbers do (no lock per update, unlike prometheus_client's own metrics)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Histogram:
    """A histogram for one label set: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class _Family:
    """A metric with labels; children are made on first use and reported at scrape time."""

    def __init__(
        self, kind: str, name: str, doc: str, labels: list[str], buckets: tuple[float, ...] = ()
    ) -> None:
        self.kind, self.name, self.doc, self.labelnames = kind, name, doc, labels
        self.buckets = buckets
        self.children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = _Histogram(self.buckets) if self.kind == "histogram" else _Value()
            self.children[values] = child
        return child

    def snapshot(self) -> dict[tuple[str, ...], Any]:
        """Plain values per label set: a number, or (bucket counts, sum) for a histogram."""
        if self.kind == "histogram":
            return {k: (list(c.counts), c.total) for k, c in self.children.items()}
        return {k: c.value for k, c in self.children.items()}

    def family(self, peers: Sequence[dict[tuple[str, ...], Any]] = ()) -> Metric:
        """The metric for a scrape: this process's values plus the peers' (other workers)."""
        states = self.snapshot()
        for peer in peers:
            for labels, state in peer.items():
                mine = states.get(labels)
                if mine is None:
                    states[labels] = state
                elif self.kind == "histogram":
                    counts = [x + y for x, y in zip(mine[0], state[0], strict=True)]
                    states[labels] = (counts, mine[1] + state[1])
                else:
                    states[labels] = mine + state
        if self.kind == "counter":
            counter = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
            for values, value in states.items():
                counter.add_metric(list(values), value)
            return counter
        if self.kind == "gauge":
            gauge = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
            for values, value in states.items():
                gauge.add_metric(list(values), value)
            return gauge
        histogram = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for values, (counts, total) in states.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*self.buckets, float("inf")], counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            histogram.add_metric(list(values), buckets, total)
        return histogram


class SharedMetrics:
    """With ``--workers``: each worker publishes its metrics (every ``interval`` seconds and at
    exit) to a directory the workers share, and a scrape of any worker reports the sum of its
    own live figures and the others' latest. A worker that has exited still counts in the
    counters and histograms (they must not go back), not in the gauges."""

    def __init__(self, directory: Path, interval: float = 1.0) -> None:
        self.directory = directory
        self.interval = interval
        self.pid = os.getpid()

    def publish(self, snapshot: dict[str, Any]) -> None:
        temporary = self.directory / f"{self.pid}.tmp"
        temporary.write_bytes(pickle.dumps(snapshot, pickle.HIGHEST_PROTOCOL))
        os.replace(temporary, self.directory / f"{self.pid}.metrics")

    def peers(self) -> list[tuple[bool, dict[str, Any]]]:
        """(still running, snapshot) of every other worker that has published."""
        found = []
        for path in self.directory.glob("*.metrics"):
            pid = int(path.stem)
            if pid == self.pid:
                continue
            try:
                snapshot = pickle.loads(path.read_bytes())
            except (OSError, pickle.UnpicklingError, EOFError):
                continue
            found.append((Path(f"/proc/{pid}").exists(), snapshot))
        return found


class RouterMetrics:
    """The router's metrics, exposed in Prometheus' format through prometheus_client."""

    def __init__(self) -> None:
        self.requests = _Family(
            "counter", "infergraph_requests", "Graph requests", ["graph", "code"]
        )
        self.request_seconds = _Family(
            "histogram", "infergraph_request_seconds", "Graph request latency", ["graph"], FAST
        )
        self.in_flight = _Family(
            "gauge", "infergraph_requests_in_flight", "Graph requests being served", ["graph"]
        )
        self.overhead_seconds = _Family(
            "histogram",
            "infergraph_overhead_seconds",
            "Router time per request outside downstream calls",
            ["graph"],
            OVERHEAD,
        )
        self.node_seconds = _Family(
            "histogram",
            "infergraph_node_seconds",
            "Node latency",
            ["graph", "node", "router_type"],
            FAST,
        )
        self.step_seconds = _Family(
            "histogram",
            "infergraph_step_seconds",
            "Step call latency",
            ["graph", "node", "step"],
            FAST,
        )
        self.step_calls = _Family(
            "counter",
            "infergraph_step_calls",
            "Step calls by status",
            ["graph", "node", "step", "code"],
        )
        self.errors = _Family(
            "counter", "infergraph_errors", "Failures by cause", ["graph", "cause"]
        )
        self.retries = _Family(
            "counter",
            "infergraph_retries",
            "Step calls sent again: retries by policy, and resends on a fresh connection",
            ["graph", "node", "step"],
        )
        step = ["graph", "node", "step"]
        self.hedges = _Family("counter", "infergraph_hedges", "Hedged attempts sent", step)
        self.fallbacks = _Family(
            "counter", "infergraph_fallbacks", "Steps answered by their fallback", step
        )
        self.shed = _Family(
            "counter",
            "infergraph_shed",
            "Requests refused at once by maxInFlight (node and step empty: the graph's)",
            step,
        )
        self.budget_exhausted = _Family(
            "counter",
            "infergraph_retry_budget_exhausted",
            "Retries and hedges not sent because the retry budget was spent",
            step,
        )
        self.ejected = _Family(
            "gauge", "infergraph_ejected_replicas", "Replicas ejected by outlier detection", step
        )
        self._graphs: dict[str, GraphMetrics] = {}
        self.families = (
            self.requests,
            self.request_seconds,
            self.in_flight,
            self.overhead_seconds,
            self.node_seconds,
            self.step_seconds,
            self.step_calls,
            self.errors,
            self.retries,
            self.hedges,
            self.fallbacks,
            self.shed,
            self.budget_exhausted,
            self.ejected,
        )
        self.shared: SharedMetrics | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def snapshot(self) -> dict[str, Any]:
        return {family.name: family.snapshot() for family in self.families}

    async def publish(self) -> None:
        """Publish this worker's figures for the others until cancelled, then once more."""
        shared = self.shared
        if shared is None:
            return
        try:
            while True:
                shared.publish(self.snapshot())
                await asyncio.sleep(shared.interval)
        finally:
            shared.publish(self.snapshot())

    def collect(self) -> Iterator[Metric]:
        peers = self.shared.peers() if self.shared is not None else []
        for family in self.families:
            yield family.family(
                [
                    snapshot.get(family.name, {})
                    for running, snapshot in peers
                    if running or family.kind != "gauge"
                ]
            )

    def observer(self, graph: str) -> MetricsObserver:
        return MetricsObserver(self, graph)

    def for_graph(self, graph: str) -> GraphMetrics:
        found = self._graphs.get(graph)
        if found is None:
            found = self._graphs[graph] = GraphMetrics(self, graph)
        return found

    def request_failed(self, graph: str, error: BaseException) -> None:
        self.errors.labels(graph, cause(error)).inc()

    def client_closed(self, graph: str) -> None:
        """The client went away before its answer (counted as code 499, not as a 5xx)."""
        self.errors.labels(graph, "client_closed").inc()


class GraphMetrics:
    """One graph's request and step call metrics with their label children bound once
    (``labels()`` is the expensive part of an observation)."""

    def __init__(self, metrics: RouterMetrics, graph: str) -> None:
        self.metrics = metrics
        self.graph = graph
        self.in_flight = metrics.in_flight.labels(graph)
        self.seconds = metrics.request_seconds.labels(graph)
        self.overhead = metrics.overhead_seconds.labels(graph)
        self._codes: dict[int, Any] = {}
        self._steps: dict[tuple[str, str], StepMetrics] = {}

    def step_call(
        self, call: StepCall, seconds: float, reply: Reply | None, error: BaseException | None
    ) -> None:
        """A step call's latency and status, or its failure by cause (a cancelled call, which
        has neither, is not counted)."""
        key = (call.node, call.step)
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = StepMetrics(self.metrics, self.graph, *key)
        if reply is None:
            if isinstance(error, errors.GraphRequestError):
                step.code("error").inc()
                self.metrics.errors.labels(self.graph, cause(error)).inc()
            return
        histogram = step.seconds
        if histogram is None:  # made on the first answer: a step only failing has no series
            histogram = step.seconds = self.metrics.step_seconds.labels(*step.labels)
        histogram.observe(seconds)
        status = reply.status
        counter = step.statuses.get(status)
        if counter is None:
            counter = step.statuses[status] = step.code(str(status))
        counter.inc()
        if reply.attempts > 1:  # sent again on a fresh connection
            step.metrics.retries.labels(*step.labels).inc(reply.attempts - 1)
        if status >= 400:
            self.metrics.errors.labels(self.graph, "upstream_status").inc()

    def finished(self, status: int, elapsed: float, upstream: float) -> None:
        counter = self._codes.get(status)
        if counter is None:
            counter = self._codes[status] = self.metrics.requests.labels(self.graph, str(status))
        counter.inc()
        self.seconds.observe(elapsed)
        self.overhead.observe(max(0.0, elapsed - upstream))


class MetricsObserver:
    """Node latencies for one graph."""

    def __init__(self, metrics: RouterMetrics, graph: str) -> None:
        self.metrics = metrics
        self.graph = graph
        self._nodes: dict[str, Any] = {}

    def node_started(self, node: NodePlan) -> object:
        return time.perf_counter()

    def node_finished(
        self, token: object, node: NodePlan, reply: Reply | None, error: BaseException | None
    ) -> None:
        assert isinstance(token, float)
        child = self._nodes.get(node.name)
        if child is None:
            child = self._nodes[node.name] = self.metrics.node_seconds.labels(
                self.graph, node.name, node.router_type.value
            )
        child.observe(time.perf_counter() - token)

    def step_chosen(self, node: NodePlan, step: StepPlan, reason: str) -> None:
        return None

    def branches_cancelled(self, node: NodePlan, steps: Sequence[StepPlan]) -> None:
        return None

    def policy_event(self, step: StepPlan | None, event: str, detail: Mapping[str, object]) -> None:
        metrics = self.metrics
        labels = (self.graph, step.owner, step.key) if step is not None else (self.graph, "", "")
        if event in ("ejected", "unhealthy", "returned"):
            ejected = detail.get("ejected")
            if isinstance(ejected, int):
                metrics.ejected.labels(*labels).value = float(ejected)
            return
        family = {
            "retry": metrics.retries,
            "hedge": metrics.hedges,
            "fallback": metrics.fallbacks,
            "shed": metrics.shed,
            "budget_exhausted": metrics.budget_exhausted,
        }.get(event)
        if family is not None:
            family.labels(*labels).inc()


class StepMetrics:
    """One step's call latency and status counters, bound once."""

    __slots__ = ("labels", "metrics", "seconds", "statuses")

    def __init__(self, metrics: RouterMetrics, graph: str, node: str, step: str) -> None:
        self.metrics = metrics
        self.labels = (graph, node, step)
        self.seconds: Any = None
        self.statuses: dict[int, Any] = {}

    def code(self, code: str) -> Any:
        return self.metrics.step_calls.labels(*self.labels, code)
