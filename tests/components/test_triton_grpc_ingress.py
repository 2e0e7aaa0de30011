"""gRPC ingress in front of a real Triton: tritonclient's sync and aio gRPC clients call the
router, whose graphs call Triton over v2 gRPC and over v2 REST; so does KServe's
``InferenceGRPCClient``, from its own environment. Every output is compared, value by value,
with the same chain of calls made straight to Triton over gRPC. A chain of v2-grpc steps runs on
the binary messages themselves, so it carries BYTES that JSON cannot."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio

from infergraph.predictors import processes
from infergraph.testing.harness import request

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


class Routers:
    """Starts a router with gRPC ingress on an example graph; its gRPC port (``http_ports``
    maps it to the router's REST port)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[processes.ServerProcess] = []
        self.http_ports: dict[int, int] = {}

    def __call__(self, example: str) -> int:
        port, grpc_port = processes.free_port(), processes.free_port()
        server = processes.router(
            port,
            "--graph",
            str(REPO / "graphs" / example),
            extra=("--drain-seconds", "0", "--grpc-port", str(grpc_port)),
            log_path=self.logs / f"{port}.log",
        )
        self.started.append(server.start())
        self.http_ports[grpc_port] = port
        return grpc_port


@pytest.fixture(scope="module")
def grpc_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routers]:
    routers = Routers(tmp_path_factory.mktemp("grpc-routers"))
    yield routers
    for server in routers.started:
        server.stop()


@pytest.mark.parametrize("example", ["triton-grpc.yaml", "triton-v2.yaml"])
def test_the_chain_over_grpc_ingress_matches_direct_calls(
    example: str, triton: str, grpc_router: Routers
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


def test_the_aio_client_in_parallel(triton: str, grpc_router: Routers) -> None:
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


def test_kserves_grpc_client_through_the_router_matches_direct_calls(
    triton: str, grpc_router: Routers, kserve_python: Path
) -> None:
    """KServe's InferenceGRPCClient (its own environment) against both graphs."""
    expected = direct_chain()
    for example in ("triton-grpc.yaml", "triton-v2.yaml"):
        port = grpc_router(example)
        run = subprocess.run(
            [
                str(kserve_python),
                str(Path(__file__).with_name("kserve_grpc_client.py")),
                f"127.0.0.1:{port}",
                example.removesuffix(".yaml"),
                "k-1",
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=120,
            cwd=Path(__file__).parent,
        )
        assert run.returncode == 0, run.stderr
        answer = json.loads(run.stdout)
        assert answer["id"] == "k-1", example
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert set(outputs) == set(expected), example
        for name, values in expected.items():
            got = outputs[name]
            assert got["datatype"] == triton_grpc.np_to_triton_dtype(values.dtype), (example, name)
            assert got["shape"] == list(values.shape), (example, name)
            assert np.array_equal(np.array(got["data"], values.dtype), values), (example, name)


# One batch row each (the model batches: a first dimension is the batch).
TYPES_INPUTS: dict[str, np.ndarray] = {
    "f": np.array([[1.5, -4.0, 0.25]], np.float32),
    "i": np.array([[7, -(2**40), 0]], np.int64),
    "b": np.array([[True, False, True]]),
}


def types_inputs(
    client: Any, strings: np.ndarray, others: dict[str, np.ndarray] = TYPES_INPUTS
) -> list[Any]:
    inputs = []
    for name, values in [*others.items(), ("s", strings)]:
        tensor = client.InferInput(
            name, list(values.shape), client.np_to_triton_dtype(values.dtype)
        )
        tensor.set_data_from_numpy(values)
        inputs.append(tensor)
    return inputs


def types_twice_direct(strings: np.ndarray) -> dict[str, np.ndarray]:
    """``types``, then ``types`` again on its outputs, straight to Triton over gRPC."""
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{TRITON_GRPC}") as c:
        first = c.infer("types", types_inputs(triton_grpc, strings))
        again = []
        for name in ("f", "i", "b", "s"):
            values = first.as_numpy(f"{name}_out")
            assert values is not None
            tensor = triton_grpc.InferInput(
                name, list(values.shape), triton_grpc.np_to_triton_dtype(values.dtype)
            )
            tensor.set_data_from_numpy(values)
            again.append(tensor)
        result = c.infer("types", again)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}


def test_a_grpc_chain_carries_bytes_json_cannot(triton: str, grpc_router: Routers) -> None:
    """Over gRPC ingress a graph of v2-grpc steps runs on the binary messages: BYTES elements
    that are not UTF-8 (which the JSON path refuses: tests/service/test_grpc_ingress.py) go
    through two Triton calls and back, byte for byte, as the same calls made directly give."""
    strings = np.array([[b"\xff\xfe\x00ab", b"", "é".encode("latin-1")]], np.object_)
    expected = types_twice_direct(strings)
    assert expected["s_out"].tolist() == [[b"\xff\xfe\x00AB", b"", b"\xe9"]]
    port = grpc_router("triton-grpc-types.yaml")
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{port}") as c:
        result = c.infer("triton-grpc-types", types_inputs(triton_grpc, strings), request_id="t")
    response = result.get_response()
    assert (response.id, response.model_name) == ("t", "types")
    assert {o.name for o in response.outputs} == set(expected)
    for name, values in expected.items():
        got = result.as_numpy(name)
        assert got is not None
        assert got.dtype == values.dtype, name
        assert np.array_equal(got, values), name


def test_the_same_chain_over_rest_gives_what_grpc_ingress_gives(
    triton: str, grpc_router: Routers
) -> None:
    """UTF-8 strings: REST ingress (JSON all the way) and gRPC ingress (binary all the way)
    answer the same values."""
    strings = np.array([[b"abc", "ünï".encode()]], np.object_)
    inputs = {name: values[:, :2] for name, values in TYPES_INPUTS.items()}
    grpc_port = grpc_router("triton-grpc-types.yaml")
    http_port = grpc_router.http_ports[grpc_port]
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}") as c:
        over_grpc = c.infer("g", types_inputs(triton_grpc, strings, inputs))
    body = {
        "inputs": [
            *(
                {
                    "name": name,
                    "shape": list(values.shape),
                    "datatype": triton_grpc.np_to_triton_dtype(values.dtype),
                    "data": values.tolist(),
                }
                for name, values in inputs.items()
            ),
            {"name": "s", "shape": [1, 2], "datatype": "BYTES", "data": ["abc", "ünï"]},
        ]
    }
    over_rest = request(http_port, body)
    assert over_rest.status == 200, over_rest.body
    for output in over_rest.json()["outputs"]:
        got = over_grpc.as_numpy(output["name"])
        assert got is not None
        assert list(got.shape) == output["shape"], output["name"]
        if output["datatype"] == "BYTES":
            assert [v.decode() for v in got.flatten()] == output["data"], output["name"]
        else:
            assert got.flatten().tolist() == output["data"], output["name"]


def test_model_stream_infer_answers_with_the_binary_chains_responses(
    triton: str, grpc_router: Routers
) -> None:
    """ModelStreamInfer on a graph that runs on binary tensors: each answer is the last step's
    response, embedded as it came, and an error is the stream's error message."""
    strings = np.array([[b"\xfe", b"b"]], np.object_)
    expected = types_twice_direct(strings)
    port = grpc_router("triton-grpc-types.yaml")
    answers: list[Any] = []
    with triton_grpc.InferenceServerClient(f"127.0.0.1:{port}") as c:
        c.start_stream(callback=lambda result, error: answers.append((result, error)))
        for i in range(3):
            c.async_stream_infer("g", types_inputs(triton_grpc, strings), request_id=str(i))
        c.async_stream_infer("g", [], request_id="empty")  # Triton refuses: no inputs
        deadline = time.monotonic() + 20
        while len(answers) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.stop_stream()
    assert len(answers) == 4, answers
    answered = {result.get_response().id: result for result, error in answers if error is None}
    assert sorted(answered) == ["0", "1", "2"]
    for result in answered.values():
        for name, values in expected.items():
            assert np.array_equal(result.as_numpy(name), values), name
    (error,) = [error for _, error in answers if error is not None]
    assert "INTERNAL" in str(error) or "INVALID_ARGUMENT" in str(error), error
