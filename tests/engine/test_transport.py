"""``StepCall.with_headers`` keeps every other field (it is written out by hand for speed, so a
field added later must be added there too: this test names the one forgotten)."""

from __future__ import annotations

import dataclasses

from infergraph.router.engine.transport import StepCall, parse_target
from infergraph.router.protocols import OIP_INFER_REQUEST


def test_with_headers_changes_only_the_headers() -> None:
    call = StepCall(
        target=parse_target("http://m:9/v2/models/x/infer"),
        body=b"{}",
        headers=(("A", "1"),),
        timeout=2.5,
        protocol="v2",
        model="x",
        model_version="3",
        stream=True,
        graph="g",
        node="n",
        step="s",
        trace_headers=(("traceparent", "old"),),
        attempt=2,
        hedge=True,
        media=OIP_INFER_REQUEST,
    )
    new = {"headers": (("B", "2"),), "trace_headers": (("traceparent", "00-1-2-01"),)}
    changed = call.with_headers(new["headers"], new["trace_headers"])
    for field in dataclasses.fields(StepCall):
        expected = new.get(field.name, getattr(call, field.name))
        assert getattr(changed, field.name) == expected, field.name
    assert changed.all_headers() == (("B", "2"), ("traceparent", "00-1-2-01"))
    assert len(dataclasses.fields(StepCall)) == 15, "a new StepCall field: add it to with_headers"
