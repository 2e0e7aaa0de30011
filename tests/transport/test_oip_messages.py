"""Our Open Inference Protocol messages (``router/http/oip.py``, built from a table) against the
generated ones tritonclient ships: every field the same, the same bytes on the wire."""

from __future__ import annotations

from typing import Any

import pytest
from tritonclient.grpc import service_pb2

from infergraph.router.http import oip


def fields(descriptor: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (
            f.number,
            f.name,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None,
        )
        for f in descriptor.fields
    )


def theirs(path: str) -> Any:
    head, *nested = path.split(".")
    descriptor = service_pb2.DESCRIPTOR.message_types_by_name[head]
    for name in nested:
        descriptor = descriptor.nested_types_by_name[name]
    return descriptor


@pytest.mark.parametrize("path", sorted(oip.MESSAGES))
def test_every_field_is_the_protocols(path: str) -> None:
    ours = oip.POOL.FindMessageTypeByName(f"inference.{path}")
    assert fields(ours) == fields(theirs(path))
    for entry in ("ParametersEntry",):
        if entry in theirs(path).nested_types_by_name:
            assert fields(ours.nested_types_by_name[entry]) == fields(
                theirs(path).nested_types_by_name[entry]
            )


def test_the_service_has_the_protocols_methods() -> None:
    generated = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = oip.FILE.services_by_name["GRPCInferenceService"]
    for method in ours.methods:
        other = generated.methods_by_name[method.name]
        assert method.input_type.full_name == other.input_type.full_name
        assert method.output_type.full_name == other.output_type.full_name
        assert (method.client_streaming, method.server_streaming) == (
            other.client_streaming,
            other.server_streaming,
        )


def test_the_same_bytes_on_the_wire_both_ways() -> None:
    request = service_pb2.ModelInferRequest(model_name="m", model_version="2", id="x")
    request.parameters["p"].int64_param = 7
    tensor = request.inputs.add(name="in", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    tensor.parameters["b"].bool_param = True
    request.outputs.add(name="out")
    request.raw_input_contents.append(b"\x00\x01")
    wire = request.SerializeToString(deterministic=True)
    mine = oip.ModelInferRequest.FromString(wire)
    assert mine.SerializeToString(deterministic=True) == wire
    assert mine.inputs[0].contents.fp32_contents == [1.5, -2.0]
    assert mine.parameters["p"].WhichOneof("parameter_choice") == "int64_param"
    response = oip.ModelInferResponse(model_name="m")
    response.outputs.add(name="o", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"a")
    back = service_pb2.ModelInferResponse.FromString(response.SerializeToString())
    assert back.outputs[0].contents.bytes_contents == [b"a"]
