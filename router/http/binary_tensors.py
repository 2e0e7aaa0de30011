"""Binary Open Inference Protocol messages between steps, never written as JSON: the engine's
``TensorCodec`` (``outputsToInputs`` on a ``ModelInferResponse``) and the model a ``v2-grpc``
step names, written into the request it passes on.

``InferOutputTensor`` and ``InferInputTensor`` have the same fields under the same numbers, so a
response's output becomes the next request's input as it is, its raw contents with it. A
request's ``model_name`` and ``model_version`` are set by appending them to its bytes: protobuf
parsers keep the last value of a field that is not repeated, so nothing else is re-encoded.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from infergraph.router.engine.tensors import InvalidMessage, MissingOutputs, Renames
from infergraph.router.http import oip

_MODEL_NAME, _MODEL_VERSION = 1, 2  # the same numbers in ModelInferRequest and -Response


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def length_delimited(number: int, data: bytes) -> bytes:
    """Field ``number`` holding ``data`` (a string, bytes or an embedded message), encoded."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def with_model(raw: bytes, model: str, version: str) -> bytes:
    """``raw`` (a serialized ``ModelInferRequest``) asking for ``model`` at ``version`` ("":
    the server's choice), whatever it asked for before."""
    name = length_delimited(_MODEL_NAME, model.encode())
    return raw + name + length_delimited(_MODEL_VERSION, version.encode())


def _response(raw: bytes) -> Any:
    try:
        response = oip.ModelInferResponse.FromString(raw)
    except DecodeError as exc:
        raise InvalidMessage(f"not a valid ModelInferResponse: {exc}") from exc
    contents = len(response.raw_output_contents)
    if contents and contents != len(response.outputs):
        raise InvalidMessage(f"{contents} raw_output_contents for {len(response.outputs)} outputs")
    return response


class OipTensorCodec:
    """``outputsToInputs`` on serialized messages (``engine.tensors.TensorCodec``)."""

    def outputs_to_inputs(self, response: bytes, renames: Renames | None) -> bytes:
        message = _response(response)
        outputs, raws = message.outputs, message.raw_output_contents
        index = {output.name: i for i, output in enumerate(outputs)}
        if renames is None:
            chosen: Renames = tuple((name, name) for name in index)
        else:
            missing = [old for old, _ in renames if old not in index]
            if missing:
                raise MissingOutputs(missing, list(index))
            chosen = renames
        request = oip.ModelInferRequest(id=message.id)
        for old, new in chosen:
            at = index[old]
            tensor = request.inputs.add()
            tensor.MergeFromString(outputs[at].SerializeToString())
            tensor.name = new
            if raws:
                request.raw_input_contents.append(raws[at])
        result: bytes = request.SerializeToString()
        return result
