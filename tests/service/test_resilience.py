"""Resilience policies in a real router process against the fault-injecting model server (as a
process): a replica failing every call, one failing 20% at random, one slow on 1% of calls, one
that hangs; fallbacks, bulkheads, shedding and the graph's deadline, seen from the client and
in ``/metrics``."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from infergraph.predictors import processes
from infergraph.testing import faults
from infergraph.testing.harness import RouterFactory, graph, request


def one_step(step: dict[str, Any], **spec: Any) -> str:
    return graph({"root": {"routerType": "Sequence", "steps": [{"name": "s", **step}]}}, **spec)


def metric(port: int, name: str, **labels: str) -> float:
    """The value of one sample on the router's /metrics page (0 when absent)."""
    page = request(port, method="GET", path="/metrics").body.decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in page.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    assert wanted is not None
    return total


def test_a_replica_failing_every_call_is_ejected_and_no_request_fails(
    fault_server: str, start_router: RouterFactory
) -> None:
    spec = one_step(
        {
            "endpoints": [f"{fault_server}/fail/a?status=503", f"{fault_server}/ok/b"],
            "retry": {"maxRetries": 2, "initialDelayMs": 1},
        },
        outlierDetection={"consecutive5xx": 3, "maxEjectionPercent": 50},
    )
    port = start_router(spec)
    statuses = [request(port, {"i": i}).status for i in range(200)]
    assert statuses == [200] * 200
    counts = faults.counts(fault_server)
    # Three failures in a row eject it for 30 s: after that the healthy replica takes all.
    assert counts["/fail/a"] == 3
    assert counts["/ok/b"] == 200
    assert metric(port, "infergraph_ejected_replicas", step="s") == 1
    assert metric(port, "infergraph_retries_total", step="s") == 3


def test_retries_mend_a_backend_failing_20_percent_at_random(
    fault_server: str, start_router: RouterFactory
) -> None:
    spec = one_step(
        {
            "serviceUrl": f"{fault_server}/fail?status=503&rate=0.2",
            "retry": {"maxRetries": 6, "initialDelayMs": 1},
        }
    )
    port = start_router(spec)
    statuses = [request(port, {"i": i}).status for i in range(500)]
    assert statuses.count(200) == 500
    sent = faults.counts(fault_server)["/fail"]
    retries = metric(port, "infergraph_retries_total", step="s")
    assert sent == 500 + retries
    assert 0.15 * 500 < retries < 0.35 * 500  # about a quarter: 0.2 + 0.04 + ...


def test_a_hedge_answers_for_a_replica_that_is_slow_now_and_then(
    fault_server: str, start_router: RouterFactory
) -> None:
    """One call in twenty takes 3 s; the hedge after 100 ms answers instead."""
    spec = one_step(
        {"serviceUrl": f"{fault_server}/slow?ms=3000&rate=0.05", "hedge": {"afterMs": 100}}
    )
    port = start_router(spec)
    slowest = 0.0
    for i in range(100):
        started = time.monotonic()
        assert request(port, {"i": i}).status == 200
        slowest = max(slowest, time.monotonic() - started)
    hedges = metric(port, "infergraph_hedges_total", step="s")
    assert hedges >= 1
    assert slowest < 2.0, "a slow call was waited for instead of hedged"


def test_a_hung_replica_is_timed_out_retried_elsewhere_and_ejected(
    fault_server: str, start_router: RouterFactory
) -> None:
    spec = one_step(
        {
            "endpoints": [f"{fault_server}/stall/a", f"{fault_server}/ok/b"],
            "timeout": 0.3,
            "retry": {"maxRetries": 1, "initialDelayMs": 1},
        },
        outlierDetection={"consecutive5xx": 2, "maxEjectionPercent": 50},
    )
    port = start_router(spec)
    statuses = [request(port, {"i": i}, timeout=5).status for i in range(40)]
    assert statuses == [200] * 40
    assert faults.counts(fault_server)["/stall/a"] == 2
    assert metric(port, "infergraph_ejected_replicas", step="s") == 1


def test_a_fallback_answers_and_the_response_says_so(
    fault_server: str, start_router: RouterFactory
) -> None:
    spec = one_step(
        {
            "serviceUrl": f"{fault_server}/fail?status=500",
            "retry": {"maxRetries": 1, "initialDelayMs": 1},
            "fallback": {"serviceUrl": f"{fault_server}/ok/spare"},
        }
    )
    port = start_router(spec)
    answer = request(port, {"x": 1})
    assert answer.status == 200
    assert answer.json() == {"x": 1}
    assert answer.headers["X-Infergraph-Fallback"] == f"root/s={fault_server}/ok/spare"
    assert faults.counts(fault_server) == {"/fail": 2, "/ok/spare": 1}
    assert metric(port, "infergraph_fallbacks_total", step="s") == 1


def test_bulkhead_and_graph_shedding_answer_503_at_once(
    fault_server: str, start_router: RouterFactory
) -> None:
    step_limited = start_router(
        one_step({"serviceUrl": f"{fault_server}/slow?ms=1500", "maxInFlight": 1})
    )
    graph_limited = start_router(
        one_step({"serviceUrl": f"{fault_server}/slow?ms=1500"}, maxInFlight=1)
    )
    for port, expected in ((step_limited, "maxInFlight"), (graph_limited, "maxInFlight")):
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(request, port, {})
            time.sleep(0.3)
            started = time.monotonic()
            refused = request(port, {})
            refused_after = time.monotonic() - started
            assert first.result().status == 200
        assert refused.status == 503
        assert expected in refused.json()["cause"]
        assert refused_after < 1.0, "the refusal waited for the call in flight"
    assert refused.headers["Retry-After"] == "1"
    assert metric(graph_limited, "infergraph_shed_total", node="", step="") == 1
    assert metric(step_limited, "infergraph_shed_total", step="s") == 1


def test_the_graph_deadline_answers_504_naming_the_step(
    fault_server: str, start_router: RouterFactory
) -> None:
    spec = graph(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "quick", "serviceUrl": f"{fault_server}/ok"},
                    {"name": "hung", "serviceUrl": f"{fault_server}/stall"},
                ],
            }
        },
        timeout=1,
    )
    port = start_router(spec)
    started = time.monotonic()
    answer = request(port, {}, timeout=10)
    elapsed = time.monotonic() - started
    assert answer.status == 504
    assert "root/hung" in answer.json()["cause"]
    assert elapsed < 5


def test_a_failing_backend_does_not_slow_a_graph_on_a_healthy_one(
    fault_server: str, start_router: RouterFactory
) -> None:
    """Retries against one hung backend (bounded by the budget) leave calls to another graph
    step's healthy backend answering."""
    spec = graph(
        {
            "root": {
                "routerType": "Switch",
                "steps": [
                    {
                        "serviceUrl": f"{fault_server}/stall",
                        "condition": '[@this].#(to=="hung")',
                        "timeout": 0.2,
                        "retry": {"maxRetries": 10, "initialDelayMs": 1, "maxDelayMs": 5},
                    },
                    {"serviceUrl": f"{fault_server}/ok", "condition": '[@this].#(to=="fine")'},
                ],
            }
        }
    )
    port = start_router(spec)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            request(port, {"to": "hung"}, timeout=10)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        for _ in range(20):
            assert request(port, {"to": "fine"}, timeout=2).status == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert metric(port, "infergraph_retry_budget_exhausted_total") > 0


def test_the_resilient_example_graph_answers_the_demos_samples() -> None:
    """graphs/iris-resilient.yaml (every policy once) behind the demo, on local predictors."""
    example = Path(__file__).resolve().parents[2] / "graphs" / "iris-resilient.yaml"
    result = subprocess.run(
        [processes.CLI, "demo", "--graph", str(example)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=processes.child_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> 200 in" in result.stdout
    assert '{"predictions":[0,2]}' in result.stdout
    # join: any answers with the first classifier to succeed.
    assert re.search(r'\{"(logistic|forest)":\{"predictions":\[1\]\}\}', result.stdout)
