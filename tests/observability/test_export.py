"""The span exporter process against a real Jaeger: over OTLP/HTTP and OTLP/gRPC, the router's
own encoding (the default) delivers the very spans the SDK's encoding delivers."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infergraph.predictors import processes
from infergraph.router.observability.span_export import EncodedSender, chunks
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
