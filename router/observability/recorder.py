"""One request's telemetry, kept out of the request handler: its server span and status, the
in-flight gauge, the access log line, the time spent waiting on step calls and each call's
metrics.

The handler opens a ``RequestRecorder`` around the request, tells it the status it answered
with (or the error it failed with), and gives the engine its ``upstream`` watcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry.trace import StatusCode

from infergraph.router.engine.errors import GraphRequestError
from infergraph.router.engine.transport import Headers, Reply, StepCall
from infergraph.router.observability.tracing import (
    UNSAMPLED_IDS,
    trace_headers,
    unsampled_headers,
    without_trace_headers,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from infergraph.router.observability.metrics import GraphMetrics, RouterMetrics
    from infergraph.router.observability.tracing import server_span

log = logging.getLogger("infergraph.router")
CLIENT_CLOSED = 499


class UpstreamTime:
    """Wall-clock seconds during which at least one step call was outstanding (concurrent
    Ensemble calls are not counted twice), and each call's metrics in ``steps`` when given.
    The engine's ``CallWatcher`` for one request: one pair of clock readings per call serves
    both, where a transport layer of its own would cost a coroutine and two more readings."""

    __slots__ = ("_clock", "_outstanding", "_since", "seconds", "steps")

    def __init__(
        self, steps: GraphMetrics | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._clock = clock
        self._outstanding = 0
        self._since = 0.0
        self.seconds = 0.0
        self.steps = steps

    def call_started(self) -> float:
        now = self._clock()
        if self._outstanding == 0:
            self._since = now
        self._outstanding += 1
        return now

    def call_finished(
        self, call: StepCall, started: float, reply: Reply | None, error: BaseException | None
    ) -> None:
        now = self._clock()
        self._outstanding -= 1
        if self._outstanding == 0:
            self.seconds += now - self._since
        if self.steps is not None:
            self.steps.step_call(call, now - started, reply, error)


class RequestRecorder:
    """Records one graph request; a context manager around the whole request.

    A request that ends because the client went away (the handler was cancelled, or a stream
    it was relaying was closed) is recorded as 499, nginx's "client closed request", with the
    error cause ``client_closed``: it is not a server error."""

    __slots__ = (
        "_errors",
        "_metrics",
        "_open",
        "_scope",
        "_span",
        "_started",
        "_unsampled",
        "access_log",
        "graph",
        "status",
        "trace_headers",
        "traced",
        "upstream",
    )

    def __init__(
        self,
        graph: str,
        metrics: GraphMetrics | None,
        errors: RouterMetrics | None,
        scope: server_span | None,
        access_log: bool,
        *,
        unsampled: tuple[int, int] | None = None,
    ) -> None:
        """``unsampled``: the trace and span ids of a request that is not sampled and has no
        ``scope`` (``tracing.quick_decision``)."""
        self.graph = graph
        self._metrics = metrics
        self._errors = errors
        self._scope = scope
        self._span: Span | None = None
        self.access_log = access_log
        self.status = 500
        self._started = 0.0
        self._open = False  # kept open past the handler (a streamed reply) by keep_open
        self.upstream = UpstreamTime(metrics) if metrics is not None else None
        # Spans per node and call only for a sampled request. An unsampled one carries the
        # same trace context on every call, made once here.
        self._unsampled = unsampled
        self.traced = scope is not None and scope.sampled
        self.trace_headers: Headers = ()
        if unsampled is not None:
            self.trace_headers = unsampled_headers(*unsampled)
        elif scope is not None and not self.traced:
            self.trace_headers = trace_headers(scope.span)

    def outgoing(self, headers: Headers) -> Headers:
        """The headers forwarded to every step: without the client's trace context when the
        request is traced (sampled or not), as every call then carries the request's own: in
        ``trace_headers``, or the call span's (``TracingTransport``)."""
        traced = self._scope is not None or self._unsampled is not None
        return without_trace_headers(headers) if traced else headers

    def __enter__(self) -> RequestRecorder:
        self._started = time.perf_counter()
        if self._metrics is not None:
            self._metrics.in_flight.inc()
        if self._scope is not None:
            self._span = self._scope.__enter__()
        elif self._unsampled is not None:
            UNSAMPLED_IDS.set(self._unsampled)
        return self

    def failed(self, error: GraphRequestError) -> None:
        """The request ends in ``error`` (its status is set separately, by ``answered``)."""
        if error.status >= 500:
            log.error("request failed: %s", error.cause, extra={"graph": self.graph})
        if self._errors is not None:
            self._errors.request_failed(self.graph, error)

    def answered(self, status: int) -> None:
        self.status = status

    def keep_open(self) -> None:
        """The reply is streamed: leaving the ``with`` block does not end the recording; the
        relay of the stream ends it with ``close``."""
        self._open = True

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._open and kind is None:
            return
        self.close(kind, error, traceback)

    def close(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """End the recording, as the request ended (``kind`` is the exception, if any)."""
        self._open = False
        elapsed = time.perf_counter() - self._started
        if kind is not None and issubclass(kind, (asyncio.CancelledError, GeneratorExit)):
            self.status = CLIENT_CLOSED
            if self._errors is not None:
                self._errors.client_closed(self.graph)
        status = self.status
        if kind is None:  # answered (not cancelled on the way)
            span = self._span
            if span is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
            if self.access_log:
                duration_ms = round(elapsed * 1000, 3)
                log.info(
                    "request",
                    extra={"graph": self.graph, "status": status, "duration_ms": duration_ms},
                )
        if self._scope is not None:
            self._scope.__exit__(kind, error, traceback)
        elif self._unsampled is not None:
            UNSAMPLED_IDS.set(None)
        metrics = self._metrics
        if metrics is not None:
            metrics.in_flight.dec()
            upstream = self.upstream.seconds if self.upstream is not None else 0.0
            metrics.finished(status, elapsed, upstream)
