"""gRPC ingress's tensors: a client's ``ModelInferRequest`` as the JSON v2 request the graph runs
on, and the graph's answer as a ``ModelInferResponse``. Values are converted by ``tensors``'
rules, both ways; datatypes, shapes and parameters (BYTES and BOOL included) are kept exactly.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson

from infergraph.router.http import oip
from infergraph.router.http.tensors import (
    DATATYPES,
    INT64_MAX,
    INT64_MIN,
    MAX_DIMS,
    U32,
    InvalidV2Request,
    add_tensor,
    tensor_values,
)

ANSWER_TENSOR = "answer"  # the one BYTES output holding an answer that is not a v2 response
# The binary tensor extension's size of a tensor's bytes (KServe's gRPC client sets it beside
# raw contents): it describes bytes that JSON does not carry, and a v2 REST server that read it
# would look for them after the JSON, so it is not written into the JSON request.
BINARY_SIZE = "binary_data_size"


def parameter_value(parameter: Any) -> Any:
    """An ``InferParameter``'s value (None when none of its fields is set)."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def _parameters_json(parameters: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


def _json_parameters(target: Any, parameters: Any, where: str) -> None:
    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise InvalidV2Request(f'{where}"parameters" must be an object')
    for key, value in parameters.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
            target[key].int64_param = value
        elif isinstance(value, int) and 0 <= value < 2**64:
            target[key].uint64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        else:
            raise InvalidV2Request(f'{where}parameter "{key}": unsupported value {value!r}')


def request_to_json(request: Any) -> bytes:
    """The JSON v2 request a gRPC client's ``ModelInferRequest`` stands for (raises
    ``InvalidV2Request`` with the reason a v2 server would give)."""
    raws = request.raw_input_contents
    if raws and len(raws) != len(request.inputs):
        raise InvalidV2Request(
            f"raw_input_contents has {len(raws)} entries for {len(request.inputs)} inputs: "
            "give every input's contents raw, or none"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        where = f"inputs[{index}] ({tensor.name})"
        if tensor.datatype not in DATATYPES:
            raise InvalidV2Request(f"{where}: unsupported datatype {tensor.datatype!r}")
        try:
            data = tensor_values(raws, index, tensor, "strict")
        except UnicodeDecodeError as exc:
            raise InvalidV2Request(
                f"{where}: a BYTES element is not UTF-8, and the graph's steps take JSON"
            ) from exc
        except (ValueError, struct.error) as exc:
            raise InvalidV2Request(f"{where}: {exc}") from exc
        if len(tensor.shape) > MAX_DIMS:  # first: the product's cost grows with its square
            raise InvalidV2Request(
                f"{where}: a shape of {len(tensor.shape)} dimensions (at most {MAX_DIMS})"
            )
        shape = list(tensor.shape)
        if any(d < 0 for d in shape) or math.prod(shape) != len(data):
            raise InvalidV2Request(f"{where}: {len(data)} values for shape {shape}")
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}
        parameters = _parameters_json(tensor.parameters)
        parameters.pop(BINARY_SIZE, None)
        if parameters:
            entry["parameters"] = parameters
        entry["data"] = data
        inputs.append(entry)
    document: dict[str, Any] = {}
    if request.id:
        document["id"] = request.id
    if request.parameters:
        document["parameters"] = _parameters_json(request.parameters)
    document["inputs"] = inputs
    if request.outputs:
        document["outputs"] = [
            {
                "name": o.name,
                **({"parameters": _parameters_json(o.parameters)} if o.parameters else {}),
            }
            for o in request.outputs
        ]
    return orjson.dumps(document)


def response_from_json(body: bytes, model: str, version: str = "") -> Any:
    """The ``ModelInferResponse`` for the graph's answer: a v2 response's outputs as tensors
    (raw contents); any other answer (a v1 or merged Ensemble body) as one BYTES output,
    ``answer``, holding its bytes. Raises ``InvalidV2Request`` for a v2 response whose tensors
    cannot be encoded."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    response = oip.ModelInferResponse(model_name=model, model_version=version)
    if not isinstance(document, dict) or not isinstance(document.get("outputs"), list):
        response.outputs.add(name=ANSWER_TENSOR, datatype="BYTES", shape=[1])
        response.raw_output_contents.append(U32.pack(len(body)) + body)
        return response
    if isinstance(document.get("model_name"), str):
        response.model_name = document["model_name"]
    if isinstance(document.get("model_version"), str):
        response.model_version = document["model_version"]
    if isinstance(document.get("id"), str):
        response.id = document["id"]
    _json_parameters(response.parameters, document.get("parameters"), "")
    for index, spec in enumerate(document["outputs"]):
        where = f"outputs[{index}]"
        tensor = add_tensor(response.outputs, response.raw_output_contents, spec, where)
        _json_parameters(tensor.parameters, spec.get("parameters"), f"{where}: ")
    return response
