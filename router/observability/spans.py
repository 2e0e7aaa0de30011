"""A light tracer for the router's hot path, behind OpenTelemetry's tracing API.

The SDK's spans cost the router most of tracing's price (measured with py-spy: creating, ending
and processing an SDK span took more CPU than the downstream call it described). This tracer
implements the same API (``Tracer.start_span``; spans with attributes, events, status and
``end``) with plain dicts and tuples: the sampler is the SDK's, read from ``OTEL_TRACES_SAMPLER``
as usual; a span that is not recording is the API's ``NonRecordingSpan``; an ended span goes to
``sink`` as one tuple (``SpanValues``) that the exporter process turns back into an SDK span.
Context propagation (``traceparent``, ``tracestate``) is the API's own, since these spans live in
the API's context like any other.
"""

from __future__ import annotations

import random
import re
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision, Sampler, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes, AttributeValue


def _span_id() -> int:
    """A random, valid span id (as the SDK's ``RandomIdGenerator``)."""
    while True:
        span_id = random.getrandbits(64)
        if span_id:
            return span_id


SAMPLED = TraceFlags(TraceFlags.SAMPLED)
NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)

# name, trace id, span id, flags, trace state, parent span id (0: none), parent remote, kind,
# start, end, attributes, status code, status description, events, scope name
SpanValues = tuple[
    str, int, int, int, str, int, bool, int, int, int,
    dict[str, Any], int, str, tuple[Any, ...], str,
]  # fmt: skip
Sink = Callable[[SpanValues], None]


class LightSpan(trace.Span):
    """A recording span: values in plain slots until ``end`` hands them to the sink. Its
    ``SpanContext`` is made only when asked for: the router's own paths read the ids
    (``trace_id``, ``span_id``), ``flags`` and ``trace_state`` directly. It is sampled (flags
    1) unless a custom sampler said record only: such a span is not handed to the sink, as
    the SDK's span processors export only sampled spans."""

    __slots__ = (
        "_attributes",
        "_context",
        "_description",
        "_end",
        "_events",
        "_kind",
        "_name",
        "_parent_id",
        "_parent_remote",
        "_scope",
        "_sink",
        "_start",
        "_status",
        "flags",
        "span_id",
        "trace_id",
        "trace_state",
    )

    def __init__(  # noqa: PLR0917 (positional: one is made per node and step call)
        self,
        sink: Sink,
        name: str,
        trace_id: int,
        span_id: int,
        trace_state: TraceState | None,
        parent_id: int,
        parent_remote: bool,
        kind: SpanKind,
        attributes: dict[str, Any],
        start: int,
        scope: str,
        flags: int = 1,
        context: SpanContext | None = None,
    ) -> None:
        """``parent_id`` 0: a root; ``trace_state`` None: none (or an empty one); ``context``:
        the span's context, when the caller has already made it."""
        self._sink = sink
        self._name = name
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.trace_state = trace_state
        self._parent_id = parent_id
        self._parent_remote = parent_remote
        self._kind = kind
        self._attributes = attributes
        self._events: list[tuple[str, int, dict[str, Any]]] | None = None
        self._start = start
        self._end = 0
        self._status = StatusCode.UNSET
        self._description = ""
        self._scope = scope
        self._context = context

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            context = self._context = SpanContext(
                self.trace_id, self.span_id, False, TraceFlags(self.flags), self.trace_state
            )
        return context

    def is_recording(self) -> bool:
        return not self._end

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._attributes.update(attributes)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._events is None:
            self._events = []
        self._events.append((name, timestamp or time.time_ns(), dict(attributes or {})))

    def update_name(self, name: str) -> None:
        self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._status is StatusCode.OK:
            return  # final, as the specification says
        if isinstance(status, Status):
            self._status, self._description = status.status_code, status.description or ""
        else:
            self._status, self._description = status, description or ""

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        event: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end:
            return
        self._end = end_time or time.time_ns()
        if not self.flags & TraceFlags.SAMPLED:
            return  # recorded, not sampled: not exported
        state = self.trace_state
        events = self._events
        self._sink(
            (
                self._name,
                self.trace_id,
                self.span_id,
                self.flags,
                state.to_header() if state is not None else "",
                self._parent_id,
                self._parent_remote,
                self._kind._value_,
                self._start,
                self._end,
                self._attributes,
                self._status._value_,
                self._description,
                tuple(events) if events is not None else (),
                self._scope,
            )
        )


_PARENT_DELEGATES = (
    ",remoteParentSampled:AlwaysOnSampler,remoteParentNotSampled:AlwaysOffSampler"
    ",localParentSampled:AlwaysOnSampler,localParentNotSampled:AlwaysOffSampler}"
)
_RATIO = re.compile(r"TraceIdRatioBased\{([^}]*)\}")
_ID_LIMIT = (1 << 64) - 1

# A sampling decision made without the SDK's objects: the parent's span context (invalid for a
# root) and the trace id give sampled or not; the trace state is always the parent's.
Decide = Callable[[SpanContext, int], bool]


def _root_rule(description: str) -> Callable[[int], bool] | None:
    """Whether a trace id is sampled, for the SDK's root samplers, from their descriptions."""
    if description == "AlwaysOnSampler":
        return lambda trace_id: True
    if description == "AlwaysOffSampler":
        return lambda trace_id: False
    match = _RATIO.fullmatch(description)
    if match is None:
        return None
    bound = TraceIdRatioBased.get_bound_for_rate(float(match.group(1)))
    return lambda trace_id: trace_id & _ID_LIMIT < bound


def _parent_based_root(description: str) -> str | None:
    """The root sampler's description in a ``ParentBased`` sampler's with the default
    delegates; None for any other sampler."""
    if description.startswith("ParentBased{root:") and description.endswith(_PARENT_DELEGATES):
        return description[len("ParentBased{root:") : -len(_PARENT_DELEGATES)]
    return None


def root_rule(sampler: Sampler) -> Callable[[int], bool] | None:
    """``decision_rule``'s decision for a span without a valid parent, by its trace id."""
    description = sampler.get_description()
    return _root_rule(_parent_based_root(description) or description)


def decision_rule(sampler: Sampler) -> Decide | None:
    """The sampler's decision as a plain function, for the samplers ``OTEL_TRACES_SAMPLER``
    names (always_on, always_off, traceidratio and their parentbased_ forms with the default
    delegates); None for any other sampler, which is then asked itself."""
    description = sampler.get_description()
    root_description = _parent_based_root(description)
    if root_description is not None:
        root = _root_rule(root_description)
        if root is None:
            return None
        sampled_root = root

        def parent_based(parent: SpanContext, trace_id: int) -> bool:
            if parent.is_valid:
                return parent.trace_flags.sampled
            return sampled_root(trace_id)

        return parent_based
    rule = _root_rule(description)
    if rule is None:
        return None
    sampled = rule
    return lambda parent, trace_id: sampled(trace_id)


class LightTracer(trace.Tracer):
    """Starts ``LightSpan``s, sampled by ``sampler`` (the SDK's, from ``OTEL_TRACES_SAMPLER``).

    For the samplers the environment can name, the decision is made by ``decision_rule``
    (the same outcome without the SDK's context and result objects); a child of a recording
    ``LightSpan`` started with ``child`` needs no context lookup at all."""

    def __init__(self, sampler: Sampler, sink: Sink, scope: str = "infergraph.router") -> None:
        self.sampler = sampler
        self.sink = sink
        self.scope = scope
        self.ids = RandomIdGenerator()
        # The sampler as a plain function (None: it is asked itself), and its decision for a
        # root span, by trace id.
        self.decide = decision_rule(sampler)
        self.decide_root = root_rule(sampler)

    def child(
        self, parent: LightSpan, name: str, kind: SpanKind, attributes: dict[str, Any]
    ) -> trace.Span:
        """A span under ``parent`` (recording, so sampled), as ``start_span`` would start it
        with ``parent`` current. Every rule ``decision_rule`` makes samples the children of a
        sampled span (the parent-based ones by the parent's flag, the others by the trace id,
        which parent and child share), so with one no decision is made here."""
        if self.decide is None:
            return self.start_span(name, trace.set_span_in_context(parent), kind, attributes)
        return LightSpan(
            self.sink,
            name,
            parent.trace_id,
            _span_id(),
            parent.trace_state,
            parent.span_id,
            False,
            kind,
            attributes,
            time.time_ns(),
            self.scope,
        )

    def start_root(
        self, trace_id: int, name: str, kind: SpanKind, attributes: dict[str, Any]
    ) -> LightSpan:
        """A sampled root span in trace ``trace_id``, drawn (and its sampling decided) by the
        caller: as ``start_span`` starts it with no current span."""
        return LightSpan(
            self.sink,
            name,
            trace_id,
            _span_id(),
            None,
            0,
            False,
            kind,
            dict(attributes),
            time.time_ns(),
            self.scope,
        )

    def start_span(  # noqa: PLR0917 (the API's signature)
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        trace_id = parent.trace_id if parent.is_valid else self.ids.generate_trace_id()
        if self.decide is not None and not links:
            sampled = self.decide(parent, trace_id)
            state = parent.trace_state if parent.is_valid else None
            span_context = SpanContext(
                trace_id, _span_id(), False, SAMPLED if sampled else NOT_SAMPLED, state
            )
            if not sampled:
                return NonRecordingSpan(span_context)
            values = dict(attributes) if attributes else {}
        else:
            sampling = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            span_context = SpanContext(
                trace_id,
                self.ids.generate_span_id(),
                False,
                SAMPLED if sampling.decision is Decision.RECORD_AND_SAMPLE else NOT_SAMPLED,
                sampling.trace_state,
            )
            if sampling.decision is Decision.DROP:
                return NonRecordingSpan(span_context)
            values = dict(attributes) if attributes else {}
            if sampling.attributes:
                values.update(sampling.attributes)
        valid = parent.is_valid
        return LightSpan(
            self.sink,
            name,
            span_context.trace_id,
            span_context.span_id,
            span_context.trace_state or None,
            parent.span_id if valid else 0,
            parent.is_remote if valid else False,
            kind,
            values,
            start_time or time.time_ns(),
            self.scope,
            int(span_context.trace_flags),
            span_context,  # made for the decision: not made again when asked for
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # noqa: PLR0917 (the API's signature)
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current
