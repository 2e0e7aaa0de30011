"""Spans of one graph request, recorded in memory: server span continuing the caller's trace,
node spans with what each router type decided, client spans whose context reaches the step."""

from __future__ import annotations

import asyncio
import pickle
import random
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.observability.span_export import rebuild
from infergraph.router.observability.spans import LightTracer, SpanValues
from infergraph.router.observability.telemetry import Telemetry
from infergraph.router.observability.tracing import TracingObserver, TracingTransport, server_span
from infergraph.router.service.handler import RouterService
from infergraph.router.service.messages import Request
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.settings import GraphSource, RouterSettings
from infergraph.testing.fakes import FakeTransport, plan, reply, url

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = {"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"}


class LightRecorder:
    """Ended light spans, through the same pickle and rebuild as on the way to the exporter."""

    def __init__(self) -> None:
        self.values: list[SpanValues] = []

    def get_finished_spans(self) -> tuple[ReadableSpan, ...]:
        shipped = pickle.loads(pickle.dumps(self.values))
        return tuple(rebuild(v, Resource.create({})) for v in shipped)


@pytest.fixture(params=["sdk", "light"])
def spans(request: pytest.FixtureRequest) -> Any:
    """Each test runs with the SDK's tracer (``--span-export thread``) and the router's light
    tracer (``--span-export process``, the default)."""
    if request.param == "light":
        recorder = LightRecorder()
        return LightTracer(ParentBased(ALWAYS_ON), recorder.values.append), recorder
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def traced(
    spans: Any, nodes: dict[str, Any], fake: FakeTransport, body: Any, seed: int = 0
) -> list[ReadableSpan]:
    tracer, exporter = spans
    graph = plan(nodes)
    ctx = ExecutionContext(
        transport=TracingTransport(fake, tracer),
        rng=random.Random(seed),
        graph="g",
        observer=TracingObserver(tracer),
    )
    with server_span(tracer, CALLER, "g", "/"):
        await run_graph(graph, orjson.dumps(body), ctx)
    finished: list[ReadableSpan] = list(exporter.get_finished_spans())
    return finished


def attrs(span: ReadableSpan) -> dict[str, Any]:
    """A finished span's attributes (the SDK types them as optional)."""
    return dict(span.attributes or {})


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


async def test_one_trace_server_node_and_client_spans(spans: Any) -> None:
    fake = FakeTransport()
    nodes = {
        "root": {
            "routerType": "Sequence",
            "steps": [
                {"name": "pick", "nodeName": "pick"},
                {"name": "last", "serviceUrl": url("last")},
            ],
        },
        "pick": {
            "routerType": "Switch",
            "steps": [{"name": "dog", "serviceUrl": url("dog"), "condition": "$.animal"}],
        },
    }
    recorded = await traced(spans, nodes, fake, {"animal": "dog"})
    named = by_name(recorded)
    assert set(named) == {"graph g", "node root", "node pick", "step dog", "step last"}
    assert {f"{s.context.trace_id:032x}" for s in recorded} == {
        CALLER_TRACE
    }  # the caller's trace continues
    server, root, pick = named["graph g"], named["node root"], named["node pick"]
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert server.parent.span_id == 0x00F067AA0BA902B7
    assert root.parent.span_id == server.context.span_id  # type: ignore[union-attr]
    assert pick.parent.span_id == root.context.span_id  # type: ignore[union-attr]
    assert named["step dog"].parent.span_id == pick.context.span_id  # type: ignore[union-attr]
    assert named["step last"].parent.span_id == root.context.span_id  # type: ignore[union-attr]
    assert attrs(pick)["infergraph.chosen_step"] == "dog"
    assert attrs(pick)["infergraph.chosen_because"] == "condition $.animal matched"
    client = named["step dog"]
    assert client.kind is SpanKind.CLIENT
    assert attrs(client)["url.full"] == url("dog")
    assert attrs(client)["http.response.status_code"] == 200
    assert attrs(client)["http.request.body.size"] == len(b'{"animal":"dog"}')
    # Each call carries its own client span as the parent of what the model server does.
    sent = {call.step: dict(call.all_headers()) for call in fake.calls}
    for step in ("dog", "last"):
        span = named[f"step {step}"]
        assert sent[step]["traceparent"] == f"00-{CALLER_TRACE}-{span.context.span_id:016x}-01"


def test_the_path_a_span_keeps_is_cut_at_256_characters(spans: Any) -> None:
    """The path is the client's: a span keeps at most 256 characters of it, as Envoy's
    max_path_tag_length, so long paths cannot fill the export queue (1 MiB each before)."""
    tracer, exporter = spans
    path = "/graphs/g/" + "p" * 5000
    with server_span(tracer, CALLER, "g", path):
        pass
    (finished,) = exporter.get_finished_spans()
    assert attrs(finished)["url.path"] == path[:256]


async def test_splitter_weight_and_failed_step_status(spans: Any) -> None:
    fake = FakeTransport(script={url("b"): reply(503, {"error": "busy"})})
    nodes = {
        "root": {
            "routerType": "Splitter",
            "steps": [
                {"name": "a", "serviceUrl": url("a"), "weight": 0},
                {"name": "b", "serviceUrl": url("b"), "weight": 100},
            ],
        }
    }
    named = by_name(await traced(spans, nodes, fake, {}))
    assert attrs(named["node root"])["infergraph.chosen_step"] == "b"
    assert attrs(named["node root"])["infergraph.chosen_weight"] == 100
    assert named["step b"].status.status_code is StatusCode.ERROR
    assert attrs(named["step b"])["http.response.status_code"] == 503


async def test_ensemble_records_branches_and_the_cancelled_ones(spans: Any) -> None:
    async def never(call: StepCall) -> Reply:
        await asyncio.Event().wait()
        raise AssertionError

    fake = FakeTransport(script={url("slow"): never, url("bad"): reply(500, {"e": 1})})
    nodes = {
        "root": {
            "routerType": "Ensemble",
            "steps": [
                {"name": "bad", "serviceUrl": url("bad"), "dependency": "Hard"},
                {"name": "slow", "serviceUrl": url("slow")},
            ],
        }
    }
    named = by_name(await traced(spans, nodes, fake, {}))
    root = named["node root"]
    assert list(attrs(root)["infergraph.branches"]) == ["bad", "slow"]
    assert list(attrs(root)["infergraph.cancelled"]) == ["slow"]
    assert attrs(named["step slow"])["infergraph.was_cancelled"] is True
    assert "infergraph.was_cancelled" not in attrs(named["step bad"])


async def test_unsampled_request_records_nothing_but_still_propagates(spans: Any) -> None:
    tracer, exporter = spans
    fake = FakeTransport()
    graph = plan(
        {"root": {"routerType": "Sequence", "steps": [{"name": "a", "serviceUrl": url("a")}]}}
    )
    ctx = ExecutionContext(
        transport=TracingTransport(fake, tracer), graph="g", observer=TracingObserver(tracer)
    )
    unsampled = {"traceparent": f"00-{CALLER_TRACE}-00f067aa0ba902b7-00"}
    with server_span(tracer, unsampled, "g", "/"):
        await run_graph(graph, b"{}", ctx)
    assert tuple(exporter.get_finished_spans()) == ()
    sent = dict(fake.calls[0].all_headers())["traceparent"]
    assert sent.startswith(f"00-{CALLER_TRACE}-")
    assert sent.endswith("-00")  # the model server is told not to sample either


@pytest.mark.parametrize("sampled", [True, False])
async def test_through_the_handler_every_call_carries_the_requests_trace_context(
    spans: Any, sampled: bool
) -> None:
    """Sampled: each call names its own client span. Unsampled: no spans, and every call
    names the request's span with the not-sampled flag. Either way the client's own
    traceparent, forwarded by PROPAGATE_HEADERS, is replaced, never sent beside ours."""
    tracer, exporter = spans
    fake = FakeTransport()
    spec = orjson.dumps(
        {
            "nodes": {
                "root": {
                    "routerType": "Sequence",
                    "steps": [{"serviceUrl": url("a")}, {"serviceUrl": url("b")}],
                }
            }
        }
    ).decode()
    settings = RouterSettings(source=GraphSource(graph_json=spec), propagate_headers="")
    registry = GraphRegistry(settings.source)
    registry.load()
    service = RouterService(settings, registry, fake, telemetry=Telemetry(tracer=tracer))
    flag = "01" if sampled else "00"
    caller = f"00-{CALLER_TRACE}-00f067aa0ba902b7-{flag}"
    headers = (("Content-Type", "application/json"), ("traceparent", caller))
    response = await service.handle(Request("POST", "/", headers, b"{}"))
    assert response.status == 200
    sent = [[v for k, v in c.all_headers() if k.lower() == "traceparent"] for c in fake.calls]
    assert [len(values) for values in sent] == [1, 1]
    parents = [values[0] for values in sent]
    assert all(p.startswith(f"00-{CALLER_TRACE}-") and p.endswith(f"-{flag}") for p in parents)
    assert caller not in parents
    finished = list(exporter.get_finished_spans())
    if sampled:
        clients = {
            s.name: f"{s.context.span_id:016x}" for s in finished if s.name.startswith("step")
        }
        assert [p.split("-")[2] for p in parents] == [
            clients["step 0"],
            clients["step 1"],
        ]
    else:
        assert finished == []
        assert parents[0] == parents[1]  # one context, made once for the request


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.attributes or {})) for e in span.events]


async def test_one_client_span_per_attempt_and_the_policies_events(spans: Any) -> None:
    answers = iter([reply(503, {"e": 1}), reply(502, {"e": 2})])

    async def failing(call: StepCall) -> Reply:
        return next(answers)

    fake = FakeTransport(script={url("a"): failing})
    nodes = {
        "root": {
            "routerType": "Sequence",
            "steps": [
                {
                    "name": "a",
                    "serviceUrl": url("a"),
                    "retry": {"maxRetries": 1, "initialDelayMs": 1},
                    "fallback": {"serviceUrl": url("spare")},
                }
            ],
        }
    }
    finished = await traced(spans, nodes, fake, {"x": 1})
    attempts = sorted(
        (attrs(s)["infergraph.attempt"], attrs(s)["http.response.status_code"])
        for s in finished
        if s.name == "step a"
    )
    assert attempts == [(1, 503), (2, 502)]
    (spare,) = [s for s in finished if s.name == "step a.fallback"]
    assert attrs(spare)["url.full"] == url("spare")
    node = by_name(finished)["node root"]
    names = [name for name, _ in events(node)]
    assert names == ["retry", "fallback"]
    retry, fallback = (detail for _, detail in events(node))
    assert retry["infergraph.step"] == "a"
    assert retry["infergraph.attempt"] == 2
    assert retry["infergraph.reason"] == "status 503"
    assert fallback["infergraph.target"] == url("spare")
    assert fallback["infergraph.reason"] == "status 502"


async def test_a_hedge_is_its_own_span_and_the_loser_is_cancelled(spans: Any) -> None:
    async def slow(call: StepCall) -> Reply:
        await asyncio.sleep(5)
        raise AssertionError

    fake = FakeTransport(script={url("slow"): slow})
    nodes = {
        "root": {
            "routerType": "Sequence",
            "steps": [
                {"name": "h", "endpoints": [url("slow"), url("fast")], "hedge": {"afterMs": 20}}
            ],
        }
    }
    # Seed 1 draws the slow replica first.
    finished = await traced(spans, nodes, fake, {}, seed=1)
    calls = [s for s in finished if s.name == "step h"]
    by_url = {attrs(s)["url.full"]: attrs(s) for s in calls}
    assert by_url[url("slow")]["infergraph.was_cancelled"] is True
    assert by_url[url("fast")]["infergraph.hedge"] is True
    assert by_url[url("fast")]["infergraph.attempt"] == 2
    assert [name for name, _ in events(by_name(finished)["node root"])] == ["hedge"]
