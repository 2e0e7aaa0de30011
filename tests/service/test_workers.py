"""``--workers``: several router processes on one port. Connections spread over the workers,
SIGTERM drains every worker, hot reload reaches every worker, a dead worker is replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

from infergraph.predictors import processes
from infergraph.testing.harness import Predictor, graph, request


def children(pid: int) -> set[int]:
    return set(processes.children_of(pid))


def served_by(log: Path) -> set[int]:
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return {line["pid"] for line in lines if line["message"] == "request"}


class WorkersRouter(processes.ServerProcess):
    """Ready when every worker is serving (readyz answers as soon as the first one is)."""

    def start(self, timeout: float = 30.0) -> Self:
        super().start(timeout)
        assert self.log_path is not None
        deadline = time.monotonic() + timeout
        while self.log_path.read_text().count('"serving ') < 2:
            assert time.monotonic() < deadline, "the workers did not all start"
            time.sleep(0.05)
        return self

    @property
    def port(self) -> int:
        return int(self.argv[self.argv.index("--port") + 1])


def workers_router(spec_args: tuple[str, ...], log: Path) -> WorkersRouter:
    plain = processes.router(
        processes.free_port(),
        *spec_args,
        extra=("--workers", "2", "--access-log", "--drain-seconds", "1"),
        log_path=log,
    )
    return WorkersRouter(plain.argv, plain.ready_url, log_path=log)


def one_step(url: str) -> str:
    return graph({"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url}]}})


def test_connections_spread_over_the_workers(clean_predictor: Predictor, tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    with workers_router(("--graph-json", one_step(clean_predictor.url("a"))), log) as router:
        workers = children(router.pid)
        assert len(workers) == 2
        port = router.port
        statuses = [request(port, {"i": i}).status for i in range(200)]  # a connection each
        assert statuses == [200] * 200
        assert served_by(log) == workers


def test_sigterm_drains_every_worker(clean_predictor: Predictor, tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    router = workers_router(("--graph-json", one_step(clean_predictor.url("slow", delay=0.5))), log)
    router.start()
    port = router.port
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(request(port, {}).status)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the requests are in flight, on both workers
    router.signal(signal.SIGTERM)
    for t in threads:
        t.join(10)
    assert results == [200] * 8
    assert router.process is not None
    assert router.process.wait(10) == 0
    text = log.read_text()
    assert text.count("signal received: draining") == 2


def test_hot_reload_reaches_every_worker(clean_predictor: Predictor, tmp_path: Path) -> None:
    p = clean_predictor
    source = tmp_path / "graph.json"
    source.write_text(one_step(p.url("old")))
    log = tmp_path / "router.log"
    with workers_router(("--graph", str(source), "--reload-interval", "0.2"), log) as router:
        port = router.port
        assert request(port, {}).status == 200
        source.write_text(one_step(p.url("new")))
        time.sleep(1.5)
        p.clear()
        for _ in range(60):
            assert request(port, {}).status == 200
        assert set(p.called()) == {"new"}
        assert served_by(log) == children(router.pid)


def test_a_dead_worker_is_replaced(clean_predictor: Predictor, tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    with workers_router(("--graph-json", one_step(clean_predictor.url("a"))), log) as router:
        port = router.port
        before = children(router.pid)
        time.sleep(2.5)  # past the start-up window in which a dying worker stops the router
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = children(router.pid)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.05)
        now = children(router.pid)
        assert victim not in now
        assert len(now) == 2
        assert [request(port, {"i": i}).status for i in range(50)] == [200] * 50
        assert "exited with -9: starting a new one" in log.read_text()


def test_workers_need_a_fixed_port() -> None:
    result = subprocess.run(
        [
            processes.CLI,
            "router",
            "--graph-json",
            one_step("http://127.0.0.1:1/x"),
            "--workers",
            "2",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=processes.child_env(),
        check=False,
    )
    assert result.returncode == 2
    assert "fixed --port" in result.stderr


def test_metrics_from_any_worker_count_every_worker(
    clean_predictor: Predictor, tmp_path: Path
) -> None:
    log = tmp_path / "router.log"
    with workers_router(("--graph-json", one_step(clean_predictor.url("a"))), log) as router:
        for i in range(100):
            assert request(router.port, {"i": i}).status == 200
        assert len(served_by(log)) == 2  # both workers served some of them
        time.sleep(1.5)  # each worker publishes its figures every second
        for _ in range(6):  # a new connection each: any worker may answer the scrape
            text = request(router.port, b"", path="/metrics", method="GET").body.decode()
            assert 'infergraph_requests_total{code="200",graph="graph"} 100.0' in text
            assert 'infergraph_request_seconds_count{graph="graph"} 100.0' in text
            assert 'infergraph_requests_in_flight{graph="graph"} 0.0' in text
