"""``--workers``: several router processes on one port. Connections spread over the workers,
SIGTERM drains every worker, hot reload reaches every worker, a dead worker is replaced (also
one that dies at start-up) after a delay that doubles while it keeps crashing, a crash loop
(workers killed at birth, or unable to bind the port) stops the router, and a stop while a
restart is pending exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple, Self

from infergraph.predictors import processes
from infergraph.router.service.workers import CRASH_LIMIT, RESTART_DELAY
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


def started_ago(pid: int) -> float:
    """Seconds since ``pid`` started, from /proc (its start time is in clock ticks since boot)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


class Kills(NamedTuple):
    pids: list[int]  # the workers killed, in order
    ages: list[float]  # how long each had been up when it was killed
    intervals: list[float]  # from each kill to its replacement's appearance
    seen: set[int]  # every worker seen


def kill_each_replacement(router: WorkersRouter, kills: int, timeout: float = 15.0) -> Kills:
    """SIGKILL one worker, then each worker that replaces it as soon as it appears, ``kills``
    times in all or until the router exits; the other worker is left alone."""
    assert router.process is not None
    deadline = time.monotonic() + timeout
    seen = children(router.pid)
    victim = min(seen)
    result = Kills([], [], [], seen)
    killed = 0.0
    for n in range(kills):
        if n:
            while not (new := children(router.pid) - seen):
                if router.process.poll() is not None:
                    return result
                assert time.monotonic() < deadline, "no new worker replaced the killed one"
                time.sleep(0.005)
            result.intervals.append(time.monotonic() - killed)
            (victim,) = new
            seen |= new
        result.ages.append(started_ago(victim))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        result.pids.append(victim)
    return result


def serving_pids(log: Path) -> set[int]:
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return {line["pid"] for line in lines if line["message"].startswith("serving ")}


def test_a_worker_that_dies_at_start_up_is_replaced(
    clean_predictor: Predictor, tmp_path: Path
) -> None:
    log = tmp_path / "router.log"
    with workers_router(("--graph-json", one_step(clean_predictor.url("a"))), log) as router:
        assert router.process is not None
        port = router.port
        kills = kill_each_replacement(router, 2)  # a worker, then its replacement at birth
        assert len(kills.pids) == 2, f"the router stopped: {log.read_text()}"
        assert kills.ages[1] < 0.5, kills  # well inside the old 2 s start-up window
        deadline = time.monotonic() + 10
        while not (new := children(router.pid) - kills.seen) or not new <= serving_pids(log):
            assert router.process.poll() is None, "the router stopped"
            assert time.monotonic() < deadline, "no worker replaced the one killed at birth"
            time.sleep(0.05)
        now = children(router.pid)
        assert len(now) == 2
        assert not now & set(kills.pids)
        assert [request(port, {"i": i}).status for i in range(50)] == [200] * 50
        assert new <= served_by(log)
        assert router.process.poll() is None
        assert log.read_text().count("exited with -9: starting a new one") == 2


def test_a_crash_loop_backs_off_then_stops_the_router(
    clean_predictor: Predictor, tmp_path: Path
) -> None:
    log = tmp_path / "router.log"
    router = workers_router(("--graph-json", one_step(clean_predictor.url("a"))), log)
    with router:
        assert router.process is not None
        started = time.monotonic()
        kills = kill_each_replacement(router, 100)
        code = router.process.wait(10)
        elapsed = time.monotonic() - started
    text = log.read_text()
    assert code == 1, text
    assert "crash loop: stopping the router" in text
    # The worker was replaced CRASH_LIMIT times, each after twice the delay of the one before;
    # the next crash was one too many.
    assert len(kills.pids) == CRASH_LIMIT + 1, kills
    expected = [RESTART_DELAY * 2**i for i in range(CRASH_LIMIT)]
    assert all(i >= e * 0.95 for i, e in zip(kills.intervals, expected, strict=True)), kills
    assert kills.intervals[-1] > 4 * kills.intervals[0], kills
    assert elapsed < sum(expected) + 8, kills
    assert text.count("signal received: draining") == 1  # the worker left alone drained


def test_a_stop_while_a_restart_is_pending_exits_cleanly(
    clean_predictor: Predictor, tmp_path: Path
) -> None:
    log = tmp_path / "router.log"
    router = workers_router(("--graph-json", one_step(clean_predictor.url("a"))), log)
    with router:
        assert router.process is not None
        kills = kill_each_replacement(router, 5)  # the next restart waits 16 times the first
        assert len(kills.pids) == 5, kills
        deadline = time.monotonic() + 5
        while log.read_text().count("starting a new one") < 5:
            assert time.monotonic() < deadline, "the router did not see the last crash"
            time.sleep(0.005)
        router.signal(signal.SIGTERM)  # the restart is still pending
        while router.process.poll() is None:
            assert not children(router.pid) - kills.seen, "a worker was started after SIGTERM"
            time.sleep(0.01)
        code = router.process.wait()
    text = log.read_text()
    assert code == 0, text
    assert "will not be restarted: the router is stopping" in text


def test_workers_that_cannot_bind_the_port_are_a_crash_loop() -> None:
    with socket.socket() as holder:  # no SO_REUSEPORT: every worker's bind fails
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [
                processes.CLI,
                "router",
                "--graph-json",
                one_step("http://127.0.0.1:1/x"),
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env=processes.child_env(),
            check=False,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "crash loop: stopping the router" in result.stderr
    assert result.stderr.count("exited with 1: starting a new one") >= CRASH_LIMIT
    expected = sum(RESTART_DELAY * 2**i for i in range(CRASH_LIMIT))
    assert expected <= elapsed < expected + 10


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
