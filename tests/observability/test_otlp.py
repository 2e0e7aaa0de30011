"""The light spans' own OTLP encoding against the SDK's: the same request, field for field."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode

from infergraph.router.observability.otlp import SpanEncoder, TraceEncoder, any_value
from infergraph.router.observability.span_export import rebuild
from infergraph.router.observability.spans import LightTracer, SpanValues

RESOURCE = Resource.create({"service.name": "infergraph-test"})


def sdk_request(values: list[SpanValues]) -> ExportTraceServiceRequest:
    request: ExportTraceServiceRequest = encode_spans([rebuild(v, RESOURCE) for v in values])
    return request


def ours(values: list[SpanValues]) -> ExportTraceServiceRequest:
    request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(
        TraceEncoder(RESOURCE).encode(values)
    )
    return request


def span(**changes: Any) -> SpanValues:
    base: dict[str, Any] = {
        "name": "step a",
        "trace_id": 0x4BF92F3577B34DA6A3CE929D0E0E4736,
        "span_id": 0x00F067AA0BA902B7,
        "flags": 1,
        "state": "",
        "parent_id": 0,
        "parent_remote": False,
        "kind": SpanKind.CLIENT.value,
        "start": 1_764_000_000_000_000_000,
        "end": 1_764_000_000_000_250_000,
        "attributes": {},
        "code": StatusCode.UNSET.value,
        "description": "",
        "events": (),
        "scope": "infergraph.router",
    }
    base.update(changes)
    return tuple(base.values())


CASES: dict[str, list[SpanValues]] = {
    "root span": [span()],
    "remote parent": [span(parent_id=0x1234, parent_remote=True)],
    "local parent": [span(parent_id=0x1234)],
    "trace state": [span(state="rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")],
    "invalid trace state entries": [span(state="ok=1,BAD KEY=2")],
    "every kind": [span(kind=k.value) for k in SpanKind],
    "error with description": [span(code=StatusCode.ERROR.value, description="status 503")],
    "ok status drops a description": [span(code=StatusCode.OK.value, description="fine")],
    "attribute types": [
        span(
            attributes={
                "s": "text",
                "empty": "",
                "t": True,
                "f": False,
                "zero": 0,
                "i": 200,
                "negative": -5,
                "big": 2**62,
                "d": 0.25,
                "strings": ["a", "b"],
                "ints": (1, 2, 3),
                "floats": [1.5],
                "bools": [True, False],
                "unicode": "héllo ✓",
            }
        )
    ],
    "an int64 overflow is left out": [span(attributes={"ok": 1, "huge": 2**64})],
    "events": [
        span(
            events=(
                ("exception", 1_764_000_000_000_100_000, {"exception.type": "ValueError"}),
                ("plain", 1_764_000_000_000_200_000, {}),
            )
        )
    ],
    "two scopes interleaved": [
        span(scope="a"),
        span(scope="b", span_id=2),
        span(scope="a", span_id=3),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_request_is_the_sdks(case: str) -> None:
    values = CASES[case]
    assert ours(values) == sdk_request(values)


def test_spans_a_traced_request_makes_encode_as_the_sdk_encodes_them() -> None:
    shipped: list[SpanValues] = []
    tracer = LightTracer(ParentBased(ALWAYS_ON), shipped.append)
    with (
        tracer.start_as_current_span("graph g", kind=SpanKind.SERVER, attributes={"a": 1}),
        tracer.start_as_current_span("node root") as node,
    ):
        node.set_attribute("infergraph.branches", ["x", "y"])
        node.record_exception(ValueError("bad"))
        node.set_status(Status(StatusCode.ERROR, "bad"))
    assert len(shipped) == 2
    assert ours(shipped) == sdk_request(shipped)


def test_repeated_attributes_come_from_the_cache_unchanged() -> None:
    encoder = TraceEncoder(RESOURCE)
    rng = random.Random(7)
    values = [
        span(span_id=rng.getrandbits(63) + 1, attributes={"g": "graph", "n": i % 3})
        for i in range(50)
    ]
    first = encoder.encode(values)
    assert encoder.encode(values) == first
    assert ExportTraceServiceRequest.FromString(first) == sdk_request(values)


def test_an_unknown_value_type_is_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        any_value(object())


def test_a_pair_in_span_and_event_attributes_encodes_as_each() -> None:
    """The same key and value is field 9 of a span and field 3 of an event: one encoder,
    meeting it first as either, encodes both as the SDK does."""
    pair = {"infergraph.step": "a"}
    as_span = span(attributes=pair)
    as_event = span(span_id=2, events=(("retry", 1_764_000_000_000_100_000, pair),))
    for order in ([as_span, as_event], [as_event, as_span]):
        encoder = TraceEncoder(RESOURCE)
        separately = [ExportTraceServiceRequest.FromString(encoder.encode([v])) for v in order]
        assert separately == [sdk_request([v]) for v in order]


def test_long_attribute_strings_are_encoded_each_time_and_not_kept() -> None:
    """A client's path or an error's message seldom repeats: the pair cache kept every one, up
    to 4,096, about 2 MiB for each 1 MiB value. Long strings now leave nothing behind, and
    encode as before."""
    encoder = SpanEncoder()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50):
            value = f"/{i}" + "p" * 1024 * 1024
            values = span(attributes={"url.path": value})
            (encoded,) = ScopeSpans.FromString(encoder.span(values)).spans
            assert encoded.attributes[0].value.string_value == value
            del value, values
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1024 * 1024, kept
