"""Binary OIP messages between steps (``router/http/binary_tensors.py``): ``outputsToInputs`` on
a serialized ``ModelInferResponse`` gives the request the JSON path gives, value for value, and
keeps bytes JSON cannot carry; a step's model is written into a request by appending fields."""

from __future__ import annotations

import struct
from typing import Any

import orjson
import pytest

from infergraph.router.engine.mapping import compile_outputs_to_inputs
from infergraph.router.engine.payload import Payload
from infergraph.router.engine.tensors import InvalidMessage, MissingOutputs
from infergraph.router.http import oip
from infergraph.router.http.binary_tensors import OipTensorCodec, length_delimited, with_model
from infergraph.router.http.ingress_tensors import request_to_json
from infergraph.router.http.tensors import InvalidV2Request, add_tensor, response_to_json

CODEC = OipTensorCodec()
OUTPUTS = [
    {"name": "scaled", "datatype": "FP32", "shape": [2, 2], "data": [0.5, -1.25, 3.0, 1e-3]},
    {"name": "label", "datatype": "INT64", "shape": [2, 1], "data": [2, -(2**62)]},
    {"name": "mask", "datatype": "BOOL", "shape": [3], "data": [True, False, True]},
    {"name": "word", "datatype": "BYTES", "shape": [2], "data": ["héllo", ""]},
    {"name": "small", "datatype": "UINT8", "shape": [2], "data": [0, 255]},
    {"name": "half", "datatype": "FP16", "shape": [1], "data": [1.5]},
]


def response(*outputs: dict[str, Any], raw: bool = True) -> Any:
    message = oip.ModelInferResponse(model_name="first", model_version="1", id="req-7")
    for index, spec in enumerate(outputs):
        add_tensor(message.outputs, message.raw_output_contents, spec, f"outputs[{index}]")
    if not raw:  # as KServe answers: typed contents instead of raw bytes
        for output, contents in zip(message.outputs, message.raw_output_contents, strict=True):
            assert output.datatype == "INT64"
            output.contents.int64_contents.extend(
                struct.unpack(f"<{len(contents) // 8}q", contents)
            )
        del message.raw_output_contents[:]
    return message


def over_json(message: Any, setting: Any) -> Any:
    """What the JSON path gives the next step: the response as v2 REST JSON, mapped."""
    mapping = compile_outputs_to_inputs(setting)
    assert mapping is not None
    return mapping.apply(Payload(orjson.dumps(response_to_json(message)))).json()


def over_binary(message: Any, setting: Any) -> Any:
    mapping = compile_outputs_to_inputs(setting)
    assert mapping is not None
    raw = CODEC.outputs_to_inputs(message.SerializeToString(), mapping.renames)
    return oip.ModelInferRequest.FromString(raw)


@pytest.mark.parametrize(
    "setting",
    [True, {"scaled": "features"}, {"word": "text", "label": "label_in", "half": "h"}],
    ids=["every output", "one renamed", "three renamed, reordered"],
)
def test_outputs_to_inputs_gives_what_the_json_path_gives(setting: Any) -> None:
    message = response(*OUTPUTS)
    binary = over_binary(message, setting)
    assert len(binary.raw_input_contents) == len(binary.inputs)
    assert binary.model_name == ""  # the step writes its own model in
    assert orjson.loads(request_to_json(binary)) == over_json(message, setting)


def test_typed_contents_are_kept_typed() -> None:
    message = response(OUTPUTS[1], raw=False)
    binary = over_binary(message, {"label": "x"})
    assert list(binary.raw_input_contents) == []
    assert list(binary.inputs[0].contents.int64_contents) == [2, -(2**62)]
    assert orjson.loads(request_to_json(binary)) == over_json(message, {"label": "x"})


def test_bytes_that_are_not_utf8_pass_unchanged() -> None:
    message = oip.ModelInferResponse(id="b")
    message.outputs.add(name="s_out", datatype="BYTES", shape=[1])
    element = struct.pack("<I", 4) + b"\xff\xfe\x00A"
    message.raw_output_contents.append(element)
    binary = over_binary(message, {"s_out": "s"})
    assert (binary.inputs[0].name, binary.id) == ("s", "b")
    assert list(binary.raw_input_contents) == [element]


def test_output_parameters_travel_with_the_tensor() -> None:
    message = response(OUTPUTS[0])
    message.outputs[0].parameters["unit"].string_param = "cm"
    binary = over_binary(message, True)
    assert binary.inputs[0].parameters["unit"].string_param == "cm"


def test_missing_outputs_are_named_with_the_ones_present() -> None:
    with pytest.raises(MissingOutputs) as raised:
        CODEC.outputs_to_inputs(response(*OUTPUTS[:2]).SerializeToString(), (("nope", "x"),))
    assert (raised.value.missing, raised.value.present) == (["nope"], ["scaled", "label"])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x0a\xff", "not a valid ModelInferResponse"),
        (
            response(*OUTPUTS[:2]).SerializeToString() + length_delimited(6, b"\x00" * 4),
            "3 raw_output_contents for 2 outputs",
        ),
    ],
    ids=["not protobuf", "more raw contents than outputs"],
)
def test_a_response_that_is_not_one_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        CODEC.outputs_to_inputs(raw, None)


@pytest.mark.parametrize(("model", "version"), [("classify", "3"), ("scale", ""), ("m\u00e9", "")])
def test_with_model_overrides_the_model_and_keeps_the_rest(model: str, version: str) -> None:
    request = oip.ModelInferRequest(model_name="graph", model_version="9", id="r")
    add_tensor(request.inputs, request.raw_input_contents, OUTPUTS[0], "inputs[0]")
    request.outputs.add(name="label")
    sent = oip.ModelInferRequest.FromString(with_model(request.SerializeToString(), model, version))
    assert (sent.model_name, sent.model_version) == (model, version)
    request.model_name, request.model_version = model, version
    assert sent == request


def test_a_grpc_clients_shape_too_long_is_refused_before_its_product_is_taken() -> None:
    """gRPC ingress: a shape of 400,000 dimensions of 2**62 (3.6 MB of protobuf) is refused
    for its length at once. Its product, taken first as it once was, costs the square of the
    length: minutes of a blocked event loop for one message."""
    request = oip.ModelInferRequest(model_name="g")
    request.inputs.add(name="x", datatype="FP32", shape=[2**62] * 400_000)
    with pytest.raises(InvalidV2Request) as raised:
        request_to_json(request)
    assert raised.value.cause == "inputs[0] (x): a shape of 400000 dimensions (at most 64)"
