"""The light tracer's own sampling decisions against the SDK samplers they stand in for."""

from __future__ import annotations

import logging
import random

import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from infergraph.router.engine.plan import NodePlan, RouterType
from infergraph.router.engine.transport import Headers, Reply, StepCall, parse_target
from infergraph.router.observability.logs import JSONFormatter
from infergraph.router.observability.recorder import RequestRecorder
from infergraph.router.observability.spans import (
    LightSpan,
    LightTracer,
    SpanValues,
    decision_rule,
    root_rule,
)
from infergraph.router.observability.telemetry import Telemetry
from infergraph.router.observability.tracing import (
    TracingObserver,
    TracingTransport,
    header_map,
    server_span,
)

SAMPLERS: dict[str, Sampler] = {
    "always_on": ALWAYS_ON,
    "always_off": ALWAYS_OFF,
    "traceidratio": TraceIdRatioBased(0.3),
    "parentbased_always_on": ParentBased(ALWAYS_ON),
    "parentbased_always_off": ParentBased(ALWAYS_OFF),
    "parentbased_traceidratio": ParentBasedTraceIdRatio(0.3),
    "tiny ratio": ParentBasedTraceIdRatio(1e-9),
}


def parents(rng: random.Random, trace_id: int) -> list[SpanContext]:
    state = TraceState([("vendor", "x")])
    return [
        SpanContext(0, 0, False),  # none: a root
        SpanContext(trace_id, rng.getrandbits(64) | 1, True, TraceFlags(1), state),
        SpanContext(trace_id, rng.getrandbits(64) | 1, True, TraceFlags(0)),
        SpanContext(trace_id, rng.getrandbits(64) | 1, False, TraceFlags(1)),
        SpanContext(trace_id, rng.getrandbits(64) | 1, False, TraceFlags(0), state),
    ]


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_decisions_are_the_sdk_samplers(name: str) -> None:
    sampler = SAMPLERS[name]
    decide, decide_root = decision_rule(sampler), root_rule(sampler)
    assert decide is not None
    assert decide_root is not None
    rng = random.Random(name)
    seen = set()
    for _ in range(2000):
        trace_id = rng.getrandbits(128) | 1
        for parent in parents(rng, trace_id):
            context = trace.set_span_in_context(NonRecordingSpan(parent))
            expected = sampler.should_sample(context, trace_id, "span")
            ours = decide(parent, trace_id)
            assert ours == (expected.decision is Decision.RECORD_AND_SAMPLE), (parent, trace_id)
            if not parent.is_valid:
                assert decide_root(trace_id) == ours
            seen.add(ours)
    if name in ("traceidratio", "parentbased_traceidratio"):
        assert seen == {True, False}


def test_other_samplers_are_asked_themselves() -> None:
    custom = ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    assert decision_rule(custom) is None
    assert root_rule(custom) is None
    shipped: list[object] = []
    tracer = LightTracer(custom, shipped.append)
    unsampled_remote = SpanContext(5, 7, True, TraceFlags(0))
    span = tracer.start_span("x", trace.set_span_in_context(NonRecordingSpan(unsampled_remote)))
    assert span.is_recording()  # what the custom sampler says, not the default rule


def test_a_child_carries_its_parents_trace_and_state() -> None:
    shipped: list[object] = []
    tracer = LightTracer(ParentBased(ALWAYS_ON), shipped.append)
    state = TraceState([("vendor", "x")])
    caller = SpanContext(0xABC, 0xDEF, True, TraceFlags(1), state)
    root = tracer.start_span("root", trace.set_span_in_context(NonRecordingSpan(caller)))
    assert isinstance(root, LightSpan)
    child = tracer.child(root, "child", trace.SpanKind.CLIENT, {"k": "v"})
    context = child.get_span_context()
    assert (context.trace_id, context.trace_state, context.trace_flags) == (0xABC, state, 1)
    assert context.span_id not in (0, root.get_span_context().span_id)
    child.end()
    root.end()
    assert [v[0] for v in shipped] == ["child", "root"]  # type: ignore[index]
    assert shipped[0][5] == root.get_span_context().span_id  # type: ignore[index]


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REQUEST_HEADERS: dict[str, tuple[tuple[str, str], ...]] = {
    "no trace context": (("Content-Type", "application/json"),),
    "sampled caller": (("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01"),),
    "unsampled caller": (("Traceparent", f"00-{TRACE}-00f067aa0ba902b7-00"),),
    "other flags": (("traceparent", f"00-{TRACE}-00f067aa0ba902b7-02"),),
    "two traceparents": (
        ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-00"),
        ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-01"),
    ),
    "with tracestate": (
        ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-00"),
        ("tracestate", "vendor=x"),
    ),
    "with baggage": (("traceparent", f"00-{TRACE}-00f067aa0ba902b7-00"), ("baggage", "k=v")),
    "a later version": (("traceparent", f"01-{TRACE}-00f067aa0ba902b7-00-extra"),),
    "upper-case hex": (("traceparent", f"00-{TRACE.upper()}-00F067AA0BA902B7-00"),),
    "zero trace id": (("traceparent", f"00-{'0' * 32}-00f067aa0ba902b7-00"),),
    "zero span id": (("traceparent", f"00-{TRACE}-{'0' * 16}-00"),),
    "padded": (("traceparent", f" 00-{TRACE}-00f067aa0ba902b7-00 "),),
}


def discard(values: SpanValues) -> None:
    """A sink for spans a test does not read."""


Decided = tuple[bool, tuple[tuple[str, str], ...], tuple[int, int, int] | None]


def recorded(tracer: LightTracer, headers: tuple[tuple[str, str], ...], quick: bool) -> Decided:
    """What a request's recorder decided and sends on, made the router's way (``quick``) or
    the API's way, from the same random draws."""
    random.seed(7)
    if quick:
        recorder = Telemetry(tracer=tracer).recorder("g", headers, "/")
    else:
        scope = server_span(tracer, header_map(headers), "g", "/")
        recorder = RequestRecorder("g", None, None, scope, False)
    with recorder:
        span = trace.get_current_span().get_span_context()
        ids = (span.trace_id, span.span_id, span.trace_flags) if span.is_valid else None
    return recorder.traced, recorder.trace_headers, ids


@pytest.mark.parametrize("headers", sorted(REQUEST_HEADERS))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_the_quick_decision_is_the_apis(name: str, headers: str) -> None:
    # Unsampled requests skip the API's spans and contexts; sampled roots keep the trace id
    # drawn to decide. Either way the outcome, ids included, is what the API's path gives.
    tracer = LightTracer(SAMPLERS[name], discard)
    quick = recorded(tracer, REQUEST_HEADERS[headers], quick=True)
    api = recorded(tracer, REQUEST_HEADERS[headers], quick=False)
    assert quick[:2] == api[:2]
    if quick[0]:  # sampled: the same span is current
        assert quick[2] == api[2]


def test_a_ratio_samples_roots_at_its_rate_once() -> None:
    # The trace id drawn to decide is the one the sampled span gets: a second draw and a
    # second decision would sample at the rate squared.
    tracer = LightTracer(ParentBasedTraceIdRatio(0.5), discard)
    telemetry = Telemetry(tracer=tracer)
    random.seed(11)
    sampled = sum(telemetry.recorder("g", (), "/").traced for _ in range(4000))
    assert 1800 < sampled < 2200


def test_log_lines_of_an_unsampled_request_name_its_trace() -> None:
    tracer = LightTracer(ParentBased(ALWAYS_ON), discard)
    headers = (("traceparent", f"00-{TRACE}-00f067aa0ba902b7-00"),)
    recorder = Telemetry(tracer=tracer).recorder("g", headers, "/")
    record = logging.LogRecord("infergraph", logging.INFO, __file__, 1, "inside", None, None)
    with recorder:
        inside = orjson.loads(JSONFormatter().format(record))
    after = orjson.loads(JSONFormatter().format(record))
    sent = dict(recorder.trace_headers)["traceparent"]
    assert sent == f"00-{inside['trace_id']}-{inside['span_id']}-00"
    assert inside["trace_id"] == TRACE
    assert "trace_id" not in after


class ByName(Sampler):
    """A custom sampler (asked itself, not ``decision_rule``'s): each span's decision by the
    first word of its name."""

    def __init__(self, decisions: dict[str, Decision]) -> None:
        self.decisions = decisions

    def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
        name = str(args[2] if len(args) > 2 else kwargs["name"])
        first = name.split(maxsplit=1)[0]
        return SamplingResult(self.decisions.get(first, Decision.RECORD_AND_SAMPLE))

    def get_description(self) -> str:
        return "ByName"


async def traced_call(decisions: dict[str, Decision]) -> tuple[list[str], Headers]:
    """One request with a node and a step call, under a custom sampler: the spans shipped and
    the trace headers the call carried."""
    shipped: list[SpanValues] = []
    tracer = LightTracer(ByName(decisions), shipped.append)
    sent: list[StepCall] = []

    class Inner:
        async def send(self, call: StepCall) -> Reply:
            sent.append(call)
            return Reply(200, b"{}", "application/json")

    observer = TracingObserver(tracer)
    node = NodePlan(name="root", router_type=RouterType.SEQUENCE, steps=())
    call = StepCall(parse_target("http://model.test/predict"), b"{}", (), None, step="a")
    with server_span(tracer, {}, "g", "/"):
        token = observer.node_started(node)
        await TracingTransport(Inner(), tracer).send(call)
        observer.node_finished(token, node, None, None)
    return [str(v[0]) for v in shipped], sent[0].trace_headers


async def test_a_child_the_sampler_drops_leaves_the_call_under_it_unsampled() -> None:
    names, headers = await traced_call({"node": Decision.DROP})
    assert names == ["graph g"]  # no node span, and no call span under the dropped node
    assert headers[0][0] == "traceparent"
    assert headers[0][1].endswith("-00")


async def test_a_span_recorded_but_not_sampled_is_not_exported_and_propagates_00() -> None:
    names, headers = await traced_call({"step": Decision.RECORD_ONLY})
    assert names == ["node root", "graph g"]  # as the SDK's processors: sampled spans only
    assert headers[0][1].endswith("-00")
