"""gRPC ingress in a real router process, called with tritonclient's gRPC clients (sync and
aio) and with raw gRPC for what a well-behaved client never sends; the graphs' steps are the
local predictor's v2 models over REST (``identity`` answers its inputs back)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from infergraph.predictors import processes
from infergraph.router.http import oip
from infergraph.testing.harness import Predictor, RouterFactory, graph


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A local predictor with the iris models (and ``identity``)."""
    port = processes.free_port()
    log = tmp_path_factory.mktemp("iris") / "predictor.log"
    with processes.predictor(port, models=True, log_path=log):
        yield port


def v2_step(port: int, model: str, **step: Any) -> dict[str, Any]:
    return {"serviceUrl": f"http://127.0.0.1:{port}", "protocol": "v2", "model": model, **step}


def grpc_router(start_router: RouterFactory, spec: str | None, *extra: str, **kwargs: Any) -> int:
    grpc_port = processes.free_port()
    start_router(spec, extra=("--grpc-port", str(grpc_port), *extra), **kwargs)
    return grpc_port


def client(port: int) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{port}")


def identity_graph(iris: int) -> str:
    return graph({"root": {"routerType": "Sequence", "steps": [v2_step(iris, "identity")]}})


TENSORS: list[tuple[str, str, Any]] = [
    ("f32", "FP32", np.array([[1.5, -2.25, 3.0], [0.0, 1e-7, -1e30]], dtype=np.float32)),
    ("f64", "FP64", np.array([1.0000000000000002, -0.1], dtype=np.float64)),
    ("i64", "INT64", np.array([[-(2**62)], [2**62]], dtype=np.int64)),
    ("i8", "INT8", np.array([-128, 0, 127], dtype=np.int8)),
    ("u8", "UINT8", np.array([0, 255], dtype=np.uint8)),
    ("u32", "UINT32", np.array([2**32 - 1], dtype=np.uint32)),
    ("b", "BOOL", np.array([[True, False], [False, True]], dtype=bool)),
    ("s", "BYTES", np.array([b"hello", "grüße".encode(), b""], dtype=np.object_)),
]


def inputs(cls: Any) -> list[Any]:
    made = []
    for name, datatype, values in TENSORS:
        tensor = cls(name, list(values.shape), datatype)
        tensor.set_data_from_numpy(values)
        made.append(tensor)
    return made


def test_tensors_round_trip_exactly_through_a_graph(iris: int, start_router: RouterFactory) -> None:
    port = grpc_router(start_router, identity_graph(iris))
    with client(port) as c:
        result = c.infer("whatever", inputs(triton.InferInput), request_id="r-1")
        assert result.get_response().id == "r-1"
        for name, datatype, values in TENSORS:
            out = result.as_numpy(name)
            assert out is not None, name
            assert out.shape == values.shape, name
            assert result.get_output(name).datatype == datatype
            if datatype == "BYTES":
                assert [bytes(v) for v in out.flat] == [bytes(v) for v in values.flat]
            else:
                assert out.dtype == values.dtype
                assert np.array_equal(out, values), name


def test_parameters_round_trip(iris: int, start_router: RouterFactory) -> None:
    port = grpc_router(start_router, identity_graph(iris))
    tensor = triton.InferInput("x", [1], "INT32")
    tensor.set_data_from_numpy(np.array([7], dtype=np.int32))
    with client(port) as c:
        result = c.infer("g", [tensor], parameters={"flag": True, "n": -3, "who": "me"})
    answered = result.get_response().parameters
    assert answered["flag"].bool_param is True
    assert answered["n"].int64_param == -3
    assert answered["who"].string_param == "me"


def test_the_binary_size_of_raw_contents_is_not_written_into_json(
    iris: int, start_router: RouterFactory
) -> None:
    """KServe's gRPC client marks raw contents with ``binary_data_size``; the JSON the graph
    runs on carries the values instead, so a v2 REST server must not see it (Triton would look
    for that many bytes after the JSON). Other tensor parameters go on."""
    port = grpc_router(start_router, identity_graph(iris))
    request = oip.ModelInferRequest(model_name="g")
    tensor = request.inputs.add(name="x", datatype="INT32", shape=[2])
    tensor.parameters["binary_data_size"].int64_param = 8
    tensor.parameters["unit"].string_param = "cm"
    request.raw_input_contents.append(np.array([7, -1], "<i4").tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )
        answer = infer(request)
    (output,) = answer.outputs
    assert dict(output.parameters) == {"unit": oip.InferParameter(string_param="cm")}
    assert answer.raw_output_contents[0] == np.array([7, -1], "<i4").tobytes()


async def test_the_aio_client_and_many_calls_at_once(
    iris: int, start_router: RouterFactory
) -> None:
    port = grpc_router(start_router, identity_graph(iris))
    async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:

        async def one(i: int) -> int:
            tensor = triton_aio.InferInput("x", [1], "INT64")
            tensor.set_data_from_numpy(np.array([i], dtype=np.int64))
            result = await c.infer("g", [tensor])
            return int(result.as_numpy("x")[0])

        assert await asyncio.gather(*(one(i) for i in range(50))) == list(range(50))


def test_probes_and_metadata(iris: int, start_router: RouterFactory, tmp_path: Path) -> None:
    (tmp_path / "classify.json").write_text(
        graph({"root": {"routerType": "Sequence", "steps": [v2_step(iris, "tree")]}})
    )
    port = grpc_router(start_router, None, source=("--graph-dir", str(tmp_path)))
    with client(port) as c:
        assert c.is_server_live()
        assert c.is_server_ready()
        assert c.is_model_ready("classify")
        assert not c.is_model_ready("nope")
        assert c.get_server_metadata().name == "infergraph"
        metadata = c.get_model_metadata("classify")
        assert metadata.name == "classify"
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            ("x", "FP32", [-1, 4])
        ]
        assert [t.name for t in metadata.outputs] == ["label", "probabilities"]
        with pytest.raises(InferenceServerException) as raised:
            c.infer("nope", [])
        assert raised.value.status() == "StatusCode.NOT_FOUND"
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[6.3, 2.9, 5.6, 1.8]], dtype=np.float32))
        assert c.infer("classify", [x]).as_numpy("label").tolist() == [2]


def test_health_for_kubernetes_probes(iris: int, start_router: RouterFactory) -> None:
    port = grpc_router(start_router, identity_graph(iris))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=oip.HealthCheckRequest.SerializeToString,
            response_deserializer=oip.HealthCheckResponse.FromString,
        )
        assert check(oip.HealthCheckRequest()).status == oip.SERVING
        assert check(oip.HealthCheckRequest(service="elsewhere")).status == oip.SERVICE_UNKNOWN


def test_malformed_and_oversized_messages_are_refused_with_reasons(
    iris: int, start_router: RouterFactory
) -> None:
    port = grpc_router(start_router, identity_graph(iris), "--grpc-max-message-bytes", "65536")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as raised:
            raw(b"\xff\xff\xff\xff not a protobuf")
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "ModelInferRequest" in raised.value.details()
        with pytest.raises(grpc.RpcError) as raised:
            raw(b"\x0a" + b"\x80\x80\x08" + b"x" * 131072)  # model_name of 128 KiB
        assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )
        bad = oip.ModelInferRequest(model_name="g")
        bad.inputs.add(name="x", datatype="FP32", shape=[3])
        bad.raw_input_contents.append(b"\x00" * 8)  # two values for a shape of three
        with pytest.raises(grpc.RpcError) as raised:
            infer(bad)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "2 values for shape [3]" in raised.value.details()
        # A graph of REST steps runs on JSON, which cannot carry these bytes (a graph of
        # v2-grpc steps can: tests/components/test_triton_grpc_ingress.py).
        latin = oip.ModelInferRequest(model_name="g")
        latin.inputs.add(name="s", datatype="BYTES", shape=[1])
        latin.raw_input_contents.append(b"\x02\x00\x00\x00\xff\xfe")
        with pytest.raises(grpc.RpcError) as raised:
            infer(latin)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not UTF-8" in raised.value.details()


def test_errors_map_to_grpc_codes_with_their_cause(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    for status, code in ((404, "NOT_FOUND"), (503, "UNAVAILABLE"), (500, "INTERNAL")):
        step = {"serviceUrl": clean_predictor.url("m", status=status, body='{"error":"no"}')}
        port = grpc_router(
            start_router, graph({"root": {"routerType": "Sequence", "steps": [step]}})
        )
        with client(port) as c, pytest.raises(InferenceServerException) as raised:
            c.infer("g", [])
        assert raised.value.status() == f"StatusCode.{code}"


def test_a_deadline_and_a_cancel_end_the_graphs_calls(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    slow = {"serviceUrl": clean_predictor.url("slow", delay=30)}
    port = grpc_router(start_router, graph({"root": {"routerType": "Sequence", "steps": [slow]}}))
    with client(port) as c:
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as raised:
            c.infer("g", [], client_timeout=0.5)
        assert raised.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while clean_predictor.cancelled() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert clean_predictor.cancelled() == 1

    async def cancel_one() -> None:
        async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as c:
            call = asyncio.ensure_future(c.infer("g", []))
            await asyncio.sleep(0.5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(cancel_one())
    deadline = time.monotonic() + 5
    while clean_predictor.cancelled() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert clean_predictor.cancelled() == 2


def test_metadata_is_headers_for_propagate_headers(  # (KServe matches canonical names)
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    step = {"serviceUrl": clean_predictor.url("seen")}
    spec = graph({"root": {"routerType": "Sequence", "steps": [step]}})
    port = grpc_router(start_router, spec, env={"PROPAGATE_HEADERS": "X-Tenant"})
    with client(port) as c:
        result = c.infer("g", [], headers={"x-tenant": "alpha", "x-other": "no"})
    (call,) = clean_predictor.calls()
    assert call["headers"].get("X-Tenant") == "alpha"
    assert "X-Other" not in call["headers"]
    # Not a v2 answer: it comes back whole as the BYTES output "answer".
    assert b'"step":"seen"' in bytes(result.as_numpy("answer")[0])


def test_a_streamed_answer_larger_than_a_message_ends_a_unary_call(
    clean_predictor: Predictor, start_router: RouterFactory
) -> None:
    """ModelInfer gathers a streamed answer into one message; past the message limit it stops
    (RESOURCE_EXHAUSTED, the reason naming the limit) and ends the upstream call, rather than
    gathering all of it (here 35 MB) to fail at sending it."""
    step = {"serviceUrl": clean_predictor.url("llm", events=1_000_000), "protocol": "openai"}
    spec = graph({"root": {"routerType": "Sequence", "steps": [step]}})
    port = grpc_router(start_router, spec, "--grpc-max-message-bytes", "65536")
    prompt = triton.InferInput("prompt", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"hi"], dtype=np.object_))
    with client(port) as c, pytest.raises(InferenceServerException) as raised:
        c.infer("g", [prompt], parameters={"stream": True})
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "the streamed answer is over 65536 bytes" in str(raised.value.message())
    deadline = time.monotonic() + 5
    while clean_predictor.cancelled() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert clean_predictor.cancelled() == 1


def test_model_stream_infer_answers_each_request(iris: int, start_router: RouterFactory) -> None:
    port = grpc_router(start_router, identity_graph(iris))
    answers: list[Any] = []
    with client(port) as c:
        c.start_stream(callback=lambda result, error: answers.append((result, error)))
        for i in range(3):
            tensor = triton.InferInput("x", [1], "INT64")
            tensor.set_data_from_numpy(np.array([i], dtype=np.int64))
            c.async_stream_infer("g", [tensor], request_id=str(i))
        deadline = time.monotonic() + 10
        while len(answers) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        c.stop_stream()
    assert [error for _, error in answers] == [None] * 3
    assert sorted(int(result.as_numpy("x")[0]) for result, _ in answers) == [0, 1, 2]
