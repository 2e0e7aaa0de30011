"""The span exporter process against a real Jaeger: over OTLP/HTTP and OTLP/gRPC, the router's
own encoding (the default) delivers the very spans the SDK's encoding delivers."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from infergraph.predictors import processes
from infergraph.router.observability.otlp import SpanEncoder
from infergraph.router.observability.span_export import EncodedSender, SpanShipper, chunks
from infergraph.router.observability.spans import LightTracer, SpanValues
from infergraph.testing.harness import graph, request
from infergraph.testing.jaeger import Jaeger

PROTOCOLS = ("http/protobuf", "grpc")
SPANS = {"graph graph", "node root", "step a", "step missing"}


@pytest.fixture(scope="module")
def predictor_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = processes.free_port()
    with processes.predictor(port, log_path=tmp_path_factory.mktemp("export") / "predictor.log"):
        yield port


def traced_spans(
    jaeger: Jaeger, predictor_port: int, protocol: str, export: str, log: Path
) -> list[dict[str, Any]]:
    """One request through a two-step Sequence (the second step fails with 404), traced."""
    spec = graph(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "a", "serviceUrl": f"http://127.0.0.1:{predictor_port}/step/a"},
                    {"name": "missing", "serviceUrl": f"http://127.0.0.1:{predictor_port}/nope"},
                ],
            }
        }
    )
    endpoint = jaeger.otlp_grpc if protocol == "grpc" else jaeger.otlp_http
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    trace_id = secrets.token_hex(16)
    router = processes.router(
        processes.free_port(),
        "--graph-json",
        spec,
        env=env,
        extra=("--drain-seconds", "0", "--span-export", export),
        log_path=log,
    )
    with router:
        port = int(router.ready_url.split(":")[2].split("/")[0])
        response = request(port, {"x": 1}, headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01"})
        assert response.status == 404, response.body
    # The router has exited: its exporter sent the last spans before it did.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        spans = jaeger.trace(trace_id)
        if {s["operationName"] for s in spans} >= SPANS:
            return spans
        time.sleep(0.2)
    raise AssertionError(f"trace {trace_id} incomplete: {[s['operationName'] for s in spans]}")


def comparable(spans: list[dict[str, Any]]) -> list[Any]:
    """What Jaeger shows of each span, without its ids and times: name, service, tags, logs,
    and its parent's name."""
    names = {s["spanID"]: s["operationName"] for s in spans}
    shown = []
    for span in spans:
        parents = [names.get(r["spanID"], "caller") for r in span.get("references") or []]
        tags = sorted((t["key"], t["type"], str(t["value"])) for t in span["tags"])
        logs = [
            sorted((f["key"], str(f["value"])) for f in entry["fields"])
            for entry in span.get("logs") or []
        ]
        shown.append((span["operationName"], span["service"], parents, tags, logs))
    return sorted(shown)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_routers_encoding_delivers_the_sdks_spans(
    jaeger: Jaeger, predictor_port: int, protocol: str, tmp_path: Path
) -> None:
    ours = traced_spans(jaeger, predictor_port, protocol, "process", tmp_path / "lean.log")
    sdk = traced_spans(jaeger, predictor_port, protocol, "process-sdk", tmp_path / "sdk.log")
    assert comparable(ours) == comparable(sdk)
    named = {s["operationName"]: s for s in ours}
    tags = {t["key"]: t["value"] for t in named["step missing"]["tags"]}
    assert tags["http.response.status_code"] == 404
    assert tags["otel.status_code"] == "ERROR"
    assert tags["span.kind"] == "client"
    for log in ("lean.log", "sdk.log"):
        assert "export" not in (tmp_path / log).read_text().lower()  # no failed export


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_installed_exporters_have_the_seam_the_encoding_uses(protocol: str) -> None:
    """Else the exporter process would export nothing (it says so in the log)."""
    sender = EncodedSender(protocol)
    try:
        assert sender.supported
    finally:
        sender.shutdown()


def test_export_requests_are_bounded_in_bytes_and_keep_the_order() -> None:
    spans = [bytes([i]) * size for i, size in enumerate((400, 300, 300, 1200, 1, 999))]
    runs = list(chunks(spans, 1000))
    assert runs == [spans[0:3], spans[3:4], spans[4:6]]  # 1000, a span over the limit, 1000
    assert list(chunks([], 1000)) == []


def test_the_export_queue_is_bounded_in_bytes_too() -> None:
    """Spans are counted and their bytes too: 32,768 spans of 1 MiB attributes would queue
    32 GiB while the exporter lags."""
    shipper = SpanShipper("http/protobuf", "svc", interval=3600, max_queue_bytes=64 * 1024)
    try:
        ended: list[SpanValues] = []
        LightTracer(ALWAYS_ON, ended.append).start_span("s", attributes={"a": "x" * 10_000}).end()
        (values,) = ended
        size = len(SpanEncoder().span(values))
        for _ in range(20):
            shipper.submit(values)
        assert shipper.dropped == 20 - (64 * 1024) // size
    finally:
        shipper.shutdown()


def test_shutdown_ends_when_the_exporter_stopped_reading() -> None:
    """The writer blocked in a write to a child that no longer reads held the pipe, so closing
    it waited too: shutdown never returned (45 s and on) and the router could not exit."""
    shipper = SpanShipper("http/protobuf", "svc", interval=0.01)
    ended: list[SpanValues] = []
    tracer = LightTracer(ALWAYS_ON, ended.append)
    for _ in range(100):
        tracer.start_span("s", attributes={"a": "x" * 20_000}).end()
    os.kill(shipper._child.pid, signal.SIGSTOP)
    try:
        for values in ended:  # 2 MB, far over what the pipe holds
            shipper.submit(values)
        time.sleep(0.5)  # the writer is now blocked
        started = time.monotonic()
        shipper.shutdown(seconds=1.0)
        assert time.monotonic() - started < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(shipper._child.pid, signal.SIGKILL)
