"""The light tracer's own sampling decisions against the SDK samplers they stand in for."""

from __future__ import annotations

import random

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from infergraph.router.observability.spans import LightSpan, LightTracer, decision_rule

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
    decide = decision_rule(sampler)
    assert decide is not None
    rng = random.Random(name)
    seen = set()
    for _ in range(2000):
        trace_id = rng.getrandbits(128) | 1
        for parent in parents(rng, trace_id):
            context = trace.set_span_in_context(NonRecordingSpan(parent))
            expected = sampler.should_sample(context, trace_id, "span")
            ours = decide(parent, trace_id)
            assert ours == (expected.decision is Decision.RECORD_AND_SAMPLE), (parent, trace_id)
            seen.add(ours)
    if name in ("traceidratio", "parentbased_traceidratio"):
        assert seen == {True, False}


def test_other_samplers_are_asked_themselves() -> None:
    custom = ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    assert decision_rule(custom) is None
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
