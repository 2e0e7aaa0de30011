"""OpenTelemetry tracing: a server span per graph request (continuing an incoming W3C
``traceparent``), a span per node, and a client span per step call whose context travels to the
model server in ``traceparent``/``tracestate`` whatever ``PROPAGATE_HEADERS`` says.

Exported over OTLP, configured by the standard ``OTEL_*`` variables (endpoint, protocol,
sampler, service name). With tracing off none of this is installed, so it costs nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from infergraph.router.engine.errors import GraphRequestError
from infergraph.router.engine.plan import NodePlan, RouterType, StepPlan
from infergraph.router.engine.transport import Headers, Reply, StepCall, Transport
from infergraph.router.observability.spans import LightSpan, LightTracer

TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# Header names are lowered only when their length is one of these (a cheap first test).
_TRACE_HEADER_LENGTHS = frozenset(len(name) for name in TRACE_HEADERS)
# The trace and span ids of the unsampled request being served, when ``quick_decision`` made
# its context and no span is current: for log lines (logs.py).
UNSAMPLED_IDS: ContextVar[tuple[int, int] | None] = ContextVar("unsampled_ids", default=None)
# The light span current in this context, a node's or a step call's: kept in a variable of its
# own, as setting one costs a fraction of attaching an OpenTelemetry context. None: the API's
# current span is the current one (the request's, or any span of another tracer).
_LIGHT_CURRENT: ContextVar[LightSpan | None] = ContextVar("light_current", default=None)


def current_span() -> Span:
    """The current span: the innermost light node or call span, else the API's."""
    span = _LIGHT_CURRENT.get()
    return span if span is not None else trace.get_current_span()


Entered = tuple[Span, Token[LightSpan | None], object]


def _enter(span: Span) -> Entered:
    """Make ``span`` current: (span, tokens to leave it with). Any other span (another
    tracer's, or a custom sampler's unsampled one) is attached to the API's context, with no
    light span current over it."""
    if isinstance(span, LightSpan):
        return span, _LIGHT_CURRENT.set(span), None
    return span, _LIGHT_CURRENT.set(None), otel_context.attach(trace.set_span_in_context(span))


def _leave(entered: Entered) -> None:
    """The span ``_enter`` made current is no longer: its parent is."""
    if entered[2] is not None:
        otel_context.detach(entered[2])  # type: ignore[arg-type]
    _LIGHT_CURRENT.reset(entered[1])


def make_exporter(protocol: str) -> SpanExporter:
    """The OTLP exporter for ``grpc`` or ``http/protobuf``; endpoints come from ``OTEL_*``."""
    if protocol == "grpc":
        return GRPCSpanExporter()
    return HTTPSpanExporter()


def make_provider(service_name: str, processor: SpanProcessor) -> TracerProvider:
    """A tracer provider (sampler from ``OTEL_TRACES_SAMPLER``) handing spans to ``processor``
    (the SDK path, ``--span-export thread``; the default path is ``spans.LightTracer``)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(processor)
    return provider


def _start_child(
    tracer: trace.Tracer, parent: Span, name: str, kind: SpanKind, attributes: dict[str, Any]
) -> Span:
    """A span under ``parent``, the current span: without a context lookup when both are the
    light tracer's."""
    if isinstance(parent, LightSpan) and isinstance(tracer, LightTracer):
        return tracer.child(parent, name, kind, attributes)
    return tracer.start_span(name, kind=kind, attributes=attributes)


class TracingObserver:
    """Node spans, as children of the current span (the request's, or the parent node's)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def node_started(self, node: NodePlan) -> object:
        current = current_span()
        if not current.is_recording():
            return None  # an unsampled request: no spans below it either
        attributes: dict[str, Any] = {
            "infergraph.node": node.name,
            "infergraph.router_type": node.router_type.value,
        }
        if node.router_type is RouterType.ENSEMBLE:
            attributes["infergraph.branches"] = [s.key for s in node.steps]
        span = _start_child(
            self.tracer, current, f"node {node.name}", SpanKind.INTERNAL, attributes
        )
        return _enter(span)

    def node_finished(
        self, token: object, node: NodePlan, reply: Reply | None, error: BaseException | None
    ) -> None:
        if token is None:
            return
        assert isinstance(token, tuple)
        span: Span = token[0]
        if reply is not None:
            span.set_attribute("infergraph.status", reply.status)
        if error is not None:
            _record(span, error)
        _leave(token)
        span.end()

    def step_chosen(self, node: NodePlan, step: StepPlan, reason: str) -> None:
        span = current_span()
        if not span.is_recording():
            return
        span.set_attribute("infergraph.chosen_step", step.key)
        span.set_attribute("infergraph.chosen_because", reason)
        if node.router_type is RouterType.SPLITTER:
            span.set_attribute("infergraph.chosen_weight", step.weight)

    def branches_cancelled(self, node: NodePlan, steps: Sequence[StepPlan]) -> None:
        current_span().set_attribute("infergraph.cancelled", [s.key for s in steps])

    def policy_event(self, step: StepPlan | None, event: str, detail: Mapping[str, object]) -> None:
        """An event on the current span (the step's node, or the request for shedding)."""
        span = current_span()
        if not span.is_recording():
            return
        attributes: dict[str, Any] = {f"infergraph.{k}": v for k, v in detail.items()}
        if step is not None:
            attributes["infergraph.step"] = step.key
        span.add_event(event, attributes)


def _record(span: Span, error: BaseException) -> None:
    if isinstance(error, GraphRequestError):  # an expected outcome: status, no stack trace
        span.set_attribute("infergraph.error.status", error.status)
        span.set_status(Status(StatusCode.ERROR, error.cause))
    elif isinstance(error, asyncio.CancelledError):
        span.set_attribute("infergraph.was_cancelled", True)
    else:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class TracingTransport:
    """A client span around every step call, and its trace context in the request headers."""

    def __init__(self, inner: Transport, tracer: trace.Tracer) -> None:
        self.inner = inner
        self.tracer = tracer

    async def send(self, call: StepCall) -> Reply:
        current = current_span()
        if not current.is_recording():
            # An unsampled request: no client span, but the model server still learns the
            # trace (and that it is not sampled) from the caller's context.
            return await self.inner.send(_with_trace_headers(call, current))
        attributes: dict[str, Any] = {
            "url.full": call.target.url,
            "infergraph.step": call.step,
            "infergraph.protocol": str(call.protocol or "http"),
            "infergraph.attempt": call.attempt,
            "http.request.body.size": len(call.body),
        }
        if call.hedge:
            attributes["infergraph.hedge"] = True
        span = _start_child(self.tracer, current, f"step {call.step}", SpanKind.CLIENT, attributes)
        entered = _enter(span)
        try:
            reply = await self.inner.send(_with_trace_headers(call, span))
            span.set_attribute("http.response.status_code", reply.status)
            if reply.attempts > 1:  # the transport sent it again on a fresh connection
                span.set_attribute("infergraph.attempt", call.attempt + reply.attempts - 1)
            if reply.stream is None:
                span.set_attribute("http.response.body.size", len(reply.body))
            if reply.status >= 400:
                span.set_status(Status(StatusCode.ERROR, f"status {reply.status}"))
            return reply
        except BaseException as error:
            _record(span, error)
            raise
        finally:
            _leave(entered)
            span.end()


# The fields of the default propagators (W3C trace context and baggage). With them in place,
# the trace headers are written and read here directly; with any others, by the API.
_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
_BAGGAGE = W3CBaggagePropagator()


_checked: list[Any] = [None, False]  # the global propagator last looked at, and the answer


def _w3c_propagation() -> bool:
    textmap = propagate.get_global_textmap()
    if textmap is not _checked[0]:
        _checked[:] = [textmap, textmap.fields == _W3C_FIELDS]
    return bool(_checked[1])


def _traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """A W3C ``traceparent`` value, version 00, as ``TraceContextTextMapPropagator`` writes it."""
    # %-formatting: 0.3 us a header under the f-string with the same format specifications.
    return "00-%032x-%016x-%02x" % (trace_id, span_id, flags)  # noqa: UP031


def trace_headers(span: Span) -> tuple[tuple[str, str], ...]:
    """The trace context headers for ``span`` (with the current context's baggage), as the
    global propagator writes them."""
    carrier: dict[str, str] = {}
    if _w3c_propagation():
        # As TraceContextTextMapPropagator.inject writes them; a light span (so sampled) gives
        # its ids without making a SpanContext.
        ids: tuple[int, int, int, TraceState | None] | None = None
        if isinstance(span, LightSpan):
            ids = (span.trace_id, span.span_id, span.flags, span.trace_state)
        else:
            context = span.get_span_context()
            if context.is_valid:
                state = context.trace_state or None
                ids = (context.trace_id, context.span_id, context.trace_flags, state)
        if ids is not None:
            carrier["traceparent"] = _traceparent(ids[0], ids[1], ids[2])
            if ids[3] is not None:
                carrier["tracestate"] = ids[3].to_header()
        if baggage.get_all():
            _BAGGAGE.inject(carrier)
    else:
        propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def _with_trace_headers(call: StepCall, span: Span) -> StepCall:
    """The call with ``traceparent``/``tracestate`` for ``span``, the current span (any the
    client sent, which named the caller's span, not ours, are gone: ``RequestRecorder.outgoing``
    dropped them from the headers every call forwards)."""
    return call.with_headers(call.headers, trace_headers(span))


def without_trace_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``headers`` without the trace context headers (the client's name the caller's span)."""
    for name, _ in headers:
        if len(name) in _TRACE_HEADER_LENGTHS and name.lower() in TRACE_HEADERS:
            return tuple(h for h in headers if h[0].lower() not in TRACE_HEADERS)
    return headers


def _extract(headers: Mapping[str, str]) -> otel_context.Context | None:
    """The caller's context from the request's headers (by lower-case name); None, the
    current context, when it sent none of the default propagators' headers."""
    if _w3c_propagation() and not _W3C_FIELDS.intersection(headers):
        return None
    return propagate.extract(headers)


_CANONICAL_PARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NEEDS_THE_API = frozenset({"tracestate", "baggage"})
_W3C_LENGTHS = frozenset(len(name) for name in _W3C_FIELDS)


def quick_decision(tracer: trace.Tracer, headers: Headers) -> tuple[int, int | None] | None:
    """A request's sampling decision, made from its headers without the API's context and span
    objects: ``(trace id, span id)`` for a request that is not sampled (every call carries that
    context, not sampled); ``(trace id, None)`` for a sampled root whose trace id was drawn here
    (``server_span`` starts its span in that trace). None leaves it all to the API: another
    tracer, sampler or propagator, a ``tracestate`` or ``baggage`` header, a ``traceparent``
    that is not version 00's plain form, or a sampled caller. The outcome is the API's."""
    if not isinstance(tracer, LightTracer) or not _w3c_propagation():
        return None
    decide, decide_root = tracer.decide, tracer.decide_root
    if decide is None or decide_root is None:
        return None
    parent_header = None
    for name, value in headers:
        if len(name) not in _W3C_LENGTHS:
            continue
        lowered = name.lower()
        if lowered == "traceparent":
            if parent_header is None:  # the first, as the propagator reads them
                parent_header = value
        elif lowered in _NEEDS_THE_API:
            return None
    if parent_header is None:
        trace_id = tracer.ids.generate_trace_id()
        if decide_root(trace_id):
            return trace_id, None
        return trace_id, tracer.ids.generate_span_id()
    match = _CANONICAL_PARENT.fullmatch(parent_header)
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return None  # invalid: the propagator starts a new trace
    parent = SpanContext(trace_id, span_id, True, TraceFlags(int(match[3], 16)))
    if decide(parent, trace_id):
        return None
    return trace_id, tracer.ids.generate_span_id()


def unsampled_headers(trace_id: int, span_id: int) -> Headers:
    """What ``trace_headers`` writes for a span that is not sampled, in a context without
    baggage or trace state."""
    return (("traceparent", _traceparent(trace_id, span_id, 0)),)


def header_map(headers: Headers) -> dict[str, str]:
    """Headers by lower-case name (the first value of each): for trace context extraction."""
    found: dict[str, str] = {}
    for key, value in headers:
        found.setdefault(key.lower(), value)
    return found


# The most of a request's path a span keeps (Envoy's max_path_tag_length, 256 by default): the
# path is the client's to choose, and each span is queued for export.
URL_PATH_LIMIT = 256


class server_span:
    """The request's span, continuing the caller's trace when it sent ``traceparent``; current
    while the block runs. A class rather than a generator: it is on every request's path."""

    __slots__ = ("light", "span", "token")

    def __init__(
        self,
        tracer: trace.Tracer,
        headers: Mapping[str, str],
        graph: str,
        path: str,
        trace_id: int | None = None,
    ) -> None:
        """``trace_id``: the sampled root's, from ``quick_decision`` (a ``LightTracer``)."""
        if len(path) > URL_PATH_LIMIT:  # the client's: as Envoy's max_path_tag_length
            path = path[:URL_PATH_LIMIT]
        attributes = {"infergraph.graph": graph, "http.request.method": "POST", "url.path": path}
        name = f"graph {graph}"
        if trace_id is not None and isinstance(tracer, LightTracer):
            self.span: Span = tracer.start_root(trace_id, name, SpanKind.SERVER, attributes)
        else:
            self.span = tracer.start_span(
                name, context=_extract(headers), kind=SpanKind.SERVER, attributes=attributes
            )
        self.token: object = None
        self.light: Token[LightSpan | None] | None = None

    @property
    def sampled(self) -> bool:
        return self.span.is_recording()

    def __enter__(self) -> Span:
        """The span is current in the API's context, and as the light span under which the
        request's node spans start (none left over from an earlier request on this task)."""
        span = self.span
        self.token = otel_context.attach(trace.set_span_in_context(span))
        self.light = _LIGHT_CURRENT.set(span if isinstance(span, LightSpan) else None)
        return span

    def __exit__(self, *exc: object) -> None:
        if self.light is not None:
            _LIGHT_CURRENT.reset(self.light)
        otel_context.detach(self.token)  # type: ignore[arg-type]
        self.span.end()
