"""Prometheus metrics after known traffic, and the JSON request log, on a real router process."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from infergraph.predictors import processes
from infergraph.testing.harness import Predictor, RouterFactory, graph, request


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = request(port, b"", path="/metrics", method="GET")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_metrics_count_requests_nodes_steps_errors_and_overhead(
    clean_predictor: Predictor, start_router: RouterFactory, tmp_path: Path
) -> None:
    p = clean_predictor
    spec = graph(
        {
            "root": {
                "routerType": "Switch",
                "steps": [
                    {"name": "ok", "condition": "good", "nodeName": "pipeline"},
                    {
                        "name": "down",
                        "condition": "down",
                        "serviceUrl": f"http://127.0.0.1:{dead_port()}/x",
                    },
                    {"name": "nf", "condition": "missing", "serviceUrl": p.url("nf", status=404)},
                ],
            },
            "pipeline": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "first", "serviceUrl": p.url("first")},
                    {"name": "second", "serviceUrl": p.url("second")},
                ],
            },
        }
    )
    port = start_router(spec)
    for _ in range(3):
        assert request(port, {"good": 1}).status == 200
    assert request(port, {"down": 1}).status == 500
    assert request(port, {"missing": 1}).status == 404
    assert request(port, {"nothing": 1}).status == 404  # no route
    m = scrape(port)
    g = ("graph", "graph")
    assert m[("infergraph_requests_total", (("code", "200"), g))] == 3
    assert m[("infergraph_requests_total", (("code", "500"), g))] == 1
    assert m[("infergraph_requests_total", (("code", "404"), g))] == 2
    assert m[("infergraph_request_seconds_count", (g,))] == 6
    assert m[("infergraph_overhead_seconds_count", (g,))] == 6
    assert (
        0
        < m[("infergraph_overhead_seconds_sum", (g,))]
        < m[("infergraph_request_seconds_sum", (g,))]
    )
    assert m[("infergraph_requests_in_flight", (g,))] == 0
    assert (
        m[("infergraph_node_seconds_count", (g, ("node", "pipeline"), ("router_type", "Sequence")))]
        == 3
    )
    assert (
        m[("infergraph_node_seconds_count", (g, ("node", "root"), ("router_type", "Switch")))] == 6
    )
    step = (g, ("node", "pipeline"), ("step", "second"))
    assert m[("infergraph_step_seconds_count", step)] == 3
    down = (g, ("node", "root"), ("step", "down"))  # never answered: a failure, no latency
    assert m[("infergraph_step_calls_total", (("code", "error"), *down))] == 1
    assert ("infergraph_step_seconds_count", down) not in m
    assert m[("infergraph_step_calls_total", (("code", "200"), *step))] == 3
    assert (
        m[("infergraph_step_calls_total", (("code", "404"), g, ("node", "root"), ("step", "nf")))]
        == 1
    )
    assert (
        m[("infergraph_errors_total", (("cause", "connection"), g))] == 2
    )  # the step, then the request
    assert m[("infergraph_errors_total", (("cause", "no_route"), g))] == 1
    assert m[("infergraph_errors_total", (("cause", "upstream_status"), g))] == 1


def test_access_log_is_one_json_line_per_request(
    clean_predictor: Predictor, start_router: RouterFactory, tmp_path: Path
) -> None:
    p = clean_predictor
    port = start_router(
        graph({"root": {"routerType": "Sequence", "steps": [{"serviceUrl": p.url("a")}]}}),
        extra=("--access-log",),
    )
    for _ in range(2):
        request(port, {"x": 1})
    lines = [
        json.loads(line)
        for line in (tmp_path / f"router-{port}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    requests = [line for line in lines if line["message"] == "request"]
    assert len(requests) == 2
    assert requests[0]["graph"] == "graph"
    assert requests[0]["status"] == 200
    assert requests[0]["duration_ms"] > 0
    assert requests[0]["level"] == "info"


def test_a_dead_span_exporter_process_does_not_hurt_requests(
    clean_predictor: Predictor, tmp_path: Path
) -> None:
    """Tracing on: spans go to an exporter child process; killing it loses spans, not requests."""
    p = clean_predictor
    log = tmp_path / "router.log"
    spec = graph({"root": {"routerType": "Sequence", "steps": [{"serviceUrl": p.url("a")}]}})
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port()}"}
    port = processes.free_port()
    with processes.router(
        port, "--graph-json", spec, env=env, extra=("--drain-seconds", "0"), log_path=log
    ) as router:
        children = processes.children_of(router.pid, b"span_export")
        assert len(children) == 1
        assert request(port, {"x": 1}).status == 200
        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while "exporter process is gone" not in log.read_text() and time.monotonic() < deadline:
            assert request(port, {"x": 1}).status == 200
            time.sleep(0.05)
        assert "exporter process is gone" in log.read_text()
        assert [request(port, {"x": i}).status for i in range(20)] == [200] * 20
        assert router.process is not None
        assert router.process.poll() is None


def test_malformed_trace_headers_are_dropped_without_logging_them(
    clean_predictor: Predictor, start_router: RouterFactory, tmp_path: Path
) -> None:
    """OpenTelemetry's propagators logged a client's oversized baggage and each bad tracestate
    member whole, at WARNING: 100 KiB of log per request here. They are still dropped, as the
    W3C specifications say, and the log stays quiet."""
    p = clean_predictor
    spec = graph({"root": {"routerType": "Sequence", "steps": [{"serviceUrl": p.url("a")}]}})
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port()}"}
    port = start_router(spec, env=env)
    headers = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": ",".join(f"BAD KEY {i}=v" for i in range(2000)),
        "baggage": "k=" + "v" * 100_000,
    }
    for _ in range(5):
        assert request(port, {"x": 1}, headers=headers).status == 200
    log = (tmp_path / f"router-{port}.log").read_text()
    assert len(log) < 20_000, log[-2000:]
