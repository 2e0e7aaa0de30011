"""The v2-grpc step's conversions, in process: JSON v2 -> ``ModelInferRequest`` -> JSON v2.

No server: requests are read as the step puts them on the wire (a stub stands in for the
``GRPCInferenceService`` stub of the transport's channel to the target), and responses are
``ModelInferResponse`` messages built here, with typed ``contents`` or ``raw_output_contents``.
Expected values are written out (``struct`` little-endian packing, not numpy).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
import orjson
import pytest
from tritonclient.grpc import service_pb2

from infergraph.router.engine.errors import BadRequest, UpstreamConnectionError, UpstreamTimeout
from infergraph.router.engine.transport import Headers, Reply, StepCall, parse_target
from infergraph.router.http.tensors import (
    ITEM_SIZES,
    InvalidV2Request,
    _reshape_error,
    request_from_json,
    response_to_json,
)
from infergraph.router.http.v2_grpc import HTTP_STATUS, GrpcV2Transport, error_reply
from infergraph.router.protocols import Protocol

URL = "grpc://127.0.0.1:1"  # never dialled: the stub answers
JSON_HEADERS: Headers = (("Content-Type", "application/json"),)
BIG = 2**53 + 1  # the first integer a double cannot hold


def serialized(*items: bytes) -> bytes:
    """A BYTES tensor as raw contents: each element behind its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def tensor(name: Any, datatype: Any, shape: Any, data: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data, **extra}


def body(*inputs: Any, **fields: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **fields})


class FakeStub:
    """Stands in for the channel's ``ModelInfer`` method: records each call and answers it."""

    def __init__(self, answer: Callable[[Any], Any] | grpc.RpcError) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    async def ModelInfer(self, **call: Any) -> Any:
        self.calls.append(call)
        if isinstance(self.answer, grpc.RpcError):
            raise self.answer
        return self.answer(call["request"])

    @property
    def request(self) -> Any:
        assert len(self.calls) == 1
        return self.calls[0]["request"]


def echo(request: Any) -> Any:
    """An identity model: every input comes back as an output of the same name."""
    response = service_pb2.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    for tensor_in in request.inputs:
        response.outputs.add(
            name=tensor_in.name, datatype=tensor_in.datatype, shape=tensor_in.shape
        )
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


async def send(
    payload: bytes,
    stub: FakeStub,
    *,
    headers: Headers = JSON_HEADERS,
    step_timeout: float | None = 5.0,
    model_version: str | None = None,
) -> Reply:
    """``GrpcV2Transport.send`` through the transport's own ``grpc.aio`` channel, whose stub is
    ``stub`` (the conversions and status mapping are the same with the router's own HTTP/2
    client: tests/transport/test_h2_grpc.py runs both against a real server)."""
    transport = GrpcV2Transport(client="grpcio")
    call = StepCall(
        target=parse_target(URL),
        body=payload,
        headers=headers,
        timeout=step_timeout,
        protocol=Protocol.V2_GRPC,
        model="m",
        model_version=model_version,
    )
    transport._client(call).model_infer = stub.ModelInfer
    try:
        return await transport.send(call)
    finally:
        await transport.close()


async def wire(payload: bytes) -> Any:
    """The ``ModelInferRequest`` the step sends for a JSON v2 request."""
    stub = FakeStub(echo)
    reply = await send(payload, stub)
    assert reply.status == 200, reply.body
    return stub.request


def parameters(message: Any) -> dict[str, tuple[str, Any]]:
    """A protobuf parameters map as {key: (which field is set, its value)}."""
    found = {}
    for key, value in message.parameters.items():
        field = value.WhichOneof("parameter_choice")
        found[key] = (field, getattr(value, field))
    return found


def response(*outputs: dict[str, Any], raw: list[bytes] | None = None, **fields: Any) -> Any:
    message = service_pb2.ModelInferResponse(model_name="m", **fields)
    for output in outputs:
        message.outputs.add(**output)
    message.raw_output_contents.extend(raw or [])
    return message


# --- JSON v2 request -> ModelInferRequest -------------------------------------------------------

REQUEST_TENSORS = [
    # (datatype, shape, JSON data, raw_input_contents on the wire)
    ("BOOL", [4], [True, False, False, True], b"\x01\x00\x00\x01"),
    ("INT8", [3], [-128, 0, 127], struct.pack("<3b", -128, 0, 127)),
    ("INT16", [2], [-32768, 32767], struct.pack("<2h", -32768, 32767)),
    ("INT32", [2], [-(2**31), 2**31 - 1], struct.pack("<2i", -(2**31), 2**31 - 1)),
    (
        "INT64",
        [4],
        [BIG, -BIG, -(2**63), 2**63 - 1],
        struct.pack("<4q", BIG, -BIG, -(2**63), 2**63 - 1),
    ),
    ("UINT8", [2], [0, 255], struct.pack("<2B", 0, 255)),
    ("UINT16", [2], [0, 65535], struct.pack("<2H", 0, 65535)),
    ("UINT32", [2], [0, 2**32 - 1], struct.pack("<2I", 0, 2**32 - 1)),
    ("UINT64", [2], [2**64 - 1, BIG], struct.pack("<2Q", 2**64 - 1, BIG)),
    ("FP16", [3], [1.0, -2.5, 65504.0], struct.pack("<3e", 1.0, -2.5, 65504.0)),
    ("FP16", [1], [0.1], struct.pack("<e", 0.1)),
    ("FP32", [3], [0.1, 3.4e38, 1e-7], struct.pack("<3f", 0.1, 3.4e38, 1e-7)),
    ("FP32", [2], [1, -2], struct.pack("<2f", 1.0, -2.0)),  # JSON integers in a float tensor
    ("FP64", [3], [0.1, -1e308, 5e-324], struct.pack("<3d", 0.1, -1e308, 5e-324)),
    ("BYTES", [2], ["abc", "héllo wörld"], serialized(b"abc", "héllo wörld".encode())),
    ("BYTES", [3], ["🙂", "", "a\x00b"], serialized("🙂".encode(), b"", b"a\x00b")),
]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "raw"),
    REQUEST_TENSORS,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(REQUEST_TENSORS)],
)
async def test_each_datatype_goes_on_the_wire_as_raw_little_endian_contents(
    datatype: str, shape: list[int], data: list[Any], raw: bytes
) -> None:
    request = await wire(body(tensor("x", datatype, shape, data)))
    assert request.model_name == "m"
    (sent,) = request.inputs
    assert (sent.name, sent.datatype, list(sent.shape)) == ("x", datatype, shape)
    assert not sent.HasField("contents")
    assert list(request.raw_input_contents) == [raw]


SHAPES = [
    # (shape, JSON data: flat or nested, raw contents of INT32 values)
    ([2, 3], [1, 2, 3, 4, 5, 6], struct.pack("<6i", 1, 2, 3, 4, 5, 6)),
    ([2, 3], [[1, 2, 3], [4, 5, 6]], struct.pack("<6i", 1, 2, 3, 4, 5, 6)),
    ([2, 1, 2], [[[1, 2]], [[3, 4]]], struct.pack("<4i", 1, 2, 3, 4)),
    ([1, 1, 1, 1], [7], struct.pack("<i", 7)),
    ([], [7], struct.pack("<i", 7)),  # a scalar
    ([0], [], b""),
    ([2, 0], [], b""),
    ([2, 0], [[], []], b""),
]


@pytest.mark.parametrize(("shape", "data", "raw"), SHAPES)
async def test_shapes_multi_dimensional_scalar_and_empty(
    shape: list[int], data: list[Any], raw: bytes
) -> None:
    request = await wire(body(tensor("x", "INT32", shape, data)))
    assert list(request.inputs[0].shape) == shape
    assert list(request.raw_input_contents) == [raw]


@pytest.mark.parametrize(
    ("shape", "data", "raw"),
    [
        ([2, 2], [["a", "b"], ["c", "d"]], serialized(b"a", b"b", b"c", b"d")),
        ([], ["only"], serialized(b"only")),
        ([0], [], b""),
    ],
)
async def test_bytes_shapes(shape: list[int], data: list[Any], raw: bytes) -> None:
    request = await wire(body(tensor("s", "BYTES", shape, data)))
    assert list(request.inputs[0].shape) == shape
    assert list(request.raw_input_contents) == [raw]


async def test_several_inputs_keep_their_order_and_their_own_contents() -> None:
    request = await wire(
        body(
            tensor("a", "FP64", [1], [0.5]),
            tensor("b", "BYTES", [1], ["z"]),
            tensor("c", "BOOL", [1], [True]),
        )
    )
    assert [(t.name, t.datatype) for t in request.inputs] == [
        ("a", "FP64"),
        ("b", "BYTES"),
        ("c", "BOOL"),
    ]
    assert list(request.raw_input_contents) == [struct.pack("<d", 0.5), serialized(b"z"), b"\x01"]


async def test_a_request_with_no_inputs_is_sent_as_such() -> None:
    request = await wire(body())
    assert list(request.inputs) == []
    assert list(request.raw_input_contents) == []


async def test_id_and_model_version_go_on_the_wire() -> None:
    stub = FakeStub(echo)
    reply = await send(body(tensor("x", "INT8", [1], [1]), id="req-7"), stub, model_version="3")
    assert reply.status == 200
    assert (stub.request.id, stub.request.model_version) == ("req-7", "3")
    assert orjson.loads(reply.body)["id"] == "req-7"
    assert orjson.loads(reply.body)["model_version"] == "3"


async def test_without_id_outputs_or_parameters_none_are_sent() -> None:
    request = await wire(body(tensor("x", "INT8", [1], [1])))
    assert request.id == ""
    assert list(request.outputs) == []
    assert dict(request.parameters) == {}


@pytest.mark.parametrize(
    ("outputs", "names"),
    [
        ([{"name": "b"}, {"name": "a"}], ["b", "a"]),
        ([{"name": "a", "parameters": {"binary_data": False}}], ["a"]),
        ([], []),
        (None, []),  # null is absent, as some clients serialize it
    ],
)
async def test_requested_outputs(outputs: list[dict[str, Any]] | None, names: list[str]) -> None:
    request = await wire(body(tensor("x", "INT8", [1], [1]), outputs=outputs))
    assert [o.name for o in request.outputs] == names


PARAMETERS = [
    # (JSON parameters, the wire's request parameters)
    (
        {"s": "text", "t": True, "n": -(2**63), "big": 2**63 - 1, "f": 0.25},
        {
            "s": ("string_param", "text"),
            "t": ("bool_param", True),
            "n": ("int64_param", -(2**63)),
            "big": ("int64_param", 2**63 - 1),
            "f": ("double_param", 0.25),
        },
    ),
    (
        {"sequence_id": 42, "sequence_start": True},
        {
            "sequence_id": ("int64_param", 42),
            "sequence_start": ("bool_param", True),
            "sequence_end": ("bool_param", False),
        },
    ),
    (
        {"sequence_id": "corr-1", "sequence_end": True},
        {
            "sequence_id": ("string_param", "corr-1"),
            "sequence_start": ("bool_param", False),
            "sequence_end": ("bool_param", True),
        },
    ),
    (
        {"priority": 2, "timeout": 1500},
        {"priority": ("uint64_param", 2), "timeout": ("int64_param", 1500)},
    ),
    ({"priority": 0}, {}),  # tritonclient's default priority is not sent
    ({}, {}),
    (None, {}),
]


@pytest.mark.parametrize(("given", "sent"), PARAMETERS)
async def test_request_parameters(
    given: dict[str, Any] | None, sent: dict[str, tuple[str, Any]]
) -> None:
    request = await wire(body(tensor("x", "INT8", [1], [1]), parameters=given))
    assert parameters(request) == sent


async def test_headers_become_lowercase_metadata_without_content_type() -> None:
    stub = FakeStub(echo)
    headers = (*JSON_HEADERS, ("X-Request-Id", "abc"), ("Authorization", "Bearer t"))
    await send(body(tensor("x", "INT8", [1], [1])), stub, headers=headers, step_timeout=2.5)
    (call,) = stub.calls
    assert dict(call["metadata"]) == {"x-request-id": "abc", "authorization": "Bearer t"}
    assert call["timeout"] == 2.5


async def test_no_headers_left_means_no_metadata() -> None:
    stub = FakeStub(echo)
    await send(body(tensor("x", "INT8", [1], [1])), stub)
    assert dict(stub.calls[0]["metadata"]) == {}


# --- round trip through an identity model -------------------------------------------------------

ROUND_TRIPS = [
    # (datatype, shape, JSON data in, flat JSON data out)
    ("BOOL", [2, 2], [[True, False], [False, True]], [True, False, False, True]),
    ("INT8", [2], [-128, 127], [-128, 127]),
    ("INT16", [2], [-32768, 32767], [-32768, 32767]),
    ("INT32", [2], [-(2**31), 2**31 - 1], [-(2**31), 2**31 - 1]),
    ("INT64", [2, 2], [1, -2, BIG, -(2**63)], [1, -2, BIG, -(2**63)]),
    ("INT64", [2], [2**63 - 1, -BIG], [2**63 - 1, -BIG]),
    ("UINT8", [2], [0, 255], [0, 255]),
    ("UINT16", [2], [0, 65535], [0, 65535]),
    ("UINT32", [2], [0, 2**32 - 1], [0, 2**32 - 1]),
    ("UINT64", [3], [0, BIG, 2**64 - 1], [0, BIG, 2**64 - 1]),
    ("FP16", [3], [0.5, -1.25, 65504.0], [0.5, -1.25, 65504.0]),
    ("FP16", [1], [0.1], [0.0999755859375]),  # the nearest half
    ("FP32", [2, 3], [[0.1, 1.5, -3.0], [1e-7, 3.4e38, 0.0]], None),  # see below
    ("FP64", [2], [0.1, 1e308], [0.1, 1e308]),
    ("BYTES", [2, 1], [["abc"], ["héllo wörld"]], ["abc", "héllo wörld"]),
    ("BYTES", [3], ["🙂", "", "a\x00b"], ["🙂", "", "a\x00b"]),
    ("BYTES", [0], [], []),
    ("INT32", [0, 3], [], []),
]
# FP32 comes back as the nearest float32 of each value, written as a double.
FP32_OUT = [
    struct.unpack("<f", struct.pack("<f", v))[0] for v in (0.1, 1.5, -3.0, 1e-7, 3.4e38, 0.0)
]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "expected"),
    ROUND_TRIPS,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(ROUND_TRIPS)],
)
async def test_round_trip_through_an_identity_model(
    datatype: str, shape: list[int], data: list[Any], expected: list[Any] | None
) -> None:
    reply = await send(body(tensor("x", datatype, shape, data)), FakeStub(echo))
    assert (reply.status, reply.content_type) == (200, "application/json")
    document = orjson.loads(reply.body)
    assert document == {
        "model_name": "m",
        "outputs": [
            {
                "name": "x",
                "datatype": datatype,
                "shape": shape,
                "data": FP32_OUT if expected is None else expected,
            }
        ],
    }


async def test_int64_beyond_2_53_is_written_exactly_in_the_reply() -> None:
    reply = await send(body(tensor("i", "INT64", [3], [BIG, 2**63 - 1, -(2**63)])), FakeStub(echo))
    assert b'"data":[9007199254740993,9223372036854775807,-9223372036854775808]' in reply.body


# --- ModelInferResponse -> JSON v2 --------------------------------------------------------------

RAW_OUTPUTS = [
    # (datatype, raw_output_contents, JSON data)
    ("BOOL", b"\x01\x00\x01", [True, False, True]),
    ("INT8", struct.pack("<3b", -128, 0, 127), [-128, 0, 127]),
    ("INT16", struct.pack("<2h", -32768, 32767), [-32768, 32767]),
    ("INT32", struct.pack("<2i", -(2**31), 2**31 - 1), [-(2**31), 2**31 - 1]),
    ("INT64", struct.pack("<3q", BIG, -(2**63), 2**63 - 1), [BIG, -(2**63), 2**63 - 1]),
    ("UINT8", struct.pack("<2B", 0, 255), [0, 255]),
    ("UINT16", struct.pack("<2H", 0, 65535), [0, 65535]),
    ("UINT32", struct.pack("<2I", 0, 2**32 - 1), [0, 2**32 - 1]),
    ("UINT64", struct.pack("<2Q", 2**64 - 1, BIG), [2**64 - 1, BIG]),
    ("FP16", struct.pack("<3e", 0.1, -2.5, 65504.0), [0.0999755859375, -2.5, 65504.0]),
    ("FP32", struct.pack("<2f", 0.1, -3.0), [0.10000000149011612, -3.0]),
    ("FP64", struct.pack("<2d", 0.1, -1e308), [0.1, -1e308]),
    ("BYTES", serialized(b"abc", "héllo".encode(), b""), ["abc", "héllo", ""]),
    ("BYTES", serialized("🙂".encode(), b"a\x00b"), ["🙂", "a\x00b"]),
    # Bytes that are not UTF-8 cannot be JSON strings: each bad byte becomes U+FFFD.
    ("BYTES", serialized(b"\xff\xfeok", b"caf\xe9"), ["\ufffd\ufffdok", "caf\ufffd"]),
    ("INT32", b"", []),
    ("BYTES", b"", []),
]


@pytest.mark.parametrize(
    ("datatype", "raw", "data"),
    RAW_OUTPUTS,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(RAW_OUTPUTS)],
)
def test_outputs_read_from_raw_output_contents(datatype: str, raw: bytes, data: list[Any]) -> None:
    message = response({"name": "y", "datatype": datatype, "shape": [len(data)]}, raw=[raw])
    assert response_to_json(message) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": datatype, "shape": [len(data)], "data": data}],
    }


TYPED_OUTPUTS = [
    # (datatype, the InferTensorContents field and values, JSON data)
    ("BOOL", {"bool_contents": [True, False]}, [True, False]),
    ("INT8", {"int_contents": [-128, 127]}, [-128, 127]),
    ("INT16", {"int_contents": [-32768, 32767]}, [-32768, 32767]),
    ("INT32", {"int_contents": [-(2**31), 2**31 - 1]}, [-(2**31), 2**31 - 1]),
    ("INT64", {"int64_contents": [BIG, -(2**63), 2**63 - 1]}, [BIG, -(2**63), 2**63 - 1]),
    ("UINT8", {"uint_contents": [0, 255]}, [0, 255]),
    ("UINT16", {"uint_contents": [0, 65535]}, [0, 65535]),
    ("UINT32", {"uint_contents": [0, 2**32 - 1]}, [0, 2**32 - 1]),
    ("UINT64", {"uint64_contents": [2**64 - 1, BIG]}, [2**64 - 1, BIG]),
    ("FP32", {"fp32_contents": [0.1, 1.5]}, [0.10000000149011612, 1.5]),
    ("FP64", {"fp64_contents": [0.1, -1e308]}, [0.1, -1e308]),
    ("BYTES", {"bytes_contents": [b"abc", "héllo".encode(), b""]}, ["abc", "héllo", ""]),
    ("BYTES", {"bytes_contents": [b"\xff\xfeok"]}, ["\ufffd\ufffdok"]),
    ("INT64", {}, []),
]


@pytest.mark.parametrize(
    ("datatype", "contents", "data"),
    TYPED_OUTPUTS,
    ids=[f"{case[0]}-{i}" for i, case in enumerate(TYPED_OUTPUTS)],
)
def test_outputs_read_from_typed_contents(
    datatype: str, contents: dict[str, list[Any]], data: list[Any]
) -> None:
    message = response(
        {
            "name": "y",
            "datatype": datatype,
            "shape": [len(data)],
            "contents": service_pb2.InferTensorContents(**contents),
        }
    )
    assert response_to_json(message) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": datatype, "shape": [len(data)], "data": data}],
    }


def test_multi_dimensional_outputs_keep_their_shape_with_flat_data() -> None:
    message = response(
        {"name": "a", "datatype": "INT32", "shape": [2, 3]},
        {"name": "b", "datatype": "BYTES", "shape": [2, 1]},
        {"name": "c", "datatype": "FP64", "shape": [0, 4]},
        raw=[struct.pack("<6i", 1, 2, 3, 4, 5, 6), serialized(b"x", b"y"), b""],
    )
    assert response_to_json(message)["outputs"] == [
        {"name": "a", "datatype": "INT32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
        {"name": "b", "datatype": "BYTES", "shape": [2, 1], "data": ["x", "y"]},
        {"name": "c", "datatype": "FP64", "shape": [0, 4], "data": []},
    ]


def test_typed_multi_dimensional_and_scalar_outputs() -> None:
    message = response(
        {
            "name": "a",
            "datatype": "UINT64",
            "shape": [2, 2],
            "contents": service_pb2.InferTensorContents(uint64_contents=[1, 2, 3, 2**64 - 1]),
        },
        {
            "name": "b",
            "datatype": "BOOL",
            "shape": [],
            "contents": service_pb2.InferTensorContents(bool_contents=[True]),
        },
    )
    assert response_to_json(message)["outputs"] == [
        {"name": "a", "datatype": "UINT64", "shape": [2, 2], "data": [1, 2, 3, 2**64 - 1]},
        {"name": "b", "datatype": "BOOL", "shape": [], "data": [True]},
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"model_name": "m", "outputs": []}),
        ({"model_version": "2"}, {"model_name": "m", "model_version": "2", "outputs": []}),
        ({"id": "r1"}, {"model_name": "m", "id": "r1", "outputs": []}),
        (
            {"model_version": "1", "id": "r2"},
            {"model_name": "m", "model_version": "1", "id": "r2", "outputs": []},
        ),
    ],
)
def test_response_header_fields_appear_only_when_set(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert response_to_json(response(**fields)) == expected


# --- gRPC status -> HTTP status -----------------------------------------------------------------

# Every code the mapping lists, and every other gRPC code (the default: 500).
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.OK: 500,  # never an error in practice; not listed, so the default
    grpc.StatusCode.CANCELLED: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.ABORTED: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}


def test_the_table_here_covers_every_grpc_code_and_the_whole_mapping() -> None:
    raised = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert set(GRPC_TO_HTTP) | raised == set(grpc.StatusCode)
    assert {code.name: s for code, s in GRPC_TO_HTTP.items() if s != 500} == HTTP_STATUS


@pytest.mark.parametrize(("code", "status"), GRPC_TO_HTTP.items(), ids=str)
def test_error_reply_maps_grpc_codes_to_v2_rest_statuses(
    code: grpc.StatusCode, status: int
) -> None:
    reply = error_reply(code.name, "the reason", URL, 1.0)
    assert (reply.status, reply.content_type) == (status, "application/json")
    assert orjson.loads(reply.body) == {"error": "the reason"}


def test_an_unknown_code_is_500() -> None:
    reply = error_reply("NO_SUCH_CODE", "client side", URL, 1.0)
    assert (reply.status, orjson.loads(reply.body)) == (500, {"error": "client side"})


def test_an_error_without_a_message_names_its_code() -> None:
    reply = error_reply("NOT_FOUND", "", URL, 1.0)
    assert (reply.status, orjson.loads(reply.body)) == (404, {"error": "NOT_FOUND"})


def test_unavailable_is_a_connection_error() -> None:
    with pytest.raises(UpstreamConnectionError) as raised:
        error_reply("UNAVAILABLE", "failed to connect", URL, 1.0)
    assert raised.value.cause == f'ModelInfer "{URL}": failed to connect'
    assert raised.value.status == 500


def test_deadline_exceeded_is_a_timeout() -> None:
    with pytest.raises(UpstreamTimeout) as raised:
        error_reply("DEADLINE_EXCEEDED", "Deadline Exceeded", URL, 0.25)
    assert raised.value.cause == f'ModelInfer "{URL}": context deadline exceeded (timeout 0.25 s)'


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.RpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(("code", "status"), GRPC_TO_HTTP.items(), ids=str)
async def test_a_failed_model_infer_comes_back_as_a_v2_rest_error(
    code: grpc.StatusCode, status: int
) -> None:
    reply = await send(body(tensor("x", "INT8", [1], [1])), FakeStub(rpc_error(code, "nope")))
    assert (reply.status, orjson.loads(reply.body)) == (status, {"error": "nope"})


@pytest.mark.parametrize(
    ("code", "error", "cause"),
    [
        (grpc.StatusCode.UNAVAILABLE, UpstreamConnectionError, f'ModelInfer "{URL}": down'),
        (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            UpstreamTimeout,
            f'ModelInfer "{URL}": context deadline exceeded (timeout 5.0 s)',
        ),
    ],
)
async def test_failures_below_http_raise_upstream_errors(
    code: grpc.StatusCode, error: type[Exception], cause: str
) -> None:
    with pytest.raises(error) as raised:
        await send(body(tensor("x", "INT8", [1], [1])), FakeStub(rpc_error(code, "down")))
    assert str(raised.value) == cause


# --- malformed JSON v2 requests: 400 with a reason, nothing sent --------------------------------

BIGGER_THAN_U64 = b"18446744073709551616"
MALFORMED = [
    # (request body, the reason exactly, or its start when it ends with "...")
    (b"{", "request body is not JSON: ..."),
    (
        b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [NaN]}]}',
        "request body is not JSON: ...",
    ),
    (b'{"inputs": [], "big": 1e400}', "request body is not JSON: ..."),
    (
        b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}',
        "request body is not JSON: ...",
    ),
    (b"[]", 'a v2 request is an object with an "inputs" list'),
    (orjson.dumps({"instances": [1]}), 'a v2 request is an object with an "inputs" list'),
    (orjson.dumps({"inputs": {"name": "x"}}), 'a v2 request is an object with an "inputs" list'),
    (orjson.dumps({"inputs": None}), 'a v2 request is an object with an "inputs" list'),
    (body(1), "inputs[0] must be an object"),
    (
        body({"datatype": "INT8", "shape": [1], "data": [1]}),
        "inputs[0] needs name, shape and datatype",
    ),
    (body({"name": "x", "shape": [1], "data": [1]}), "inputs[0] needs name, shape and datatype"),
    (
        body({"name": "x", "datatype": "INT8", "data": [1]}),
        "inputs[0] needs name, shape and datatype",
    ),
    (body(tensor(7, "INT8", [1], [1])), "inputs[0] needs name, shape and datatype"),
    (body(tensor("x", "INT8", 1, [1])), "inputs[0] needs name, shape and datatype"),
    (body(tensor("x", 8, [1], [1])), "inputs[0] needs name, shape and datatype"),
    (
        body(tensor("x", "INT8", [-1], [1])),
        "inputs[0] (x): shape must be a list of non-negative integers",
    ),
    (
        body(tensor("x", "INT8", [1.0], [1])),
        "inputs[0] (x): shape must be a list of non-negative integers",
    ),
    (
        body(tensor("x", "INT8", [True], [1])),
        "inputs[0] (x): shape must be a list of non-negative integers",
    ),
    (
        body(tensor("x", "INT8", ["1"], [1])),
        "inputs[0] (x): shape must be a list of non-negative integers",
    ),
    (
        body(tensor("x", "INT8", [[1]], [1])),
        "inputs[0] (x): shape must be a list of non-negative integers",
    ),
    (
        b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1e30], "data": []}]}',
        "inputs[0] (x): shape must be a list of non-negative integers",
    ),
    (body(tensor("x", "FLOAT32", [1], [1.0])), "inputs[0] (x): unsupported datatype FLOAT32"),
    (body(tensor("x", "fp32", [1], [1.0])), "inputs[0] (x): unsupported datatype fp32"),
    (body(tensor("x", "BF16", [1], [1.0])), "inputs[0] (x): unsupported datatype BF16"),
    (body({"name": "x", "datatype": "INT8", "shape": [1]}), "inputs[0] (x): data must be a list"),
    (body(tensor("x", "INT8", [1], None)), "inputs[0] (x): data must be a list"),
    (body(tensor("x", "INT8", [1], 5)), "inputs[0] (x): data must be a list"),
    (body(tensor("x", "BYTES", [1], "abc")), "inputs[0] (x): data must be a list"),
    (
        body(tensor("x", "INT32", [2, 2], [1, 2, 3])),
        "inputs[0] (x): cannot reshape array of size 3 into shape (2,2)",
    ),
    (
        body(tensor("x", "INT32", [2], [1, 2, 3])),
        "inputs[0] (x): cannot reshape array of size 3 into shape (2,)",
    ),
    (
        body(tensor("x", "FP32", [], [])),
        "inputs[0] (x): cannot reshape array of size 0 into shape ()",
    ),
    (
        body(tensor("x", "BYTES", [3], ["a", "b"])),
        "inputs[0] (x): cannot reshape array of size 2 into shape (3,)",
    ),
    (
        body(tensor("x", "INT32", [3], [[1], [2, 3]])),
        "inputs[0] (x): setting an array element with a sequence...",
    ),
    (
        body(tensor("x", "INT32", [1], ["a"])),
        "inputs[0] (x): invalid literal for int() with base 10: 'a'",
    ),
    (
        body(tensor("x", "INT32", [1], [None])),
        "inputs[0] (x): int() argument must be a string, a bytes-like object or a real number, not 'NoneType'",
    ),
    (
        body(tensor("x", "FP64", [1], [{}])),
        "inputs[0] (x): float() argument must be a string or a real number, not 'dict'",
    ),
    (body(tensor("x", "UINT8", [1], [256])), "inputs[0] (x): a value is out of range for UINT8"),
    (body(tensor("x", "UINT8", [1], [-1])), "inputs[0] (x): a value is out of range for UINT8"),
    (body(tensor("x", "INT8", [1], [128])), "inputs[0] (x): a value is out of range for INT8"),
    (body(tensor("x", "INT16", [1], [-32769])), "inputs[0] (x): a value is out of range for INT16"),
    (
        body(tensor("x", "UINT16", [1], [65536])),
        "inputs[0] (x): a value is out of range for UINT16",
    ),
    (body(tensor("x", "INT32", [1], [2**31])), "inputs[0] (x): a value is out of range for INT32"),
    (body(tensor("x", "UINT32", [1], [-1])), "inputs[0] (x): a value is out of range for UINT32"),
    (body(tensor("x", "INT64", [1], [2**63])), "inputs[0] (x): a value is out of range for INT64"),
    (body(tensor("x", "INT64", [1], [1e20])), "inputs[0] (x): a value is out of range for INT64"),
    (body(tensor("x", "UINT64", [1], [-1])), "inputs[0] (x): a value is out of range for UINT64"),
    (
        b'{"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1], "data": ['
        + BIGGER_THAN_U64
        + b"]}]}",
        "inputs[0] (x): a value is out of range for UINT64",
    ),
    (body(tensor("x", "BYTES", [1], [5])), "inputs[0] (x): BYTES data must be strings"),
    (body(tensor("x", "BYTES", [1], [True])), "inputs[0] (x): BYTES data must be strings"),
    (body(tensor("x", "BYTES", [1], [None])), "inputs[0] (x): BYTES data must be strings"),
    (body(tensor("x", "BYTES", [1], [{}])), "inputs[0] (x): BYTES data must be strings"),
    (body(tensor("x", "BYTES", [2], [[104, 105]])), "inputs[0] (x): BYTES data must be strings"),
    (
        body(tensor("x", "BYTES", [2], [["a", "b"], ["c"]])),
        "inputs[0] (x): BYTES data must be strings",
    ),
    (
        body(tensor("a", "INT8", [1], [1]), tensor("b", "INT8", [2], [1])),
        "inputs[1] (b): cannot reshape array of size 1 into shape (2,)",
    ),
    (body(outputs="y"), '"outputs" must be a list'),
    (body(outputs={"name": "y"}), '"outputs" must be a list'),
    (body(outputs=[{"nam": "y"}]), "outputs[0] must be an object with a name"),
    (body(outputs=[{"name": "y"}, {"name": 5}]), "outputs[1] must be an object with a name"),
    (body(outputs=[{"name": None}]), "outputs[0] must be an object with a name"),
    (body(outputs=["y"]), "outputs[0] must be an object with a name"),
    (body(parameters=[1]), '"parameters" must be an object'),
    (body(parameters="p"), '"parameters" must be an object'),
    (body(parameters={"a": [1]}), 'parameter "a": unsupported value [1]'),
    (body(parameters={"a": {"b": 1}}), "parameter \"a\": unsupported value {'b': 1}"),
    (body(parameters={"a": None}), 'parameter "a": unsupported value None'),
    (body(parameters={"a": 2**63}), 'parameter "a": unsupported value 9223372036854775808'),
    (body(parameters={"sequence_id": 1.5}), 'parameter "sequence_id": unsupported value 1.5'),
    (body(parameters={"sequence_id": True}), 'parameter "sequence_id": unsupported value True'),
    (body(parameters={"sequence_start": 1}), 'parameter "sequence_start": unsupported value 1'),
    (
        body(parameters={"sequence_end": "yes"}),
        "parameter \"sequence_end\": unsupported value 'yes'",
    ),
    (body(parameters={"priority": -1}), 'parameter "priority": unsupported value -1'),
    (body(parameters={"priority": "high"}), "parameter \"priority\": unsupported value 'high'"),
    (body(parameters={"timeout": 1.5}), 'parameter "timeout": unsupported value 1.5'),
    (
        body(parameters={"headers": {"a": "b"}}),
        'parameter "headers" is reserved and cannot be sent over gRPC',
    ),
    (
        body(parameters={"binary_data_output": True}),
        'parameter "binary_data_output" is reserved and cannot be sent over gRPC',
    ),
    (
        body(parameters={"triton_enable_empty_final_response": True}),
        'parameter "triton_enable_empty_final_response" is reserved and cannot be sent over gRPC',
    ),
]


def check_reason(reason: str, expected: str) -> None:
    if expected.endswith("..."):
        assert reason.startswith(expected.removesuffix("...")), reason
    else:
        assert reason == expected


@pytest.mark.parametrize(("payload", "reason"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_requests_raise_bad_request(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidV2Request) as raised:
        request_from_json(payload)
    assert isinstance(raised.value, BadRequest)
    assert raised.value.status == 400
    check_reason(raised.value.cause, reason)
    assert str(raised.value) == raised.value.cause


@pytest.mark.parametrize(("payload", "reason"), MALFORMED, ids=range(len(MALFORMED)))
async def test_malformed_requests_are_answered_400_and_not_sent(
    payload: bytes, reason: str
) -> None:
    stub = FakeStub(echo)
    reply = await send(payload, stub)
    assert (reply.status, reply.content_type) == (400, "application/json")
    check_reason(orjson.loads(reply.body)["error"], reason)
    assert stub.calls == []


def test_the_shape_check_answers_as_numpy_reshape() -> None:
    """``_reshape_error`` (and its shortcut for the common case) against numpy itself, on
    every shape of up to three dimensions drawn from sizes around the limits, for value
    counts 0-6 and three item sizes: numpy's reason, or None where numpy reshapes."""
    import numpy  # tritonclient's dependency, so in the test environment  # noqa: PLC0415

    sizes = [0, 1, 2, 3, 4, 2**31, 2**62, 2**63 - 1, 2**63]
    dtypes = {"INT8": numpy.int8, "FP32": numpy.float32, "FP64": numpy.float64}
    for count in range(7):
        for dims in range(4):
            for shape in itertools.product(sizes, repeat=dims):
                for datatype, dtype in dtypes.items():
                    try:
                        numpy.zeros(count, dtype=dtype).reshape(shape)
                        expected = None
                    except ValueError as exc:
                        expected = str(exc)
                    found = _reshape_error(count, list(shape), ITEM_SIZES[datatype])
                    assert found == expected, (count, shape, datatype)


def test_a_shape_too_long_is_refused_before_its_product_is_taken() -> None:
    """A client sets the shape's length: one of 400,000 dimensions of 2**63 - 1 (8 MB of
    JSON) is refused for its length at once. Multiplying its dimensions first, as the check
    once did, costs the square of the length: minutes of a blocked event loop."""
    dims = 400_000
    payload = orjson.dumps(
        {"inputs": [{"name": "a", "shape": [2**63 - 1] * dims, "datatype": "FP32", "data": []}]}
    )
    with pytest.raises(InvalidV2Request) as raised:
        request_from_json(payload)
    assert raised.value.status == 400
    assert raised.value.cause.endswith(
        f"maximum supported dimension for an ndarray is currently 64, found {dims}"
    ), raised.value.cause
