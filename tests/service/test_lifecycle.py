"""The router process: start-up errors, drain on SIGTERM, hot reload, many graphs, disconnects."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from infergraph.predictors import processes
from infergraph.testing.harness import Predictor, RouterFactory, graph, request


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [processes.CLI, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=processes.child_env(),
    )


@pytest.mark.parametrize(
    ("graph_json", "message"),
    [
        ("", "the graph is empty"),
        ("{not json", "not valid JSON"),
        (
            '{"nodes": {"root": {"routerType": "Sequence", "steps": [{"nodeName": "x"}]}}}',
            "node 'root', step 0",
        ),
    ],
)
def test_invalid_graph_json_exits_1_with_the_reason(graph_json: str, message: str) -> None:
    result = run_cli("router", "--graph-json", graph_json, "--port", str(processes.free_port()))
    assert result.returncode == 1
    assert message in result.stderr


def test_validate_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "nodes:\n  main:\n    routerType: Switch\n    steps:\n      - condition: '$.a['\n"
    )
    good = Path(__file__).resolve().parents[2] / "graphs" / "demo.yaml"
    result = run_cli("validate", str(good), str(bad))
    assert result.returncode == 1
    assert f"ok {good}: iris-demo:" in result.stdout
    assert "no node named 'root'" in result.stderr
    assert "node 'main', step 0: no target" in result.stderr
    assert "node 'main', step 0: JSONPath '$.a[' does not parse" in result.stderr
    assert run_cli("validate", str(good)).returncode == 0


def test_sigterm_drains_readyz_503_and_in_flight_requests_finish(
    clean_predictor: Predictor, tmp_path: Path
) -> None:
    p = clean_predictor
    port = processes.free_port()
    spec = graph(
        {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": p.url("slow", delay=1.0)}]}}
    )
    router = processes.router(
        port, "--graph-json", spec, extra=("--drain-seconds", "0.5"), log_path=tmp_path / "r.log"
    )
    with router:
        results: list[int] = []
        in_flight = threading.Thread(target=lambda: results.append(request(port, {"x": 1}).status))
        in_flight.start()
        time.sleep(0.3)
        router.signal(signal.SIGTERM)
        time.sleep(0.1)
        ready = request(port, b"", path="/readyz", method="GET")
        assert (ready.status, ready.body) == (503, b"shutting down")
        in_flight.join(5)
        assert results == [200]
        assert router.process is not None
        assert router.process.wait(10) == 0


def test_client_disconnect_cancels_the_downstream_call(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    p = clean_predictor
    port = start_router(
        graph(
            {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": p.url("slow", delay=5)}]}}
        )
    )
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        deadline = time.monotonic() + 5
        while not p.called() and time.monotonic() < deadline:
            time.sleep(0.02)
    deadline = time.monotonic() + 5
    while p.cancelled() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.cancelled() == 1


def _write_graph(path: Path, url: str, name: str | None = None) -> None:
    document: dict[str, object] = {
        "spec": {"nodes": {"root": {"routerType": "Sequence", "steps": [{"serviceUrl": url}]}}}
    }
    document["apiVersion"] = "serving.kserve.io/v1alpha1"
    document["kind"] = "InferenceGraph"
    document["metadata"] = {"name": name or path.stem}
    path.write_text(json.dumps(document))


def _wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_hot_reload_follows_configmap_symlink_swaps_and_ignores_invalid_graphs(
    clean_predictor: Predictor, start_router: RouterFactory, tmp_path: Path
) -> None:
    p = clean_predictor
    # The layout kubelet gives a mounted ConfigMap: graph.yaml -> ..data/graph.yaml, ..data -> ..v1
    mount = tmp_path / "mount"
    (mount / "..v1").mkdir(parents=True)
    _write_graph(mount / "..v1" / "graph.yaml", p.url("first"))
    (mount / "..data").symlink_to("..v1")
    (mount / "graph.yaml").symlink_to("..data/graph.yaml")
    port = start_router(
        source=("--graph", str(mount / "graph.yaml")), extra=("--reload-interval", "0.1")
    )
    assert request(port, {}).json()["step"] == "first"

    def swap(version: str, content_url: str | None, raw: str | None = None) -> None:
        (mount / version).mkdir()
        if raw is not None:
            (mount / version / "graph.yaml").write_text(raw)
        else:
            assert content_url is not None
            _write_graph(mount / version / "graph.yaml", content_url)
        tmp_link = mount / "..data_tmp"
        tmp_link.symlink_to(version)
        os.replace(tmp_link, mount / "..data")

    # A request in flight when the graph changes finishes on the plan it started with.
    _write_graph(mount / "..v1" / "graph.yaml", p.url("first", delay=0.8))
    _wait_for(lambda: request(port, {}).json()["step"] == "first")
    in_flight: list[str] = []
    thread = threading.Thread(target=lambda: in_flight.append(request(port, {}).json()["step"]))
    thread.start()
    time.sleep(0.2)
    swap("..v2", p.url("second"))
    _wait_for(lambda: request(port, {}).json()["step"] == "second")
    thread.join(5)
    assert in_flight == ["first"]
    swap(
        "..v3",
        None,
        raw='{"spec": {"nodes": {"root": {"routerType": "Nope", "steps": []}}}, "kind": "InferenceGraph"}',
    )
    time.sleep(0.5)
    assert request(port, {}).json()["step"] == "second"
    swap("..v4", p.url("fourth"))
    _wait_for(lambda: request(port, {}).json()["step"] == "fourth")


def test_graph_dir_serves_each_graph_by_name_and_picks_up_changes(
    clean_predictor: Predictor, start_router: RouterFactory, tmp_path: Path
) -> None:
    p = clean_predictor
    _write_graph(tmp_path / "a.json", p.url("a"), name="alpha")
    _write_graph(tmp_path / "b.json", p.url("b"))
    (tmp_path / "broken.yaml").write_text("nodes: {}")
    port = start_router(source=("--graph-dir", str(tmp_path)), extra=("--reload-interval", "0.1"))
    assert request(port, {}, path="/graphs/alpha").json()["step"] == "a"
    assert request(port, {}, path="/graphs/b/v1/models/m:predict").json()["step"] == "b"
    missing = request(port, {}, path="/graphs/zeta")
    assert missing.status == 404
    assert "zeta" in missing.json()["cause"]
    assert request(port, {}, path="/").status == 404
    _write_graph(tmp_path / "c.json", p.url("c"))
    _wait_for(lambda: request(port, {}, path="/graphs/c").status == 200)
    (tmp_path / "a.json").unlink()
    _wait_for(lambda: request(port, {}, path="/graphs/alpha").status == 404)


def test_the_embedded_demo_runs_and_stops_everything_it_started() -> None:
    # The ports graphs/demo.yaml names are taken: the demo runs on free ones instead.
    with contextlib.ExitStack() as held:
        for port in (18081, 18082):
            holder = held.enter_context(socket.socket())
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAITs
            try:
                holder.bind(("127.0.0.1", port))
                holder.listen()
            except OSError:  # something else holds it already, which serves as well
                assert not processes.port_is_free(port)
        result = run_cli("demo", timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "-> 200" in result.stdout
        assert '{"logistic":{"predictions":[1]},"forest":{"predictions":[1]}}' in result.stdout
        assert '"name":"label","shape":[1],"datatype":"INT64","data":[2]' in result.stdout
        assert "-> 404" in result.stdout
        used = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", result.stdout)]
        assert len(set(used)) == 3, result.stdout  # two predictors and the router
        assert not {18081, 18082} & set(used)
        for port in used:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, (
                    f"port {port} still served after the demo"
                )
