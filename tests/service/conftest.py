"""Fixtures that start real processes on loopback: routers per test (the predictor, one per
module, is the suite's: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infergraph.predictors import processes
from infergraph.testing import faults
from infergraph.testing.harness import Predictor, RouterFactory


@pytest.fixture
def clean_predictor(predictor: Predictor) -> Predictor:
    predictor.clear()
    return predictor


@pytest.fixture
def start_router(tmp_path: Path) -> Iterator[RouterFactory]:
    """Start ``infergraph router`` with a graph; returns its port. Stopped after the test."""
    started: list[processes.ServerProcess] = []

    def start(
        graph_json: str | None = None,
        *,
        source: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
        **_: Any,
    ) -> int:
        port = processes.free_port()
        args = ("--graph-json", graph_json) if graph_json is not None else source
        server = processes.router(
            port,
            *args,
            env=env,
            extra=("--drain-seconds", "0", *extra),
            log_path=tmp_path / f"router-{port}.log",
        )
        started.append(server)
        server.start()
        return port

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fault_server(tmp_path: Path) -> Iterator[str]:
    """The fault-injecting server of ``infergraph.testing.faults`` as a process: its URL."""
    port = processes.free_port()
    with faults.fault_process(port, log_path=tmp_path / "faults.log"):
        yield f"http://127.0.0.1:{port}"
