"""Open Inference Protocol v2 over gRPC (as Triton serves it), behind the JSON v2 the graph speaks.

Clients keep sending JSON v2 requests to the router; a ``v2-grpc`` step converts the request to
``ModelInfer`` (binary tensors), calls the model with ``tritonclient.grpc.aio`` over one reused
channel per target, and turns the reply back into JSON v2. Datatypes and shapes round-trip
exactly; outputs given as raw bytes (Triton) or as typed contents (KServe) are both read.

A request that is not valid JSON v2 gets 400 with a reason, as a v2 REST server answers; gRPC
status codes map to the HTTP statuses v2 REST uses; an unreachable server is a connection error.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from infergraph.router.engine.errors import BadRequest, UpstreamConnectionError, UpstreamTimeout
from infergraph.router.engine.transport import Reply, StepCall

JSON = "application/json"

NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
# Where a reply that does not use raw_output_contents keeps each datatype's values.
TYPED_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
}
# Request parameters tritonclient sets itself: these go to ``infer`` as keyword arguments (each
# with the JSON types it accepts); the other reserved names cannot be sent over gRPC.
SEQUENCE_PARAMETERS: dict[str, tuple[type, ...]] = {
    "sequence_id": (int, str),
    "sequence_start": (bool,),
    "sequence_end": (bool,),
    "priority": (int,),
    "timeout": (int,),
}
RESERVED_PARAMETERS = ("headers", "binary_data_output")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class InvalidV2Request(BadRequest, ValueError):
    """The JSON body is not an Open Inference Protocol v2 request this step can send (400)."""


def _tensor(spec: Any, index: int) -> InferInput:
    if not isinstance(spec, dict):
        raise InvalidV2Request(f"inputs[{index}] must be an object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise InvalidV2Request(f"inputs[{index}] needs name, shape and datatype")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise InvalidV2Request(
            f"inputs[{index}] ({name}): shape must be a list of non-negative integers"
        )
    numpy_type = NUMPY_TYPES.get(datatype)
    if numpy_type is None:
        raise InvalidV2Request(f"inputs[{index}] ({name}): unsupported datatype {datatype}")
    data = spec.get("data")
    if not isinstance(data, list):
        raise InvalidV2Request(f"inputs[{index}] ({name}): data must be a list")
    try:
        if datatype == "BYTES":
            flat = np.array(data, dtype=np.object_).reshape(-1)
            if not all(isinstance(v, str) for v in flat):
                raise TypeError("BYTES data must be strings")
            encoded = [v.encode() for v in flat]
            array = np.array(encoded, dtype=np.object_).reshape(shape)
        else:
            array = np.array(data, dtype=numpy_type).reshape(shape)
        tensor = InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(array)
    except OverflowError as exc:
        raise InvalidV2Request(
            f"inputs[{index}] ({name}): a value is out of range for {datatype}"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise InvalidV2Request(f"inputs[{index}] ({name}): {exc}") from exc
    return tensor


def _requested_outputs(outputs: Any) -> list[InferRequestedOutput]:
    if not isinstance(outputs, list):
        raise InvalidV2Request('"outputs" must be a list')
    requested = []
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidV2Request(f"outputs[{index}] must be an object with a name")
        requested.append(InferRequestedOutput(output["name"]))
    return requested


def _parameter_ok(key: str, value: Any) -> bool:
    accepted = SEQUENCE_PARAMETERS.get(key, (str, bool, int, float))
    if isinstance(value, bool):  # a JSON true is no integer
        return bool in accepted
    if isinstance(value, int):
        low = 0 if key == "priority" else INT64_MIN  # priority is a uint64
        return int in accepted and low <= value <= INT64_MAX
    return isinstance(value, accepted)


def _parameters(parameters: Any) -> dict[str, Any]:
    """``infer`` keyword arguments for the request's parameters, checked as tritonclient would."""
    if not isinstance(parameters, dict):
        raise InvalidV2Request('"parameters" must be an object')
    arguments: dict[str, Any] = {}
    passed: dict[str, Any] = {}
    for key, value in parameters.items():
        if key in RESERVED_PARAMETERS or key.startswith("triton_"):
            raise InvalidV2Request(f'parameter "{key}" is reserved and cannot be sent over gRPC')
        if not _parameter_ok(key, value):
            raise InvalidV2Request(f'parameter "{key}": unsupported value {value!r}')
        (arguments if key in SEQUENCE_PARAMETERS else passed)[key] = value
    if passed:
        arguments["parameters"] = passed
    return arguments


def request_from_json(body: bytes) -> dict[str, Any]:
    """Keyword arguments for ``InferenceServerClient.infer`` from a JSON v2 request."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidV2Request(f"request body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InvalidV2Request('a v2 request is an object with an "inputs" list')
    arguments: dict[str, Any] = {
        "inputs": [_tensor(spec, i) for i, spec in enumerate(document["inputs"])]
    }
    if document.get("outputs") is not None:  # null, as some clients send, is absent
        arguments["outputs"] = _requested_outputs(document["outputs"])
    if isinstance(document.get("id"), str):
        arguments["request_id"] = document["id"]
    if document.get("parameters") is not None:
        arguments.update(_parameters(document["parameters"]))
    return arguments


def _output_values(response: Any, index: int, output: Any) -> list[Any]:
    datatype = output.datatype
    if index < len(response.raw_output_contents):
        raw = response.raw_output_contents[index]
        if datatype == "BYTES":
            values = deserialize_bytes_tensor(raw)
            return [v.decode("utf-8", "replace") for v in values.reshape(-1)]
        flat: list[Any] = np.frombuffer(raw, dtype=NUMPY_TYPES[datatype]).tolist()
        return flat
    field = TYPED_CONTENTS.get(datatype)
    values = list(getattr(output.contents, field)) if field else []
    if datatype == "BYTES":
        return [v.decode("utf-8", "replace") for v in values]
    if datatype == "FP32":
        return np.array(values, dtype=np.float32).tolist()  # type: ignore[no-any-return]
    return values


def response_to_json(response: Any) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the JSON a v2 REST server returns."""
    document: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        document["model_version"] = response.model_version
    if response.id:
        document["id"] = response.id
    document["outputs"] = [
        {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
            "data": _output_values(response, index, output),
        }
        for index, output in enumerate(response.outputs)
    ]
    return document


def _error(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"error": message}), JSON)


def error_reply(exc: InferenceServerException, url: str, timeout: float | None) -> Reply:
    """The reply v2 REST gives for a failed ``ModelInfer``; raises for failures below HTTP.

    ``UNAVAILABLE`` is a connection error and ``DEADLINE_EXCEEDED`` a timeout; other codes map
    through ``HTTP_STATUS``, and any code not listed there is 500.
    """
    code = (exc.status() or "").removeprefix("StatusCode.")
    if code == "UNAVAILABLE":
        raise UpstreamConnectionError(f'ModelInfer "{url}": {exc.message()}') from exc
    if code == "DEADLINE_EXCEEDED":
        raise UpstreamTimeout(
            f'ModelInfer "{url}": context deadline exceeded (timeout {timeout} s)'
        ) from exc
    return _error(HTTP_STATUS.get(code, 500), exc.message() or code)


class GrpcV2Transport:
    """One ``tritonclient.grpc.aio`` client (one HTTP/2 channel) per target, reused."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str, int], InferenceServerClient] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        await asyncio.gather(*(client.close() for client in clients.values()))

    def _client(self, call: StepCall) -> InferenceServerClient:
        target = call.target
        key = (target.scheme, target.host, target.port)
        client = self._clients.get(key)
        if client is None:
            client = InferenceServerClient(
                url=f"{target.host}:{target.port}", ssl=target.scheme == "grpcs"
            )
            self._clients[key] = client
        return client

    async def send(self, call: StepCall) -> Reply:
        try:
            arguments = request_from_json(call.body)
        except InvalidV2Request as exc:
            return _error(exc.status, exc.cause)
        metadata = {
            name.lower(): value for name, value in call.headers if name.lower() != "content-type"
        }
        try:
            result = await self._client(call).infer(
                model_name=call.model,
                model_version=call.model_version or "",
                client_timeout=call.timeout,
                headers=metadata or None,
                **arguments,
            )
        except InferenceServerException as exc:
            return error_reply(exc, call.target.url, call.timeout)
        response = result.get_response()
        return Reply(200, orjson.dumps(response_to_json(response)), JSON)
