"""One POST, one trace in a real Jaeger: the router's server, node and client spans, and the
spans Triton and vLLM record as children of the router's client spans."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from infergraph.predictors import processes
from infergraph.testing.harness import graph, request
from infergraph.testing.jaeger import Jaeger

FEATURES = {
    "inputs": [
        {"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
    ]
}


def traced_router(jaeger: Jaeger, spec: str, log: Path) -> processes.ServerProcess:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_http, "OTEL_BSP_SCHEDULE_DELAY": "50"}
    return processes.router(
        processes.free_port(),
        "--graph-json",
        spec,
        env=env,
        extra=("--drain-seconds", "0", "--access-log"),
        log_path=log,
    )


def wait_for_spans(
    jaeger: Jaeger, trace_id: str, wanted: Any, timeout: float = 30
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        spans = jaeger.trace(trace_id)
        if wanted(spans):
            return spans
        time.sleep(0.2)
    raise AssertionError(
        f"trace {trace_id} incomplete after {timeout} s: {[(s['service'], s['operationName']) for s in spans]}"
    )


def parent_of(span: dict[str, Any]) -> str | None:
    for reference in span.get("references") or []:
        if reference["refType"] == "CHILD_OF":
            return str(reference["spanID"])
    return None


def test_one_trace_through_router_local_predictor_and_triton(
    triton: str, jaeger: Jaeger, tmp_path: Path
) -> None:
    local_port = processes.free_port()
    spec = graph(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "local", "serviceUrl": f"http://127.0.0.1:{local_port}/step/local"},
                    {"name": "rest", "serviceUrl": triton, "protocol": "v2", "model": "classify"},
                    {
                        "name": "grpc",
                        "serviceUrl": "grpc://127.0.0.1:18201",
                        "protocol": "v2-grpc",
                        "model": "classify",
                    },
                ],
            }
        }
    )
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    with (
        processes.predictor(local_port, log_path=tmp_path / "predictor.log"),
        traced_router(jaeger, spec, tmp_path / "router.log") as router,
    ):
        port = int(router.ready_url.split(":")[2].split("/")[0])
        response = request(
            port, FEATURES, headers={"traceparent": f"00-{trace_id}-{caller_span}-01"}
        )
        assert response.status == 200, response.body

    def complete(spans: list[dict[str, Any]]) -> bool:
        """All router spans, and Triton spans under both of the router's Triton calls."""
        ours = {s["operationName"]: s["spanID"] for s in spans if s["service"] == "graph"}
        if not {"graph graph", "node root", "step rest", "step grpc", "step local"} <= set(ours):
            return False
        under = {parent_of(s) for s in spans if s["service"] == "triton"}
        return ours["step rest"] in under and ours["step grpc"] in under

    spans = wait_for_spans(jaeger, trace_id, complete)
    named = {s["operationName"]: s for s in spans if s["service"] == "graph"}
    assert parent_of(named["graph graph"]) == caller_span  # the incoming traceparent is continued
    assert parent_of(named["node root"]) == named["graph graph"]["spanID"]
    for step in ("local", "rest", "grpc"):
        assert parent_of(named[f"step {step}"]) == named["node root"]["spanID"]
    triton_parents = {parent_of(s) for s in spans if s["service"] == "triton"}
    # Triton continues the trace from the router's client spans, over REST and over gRPC.
    assert named["step rest"]["spanID"] in triton_parents
    assert named["step grpc"]["spanID"] in triton_parents
    # The request's log line names the same trace.
    lines = [
        json.loads(line)
        for line in (tmp_path / "router.log").read_text().splitlines()
        if line.startswith("{")
    ]
    assert [line["trace_id"] for line in lines if line["message"] == "request"] == [trace_id]


def test_vllm_continues_the_trace_with_its_llm_request_span(
    vllm: str, jaeger: Jaeger, tmp_path: Path
) -> None:
    spec = graph(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [{"name": "llm", "serviceUrl": vllm, "protocol": "openai"}],
            }
        }
    )
    trace_id = secrets.token_hex(16)
    with traced_router(jaeger, spec, tmp_path / "router.log") as router:
        port = int(router.ready_url.split(":")[2].split("/")[0])
        body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "ignore_eos": True}
        response = request(
            port, body, headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        )
        assert response.status == 200, response.body

    spans = wait_for_spans(
        jaeger,
        trace_id,
        lambda spans: (
            any(s["operationName"] == "llm_request" for s in spans)
            and any(s["operationName"] == "step llm" for s in spans)
        ),
    )
    client = next(s for s in spans if s["operationName"] == "step llm")
    llm = next(s for s in spans if s["operationName"] == "llm_request")
    assert llm["service"] == "vllm"
    assert parent_of(llm) == client["spanID"]
