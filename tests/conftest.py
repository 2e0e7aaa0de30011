"""Suite-wide: every async test fails if it leaves tasks running; a Jaeger for trace tests."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from infergraph.predictors import processes
from infergraph.testing.harness import Predictor
from infergraph.testing.jaeger import JAEGER_CONFIG, Jaeger
from infergraph.testing.paths import CACHE

# Tasks a fixture owns (e.g. a test server's connection handlers) carry this name prefix; the
# fixture's teardown ends them, after the test.
FIXTURE_TASK = "fixture:"


def _leak_checked(test: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        before = asyncio.all_tasks()
        result = await test(*args, **kwargs)
        for _ in range(3):  # let tasks that were cancelled on the way out finish
            await asyncio.sleep(0)
        me = asyncio.current_task()
        leaked = [
            t
            for t in asyncio.all_tasks() - before
            if t is not me and not t.done() and not t.get_name().startswith(FIXTURE_TASK)
        ]
        for task in leaked:
            task.cancel()
        assert not leaked, (
            f"the test left {len(leaked)} task(s) running: {leaked}; "
            "await or cancel every task you start"
        )
        return result

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = _leak_checked(item.obj)


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """Jaeger v2 all-in-one (in memory) on loopback, built by tests/observability/build_jaeger.sh."""
    binary = CACHE / "bin" / "jaeger-v1.76.0"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `make test` (it builds Jaeger)", pytrace=False)
    work = tmp_path_factory.mktemp("jaeger")
    ports = {k: processes.free_port() for k in ("query", "query_grpc", "otlp_grpc", "otlp_http")}
    (work / "config.yaml").write_text(JAEGER_CONFIG % ports)
    server = processes.ServerProcess(
        [str(binary), "--config", str(work / "config.yaml")],
        f"http://127.0.0.1:{ports['query']}/api/services",
        log_path=work / "jaeger.log",
    )
    with server.start(timeout=60):
        yield Jaeger(
            f"http://127.0.0.1:{ports['otlp_http']}",
            f"http://127.0.0.1:{ports['query']}",
            f"http://127.0.0.1:{ports['otlp_grpc']}",
        )


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    """The local predictor's scriptable endpoints, one process per test module (the service
    and kube tests' model server)."""
    port = processes.free_port()
    log = tmp_path_factory.mktemp("predictor") / "predictor.log"
    with processes.predictor(port, log_path=log):
        yield Predictor(port)
