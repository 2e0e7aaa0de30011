"""gRPC ingress in front of a real Triton: tritonclient's sync and aio gRPC clients call the
router, whose graphs call Triton over v2 gRPC and over v2 REST; every output is compared, value by
value, with the same chain of calls made straight to Triton over gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from infergraph.predictors import processes

TRITON_GRPC = 18201  # tests/components/conftest.py starts Triton with gRPC here

REPO = Path(__file__).resolve().parents[2]
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [0.1, 0.2, 0.3, 0.4]], np.float32)


def direct_chain() -> dict[str, np.ndarray]:
    """scale, then classify, straight to Triton over gRPC."""
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{TRITON_GRPC}") as c:
        x = triton_grpc.InferInput("x", list(ROWS.shape), "FP32")
        x.set_data_from_numpy(ROWS)
        scaled = c.infer("scale", [x]).as_numpy("scaled")
        assert scaled is not None
        features = triton_grpc.InferInput("features", list(scaled.shape), "FP32")
        features.set_data_from_numpy(scaled)
        result = c.infer("classify", [features])
        response = result.get_response()
        return {o.name: result.as_numpy(o.name) for o in response.outputs}


@pytest.fixture(scope="module")
def grpc_router(tmp_path_factory: pytest.TempPathFactory) -> Any:
    started: list[processes.ServerProcess] = []
    logs = tmp_path_factory.mktemp("grpc-routers")

    def start(example: str) -> int:
        port, grpc_port = processes.free_port(), processes.free_port()
        server = processes.router(
            port,
            "--graph",
            str(REPO / "graphs" / example),
            extra=("--drain-seconds", "0", "--grpc-port", str(grpc_port)),
            log_path=logs / f"{port}.log",
        )
        started.append(server.start())
        return grpc_port

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("example", ["triton-grpc.yaml", "triton-v2.yaml"])
def test_the_chain_over_grpc_ingress_matches_direct_calls(
    example: str, triton: str, grpc_router: Any
) -> None:
    port = grpc_router(example)
    expected = direct_chain()
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{port}") as c:
        x = triton_grpc.InferInput("x", list(ROWS.shape), "FP32")
        x.set_data_from_numpy(ROWS)
        result = c.infer(example.removesuffix(".yaml"), [x], request_id="r-9")
    assert result.get_response().id == "r-9"
    assert {o.name for o in result.get_response().outputs} == set(expected)
    for name, values in expected.items():
        got = result.as_numpy(name)
        assert got is not None
        assert got.dtype == values.dtype, name
        assert got.shape == values.shape, name
        assert np.array_equal(got, values), name


def test_the_aio_client_in_parallel(triton: str, grpc_router: Any) -> None:
    port = grpc_router("triton-grpc.yaml")
    expected = direct_chain()["label"]

    async def main() -> list[Any]:
        async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:

            async def one() -> Any:
                x = triton_aio.InferInput("x", list(ROWS.shape), "FP32")
                x.set_data_from_numpy(ROWS)
                return (await c.infer("g", [x])).as_numpy("label")

            return await asyncio.gather(*(one() for _ in range(20)))

    for labels in asyncio.run(main()):
        assert np.array_equal(labels, expected)
