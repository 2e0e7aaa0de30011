"""What the service needs from telemetry, built once at start-up: the tracer (or none), the
metrics (or none), per-graph engine observers, per-request recorders, the transport wrappers
and the ``/metrics`` page. The service imports neither OpenTelemetry nor prometheus_client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infergraph.router.engine.observe import Observer, Observers
from infergraph.router.engine.transport import Headers, Transport
from infergraph.router.observability.metrics import RouterMetrics
from infergraph.router.observability.recorder import RequestRecorder
from infergraph.router.observability.tracing import (
    TracingObserver,
    TracingTransport,
    header_map,
    quick_decision,
    server_span,
)


@dataclass
class Telemetry:
    tracer: trace.Tracer | None = None
    metrics: RouterMetrics | None = None
    access_log: bool = False
    shutdown: Callable[[], None] | None = None  # flushes the span exporter
    # The transport without the tracing layer, for requests that are not sampled.
    untraced: Transport | None = None
    _observers: dict[tuple[str, bool], Observer | None] = field(default_factory=dict)

    def close(self) -> None:
        if self.shutdown is not None:
            self.shutdown()

    def observer(self, graph: str, traced: bool = True) -> Observer | None:
        """The engine observer for requests to ``graph`` (None when nothing observes);
        ``traced``: the request is sampled, so its nodes get spans."""
        key = (graph, traced)
        if key not in self._observers:
            observers: list[Observer] = []
            if self.tracer is not None and traced:
                observers.append(TracingObserver(self.tracer))
            if self.metrics is not None:
                observers.append(self.metrics.observer(graph))
            self._observers[key] = (
                None
                if not observers
                else observers[0]
                if len(observers) == 1
                else Observers(observers)
            )
        return self._observers[key]

    def wrap(self, transport: Transport) -> Transport:
        """The transport with the tracing layer; ``untraced`` is left without it. (Step call
        metrics come from the request's ``CallWatcher``, the recorder.)"""
        self.untraced = transport
        if self.tracer is not None:
            transport = TracingTransport(transport, self.tracer)
        return transport

    def recorder(self, graph: str, headers: Headers, path: str) -> RequestRecorder:
        """The recorder of one request to ``graph``; ``headers``, the request's, carry the
        caller's trace context. A request that is not sampled gets no span at all, only the
        context its calls carry (``quick_decision``), where the API's way would give the same."""
        metrics = self.metrics
        tracer = self.tracer
        scope = None
        unsampled = None
        if tracer is not None:
            decided = quick_decision(tracer, headers)
            if decided is None:
                scope = server_span(tracer, header_map(headers), graph, path)
            else:
                trace_id, span_id = decided
                if span_id is None:
                    scope = server_span(tracer, {}, graph, path, trace_id=trace_id)
                else:
                    unsampled = (trace_id, span_id)
        return RequestRecorder(
            graph,
            metrics.for_graph(graph) if metrics is not None else None,
            metrics,
            scope,
            self.access_log,
            unsampled=unsampled,
        )

    def metrics_page(self) -> tuple[bytes, str] | None:
        """The Prometheus exposition of every metric and its content type; None when off."""
        if self.metrics is None:
            return None
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST
