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

from infergraph.router.engine.errors import UpstreamConnectionError, UpstreamTimeout
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


class InvalidV2Request(ValueError):
    """The JSON body is not an Open Inference Protocol v2 request this step can send."""


def _tensor(spec: Any, index: int) -> InferInput:
    if not isinstance(spec, dict):
        raise InvalidV2Request(f"inputs[{index}] must be an object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise InvalidV2Request(f"inputs[{index}] needs name, shape and datatype")
    numpy_type = NUMPY_TYPES.get(datatype)
    if numpy_type is None:
        raise InvalidV2Request(f"inputs[{index}] ({name}): unsupported datatype {datatype}")
    data = spec.get("data")
    if not isinstance(data, list):
        raise InvalidV2Request(f"inputs[{index}] ({name}): data must be a list")
    try:
        if datatype == "BYTES":
            flat = np.array(data, dtype=np.object_).reshape(-1)
            encoded = [v.encode() if isinstance(v, str) else bytes(v) for v in flat]
            array = np.array(encoded, dtype=np.object_).reshape(shape)
        else:
            array = np.array(data, dtype=numpy_type).reshape(shape)
    except (ValueError, TypeError) as exc:
        raise InvalidV2Request(f"inputs[{index}] ({name}): {exc}") from exc
    tensor = InferInput(name, [int(d) for d in shape], datatype)
    tensor.set_data_from_numpy(array)
    return tensor


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
    outputs = document.get("outputs")
    if isinstance(outputs, list):
        arguments["outputs"] = [
            InferRequestedOutput(o["name"]) for o in outputs if isinstance(o, dict) and "name" in o
        ]
    if isinstance(document.get("id"), str):
        arguments["request_id"] = document["id"]
    if isinstance(document.get("parameters"), dict):
        arguments["parameters"] = document["parameters"]
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
            return _error(400, str(exc))
        metadata = {
            name.lower(): value for name, value in call.headers if name.lower() != "content-type"
        }
        url = call.target.url
        try:
            result = await self._client(call).infer(
                model_name=call.model,
                model_version=call.model_version or "",
                client_timeout=call.timeout,
                headers=metadata or None,
                **arguments,
            )
        except InferenceServerException as exc:
            code = (exc.status() or "").removeprefix("StatusCode.")
            if code == "UNAVAILABLE":
                raise UpstreamConnectionError(f'ModelInfer "{url}": {exc.message()}') from exc
            if code == "DEADLINE_EXCEEDED":
                raise UpstreamTimeout(
                    f'ModelInfer "{url}": context deadline exceeded (timeout {call.timeout} s)'
                ) from exc
            return _error(HTTP_STATUS.get(code, 500), exc.message() or code)
        response = result.get_response()
        return Reply(200, orjson.dumps(response_to_json(response)), JSON)
