"""Open Inference Protocol tensors between JSON v2 and protobuf, both ways: a JSON v2 request
into a ``ModelInferRequest`` (for ``v2-grpc`` steps) and a ``ModelInferResponse`` back into JSON,
and the reverse pair for gRPC ingress (a client's ``ModelInferRequest`` into the JSON v2 the
graph runs on, the graph's JSON v2 answer into a ``ModelInferResponse``).

The JSON accepted, the values sent and the reasons given for a bad request are those of the
numpy conversion this replaced (``np.array(data, dtype).reshape(shape)``): nested lists are
checked as numpy discovers an array's shape, values are converted as numpy converts Python
objects (floats truncate into integer tensors, numeric strings parse, null is NaN in a float
tensor, FP32/FP16 overflow is infinity), and numpy's own words are used for what it rejects.
Binary tensors are packed little-endian with ``array``/``struct``, and outputs given as raw
bytes (Triton) or as typed contents (KServe) are both read.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from itertools import chain
from typing import Any

import orjson

from infergraph.router.engine.errors import BadRequest
from infergraph.router.http import oip

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
# Request parameters that have their own place in a Triton request (each with the JSON types it
# accepts); the other reserved names cannot be sent over gRPC.
SEQUENCE_PARAMETERS: dict[str, tuple[type, ...]] = {
    "sequence_id": (int, str),
    "sequence_start": (bool,),
    "sequence_end": (bool,),
    "priority": (int,),
    "timeout": (int,),
}
RESERVED_PARAMETERS = ("headers", "binary_data_output")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# ``array`` type codes of the fixed-width numeric datatypes (sizes checked below).
ARRAY_CODES = {
    "INT8": "b",
    "UINT8": "B",
    "INT16": "h",
    "UINT16": "H",
    "INT32": "i",
    "UINT32": "I",
    "INT64": "q",
    "UINT64": "Q",
    "FP32": "f",
    "FP64": "d",
}
INTEGER_RANGES = {
    "INT8": (-(2**7), 2**7 - 1),
    "UINT8": (0, 2**8 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "UINT16": (0, 2**16 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "UINT32": (0, 2**32 - 1),
    "INT64": (INT64_MIN, INT64_MAX),
    "UINT64": (0, 2**64 - 1),
}
# Element sizes numpy gives each datatype (BYTES: an object pointer), for its array-size limit.
ITEM_SIZES = {
    "BOOL": 1,
    "INT8": 1,
    "UINT8": 1,
    "INT16": 2,
    "UINT16": 2,
    "FP16": 2,
    "INT32": 4,
    "UINT32": 4,
    "FP32": 4,
    "INT64": 8,
    "UINT64": 8,
    "FP64": 8,
    "BYTES": 8,
}
assert all(array(code).itemsize == ITEM_SIZES[name] for name, code in ARRAY_CODES.items())
DATATYPES = frozenset(ITEM_SIZES)
MAX_DIMS = 64  # numpy's NPY_MAXDIMS
SWAP = sys.byteorder != "little"  # the wire is little-endian
U32 = struct.Struct("<I")
NAN, INF = math.nan, math.inf


class InvalidV2Request(BadRequest, ValueError):
    """The JSON body is not an Open Inference Protocol v2 request this step can send (400)."""


# --- nested JSON lists -> a flat list and its shape, as numpy discovers them ---------------------


class _Discovery:
    """numpy's shape discovery (``PyArray_DiscoverDTypeAndShape``) over nested lists."""

    __slots__ = ("max_dims", "ragged", "reached", "shape")

    def __init__(self) -> None:
        self.max_dims = MAX_DIMS
        self.shape = [0] * MAX_DIMS
        self.reached = False  # a scalar or an empty list fixed the depth
        self.ragged = False

    def _update(self, depth: int, size: int | None) -> bool:
        """numpy's ``update_shape`` for a list of ``size`` (None: a scalar) at ``depth``."""
        sequence = size is not None
        new_dims = 1 if sequence else 0
        reached = self.reached
        ok = True
        if depth + new_dims > self.max_dims:
            ok = False
            new_dims = self.max_dims - depth
        elif not sequence and self.max_dims != depth:
            self.max_dims = depth
            if reached:
                ok = False
        if new_dims and size is not None:
            if not reached:
                self.shape[depth] = size
            elif size != self.shape[depth]:
                ok = False
                self.max_dims = depth
        if not sequence:
            self.reached = True
        return ok

    def visit(self, value: Any, depth: int) -> None:
        if type(value) is not list:
            if not self._update(depth, None):
                self.ragged = True
            return
        if depth == self.max_dims:  # a list where numpy wants scalars: ragged, or too deep
            self._update(depth, None)
            self.ragged = True
            return
        if not self._update(depth, len(value)):
            self.ragged = True
            return
        if not value:
            self.reached = True
            self.max_dims = depth + 1
            return
        for item in value:
            self.visit(item, depth + 1)


def _flatten_exactly(data: list[Any]) -> tuple[list[int], list[Any]]:
    """Shape and flat values of nested lists, or numpy's error for a ragged or too deep nest."""
    discovery = _Discovery()
    discovery.visit(data, 0)
    ndim = discovery.max_dims
    if discovery.ragged:
        if ndim == MAX_DIMS:
            raise ValueError(
                "setting an array element with a sequence. The requested array would exceed "
                f"the maximum number of dimension of {MAX_DIMS}."
            )
        raise ValueError(
            "setting an array element with a sequence. The requested array has an "
            f"inhomogeneous shape after {ndim} dimensions. The detected shape was "
            f"{tuple(discovery.shape[:ndim])!r} + inhomogeneous part."
        )
    flat = data
    for _ in range(ndim - 1):
        flat = list(chain.from_iterable(flat))
    return discovery.shape[:ndim], flat


def _rows(data: list[Any]) -> tuple[list[int], list[list[Any]]] | None:
    """Shape and innermost lists of regular nested lists; None if a level is irregular or deep.

    Only the levels above the innermost lists are checked: a list among the values is left to
    the packers, which reject it (and so hand the data to ``_flatten_exactly``).
    """
    shape = [len(data)]
    rows = [data]
    while data and type(rows[0][0]) is list:
        items = list(chain.from_iterable(rows))
        size = len(items[0])
        for item in items:
            if type(item) is not list or len(item) != size:
                return None
        shape.append(size)
        if len(shape) > MAX_DIMS:
            return None
        rows = items
        if not size:
            break
    return shape, rows


def _flatten(data: list[Any]) -> tuple[list[int], list[Any]] | None:
    """Shape and flat values of regular nested lists (see ``_rows``), or None."""
    found = _rows(data)
    if found is None:
        return None
    shape, rows = found
    return shape, rows[0] if len(rows) == 1 else list(chain.from_iterable(rows))


# --- flat JSON values -> raw little-endian contents ----------------------------------------------

STRUCT_CODES = {**ARRAY_CODES, "FP16": "e"}


_ROW_PACKERS: dict[tuple[str, int], Any] = {}


def _row_packer(datatype: str, size: int) -> Any:
    """``struct``'s packer of ``size`` little-endian values of ``datatype`` (kept for rows of
    up to 64 values, the sizes that repeat from request to request)."""
    pack = _ROW_PACKERS.get((datatype, size))
    if pack is None:
        pack = struct.Struct(f"<{size}{STRUCT_CODES[datatype]}").pack
        if size <= 64 and len(_ROW_PACKERS) < 1024:
            _ROW_PACKERS[datatype, size] = pack
    return pack


def _pack_fast(datatype: str, data: list[Any]) -> tuple[int, bytes] | None:
    """Count and raw contents of regular lists of plain JSON values; None: ``_pack_exactly``."""
    found = _rows(data)
    if found is None:
        return None
    shape, rows = found
    size = shape[-1]
    try:
        if datatype == "BOOL":
            values = rows[0] if len(rows) == 1 else list(chain.from_iterable(rows))
            if any(type(v) is list for v in values):
                return None
            return len(values), bytes(map(bool, values))
        pack = _row_packer(datatype, size)
        if len(rows) == 1:
            return size, pack(*rows[0])
        return len(rows) * size, b"".join([pack(*row) for row in rows])
    except (TypeError, ValueError, OverflowError, struct.error):
        return None


def _as_float(value: Any) -> float:
    return NAN if value is None else float(value)


def _half(value: float) -> bytes:
    try:
        return struct.pack("<e", value)
    except OverflowError:  # beyond the largest half: numpy rounds to infinity
        return struct.pack("<e", math.copysign(INF, value))


def _pack_exactly(datatype: str, values: list[Any]) -> bytes:
    """Raw contents converting each value as numpy converts a Python object, or its error."""
    if datatype == "BOOL":
        return bytes(map(bool, values))
    if datatype == "FP16":
        return b"".join([_half(_as_float(v)) for v in values])
    if datatype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[datatype]
        packed: array[Any]
        integers = []
        for value in values:  # in order: the first bad value is the one reported
            integer = value if type(value) is int else int(value)
            if not low <= integer <= high:
                raise OverflowError(f"Python integer {integer} out of bounds for {datatype}")
            integers.append(integer)
        packed = array(ARRAY_CODES[datatype], integers)
    else:
        packed = array(ARRAY_CODES[datatype], [_as_float(v) for v in values])
    if SWAP:
        packed.byteswap()
    return packed.tobytes()


def _reshape_error(size: int, shape: list[int], item_size: int) -> str | None:
    """numpy's reason for not reshaping ``size`` values into ``shape``, or None if it can."""
    # The length first: a client sets it, and the product below costs its square in time.
    if len(shape) > MAX_DIMS:
        return (
            f"maximum supported dimension for an ndarray is currently {MAX_DIMS}, "
            f"found {len(shape)}"
        )
    product = 1
    for d in shape:
        product *= d
    if size and product == size:
        # The common case, settled at once: every dimension is at least 1 and at most the
        # count of values given, so none is too large and neither is the array.
        return None
    if any(d > INT64_MAX for d in shape):
        return "Maximum allowed dimension exceeded"
    product = 1
    for d in shape:
        product *= d
        if product > INT64_MAX:
            break
    if product != size:
        dims = ",".join(map(str, shape)) + ("," if len(shape) == 1 else "")
        return f"cannot reshape array of size {size} into shape ({dims})"
    nbytes = item_size
    for d in shape:
        if d:
            nbytes *= d
            if nbytes > INT64_MAX:
                return (
                    "array is too big; `arr.size * arr.dtype.itemsize` is larger than the "
                    "maximum possible size."
                )
    return None


def _bytes_contents(data: list[Any], shape: list[int]) -> bytes:
    flattened = _flatten(data)
    if flattened is None or not all(isinstance(v, str) for v in flattened[1]):
        raise TypeError("BYTES data must be strings")
    encoded = [v.encode() for v in flattened[1]]
    reason = _reshape_error(len(encoded), shape, ITEM_SIZES["BYTES"])
    if reason is not None:
        raise ValueError(reason)
    pack = U32.pack
    return b"".join([pack(len(e)) + e for e in encoded])


def _numeric_contents(datatype: str, data: list[Any], shape: list[int]) -> bytes:
    packed = _pack_fast(datatype, data)
    if packed is None:
        values = _flatten_exactly(data)[1]
        packed = len(values), _pack_exactly(datatype, values)
    count, raw = packed
    reason = _reshape_error(count, shape, ITEM_SIZES[datatype])
    if reason is not None:
        raise ValueError(reason)
    return raw


# --- JSON v2 request -> ModelInferRequest --------------------------------------------------------


def add_tensor(tensors: Any, raws: Any, spec: Any, where: str) -> Any:
    """Append the JSON tensor ``spec`` to ``tensors`` (its values, packed, to ``raws``); the
    protobuf tensor. ``where`` names it in reasons, e.g. ``inputs[0]``."""
    if not isinstance(spec, dict):
        raise InvalidV2Request(f"{where} must be an object")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise InvalidV2Request(f"{where} needs name, shape and datatype")
    for d in shape:
        if type(d) is not int or d < 0:
            raise InvalidV2Request(
                f"{where} ({name}): shape must be a list of non-negative integers"
            )
    if datatype not in DATATYPES:
        raise InvalidV2Request(f"{where} ({name}): unsupported datatype {datatype}")
    data = spec.get("data")
    if not isinstance(data, list):
        raise InvalidV2Request(f"{where} ({name}): data must be a list")
    try:
        if datatype == "BYTES":
            raw = _bytes_contents(data, shape)
        else:
            raw = _numeric_contents(datatype, data, shape)
    except OverflowError as exc:
        raise InvalidV2Request(f"{where} ({name}): a value is out of range for {datatype}") from exc
    except (ValueError, TypeError) as exc:
        raise InvalidV2Request(f"{where} ({name}): {exc}") from exc
    tensor = tensors.add(name=name, datatype=datatype, shape=shape)
    raws.append(raw)
    return tensor


def _add_requested_outputs(request: Any, outputs: Any) -> None:
    if not isinstance(outputs, list):
        raise InvalidV2Request('"outputs" must be a list')
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidV2Request(f"outputs[{index}] must be an object with a name")
    for output in outputs:
        request.outputs.add(name=output["name"])


def _parameter_ok(key: str, value: Any) -> bool:
    accepted = SEQUENCE_PARAMETERS.get(key, (str, bool, int, float))
    if isinstance(value, bool):  # a JSON true is no integer
        return bool in accepted
    if isinstance(value, int):
        low = 0 if key == "priority" else INT64_MIN  # priority is a uint64
        return int in accepted and low <= value <= INT64_MAX
    return isinstance(value, accepted)


def _set_parameter(parameter: Any, value: Any) -> None:
    if isinstance(value, str):
        parameter.string_param = value
    elif isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    else:
        parameter.double_param = value


def _set_parameters(request: Any, parameters: Any) -> None:
    """The request's parameters, checked and placed as tritonclient's ``infer`` places them.

    A non-zero ``sequence_id`` is sent with ``sequence_start``/``sequence_end`` (default false),
    ``priority`` when not 0, ``timeout`` when given; every other parameter by its JSON type.
    """
    if not isinstance(parameters, dict):
        raise InvalidV2Request('"parameters" must be an object')
    for key, value in parameters.items():
        if key in RESERVED_PARAMETERS or key.startswith("triton_"):
            raise InvalidV2Request(f'parameter "{key}" is reserved and cannot be sent over gRPC')
        if not _parameter_ok(key, value):
            raise InvalidV2Request(f'parameter "{key}": unsupported value {value!r}')
    sent = request.parameters
    sequence_id = parameters.get("sequence_id", 0)
    if sequence_id not in (0, ""):
        _set_parameter(sent["sequence_id"], sequence_id)
        sent["sequence_start"].bool_param = parameters.get("sequence_start", False)
        sent["sequence_end"].bool_param = parameters.get("sequence_end", False)
    if parameters.get("priority", 0) != 0:
        sent["priority"].uint64_param = parameters["priority"]
    if "timeout" in parameters:
        sent["timeout"].int64_param = parameters["timeout"]
    for key, value in parameters.items():
        if key not in SEQUENCE_PARAMETERS:
            _set_parameter(sent[key], value)


def request_from_json(body: bytes, model: str = "", model_version: str = "") -> Any:
    """The ``ModelInferRequest`` for a JSON v2 request to ``model`` (raises InvalidV2Request)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidV2Request(f"request body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InvalidV2Request('a v2 request is an object with an "inputs" list')
    request = oip.ModelInferRequest(model_name=model, model_version=model_version)
    for index, spec in enumerate(document["inputs"]):
        add_tensor(request.inputs, request.raw_input_contents, spec, f"inputs[{index}]")
    if document.get("outputs") is not None:  # null, as some clients send, is absent
        _add_requested_outputs(request, document["outputs"])
    if isinstance(document.get("id"), str):
        request.id = document["id"]
    if document.get("parameters") is not None:
        _set_parameters(request, document["parameters"])
    return request


# --- ModelInferResponse -> JSON v2 ---------------------------------------------------------------


def _bytes_elements(raw: bytes) -> list[bytes]:
    """A BYTES tensor's elements, each behind its 4-byte little-endian length.

    Truncated contents raise ``struct.error``, as tritonclient's ``deserialize_bytes_tensor``.
    """
    elements = []
    offset, end = 0, len(raw)
    unpack = U32.unpack_from
    while offset < end:
        (length,) = unpack(raw, offset)
        offset += 4
        if offset + length > end:
            struct.unpack_from(f"<{length}s", raw, offset)  # raises, in struct's words
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def _raw_values(datatype: str, raw: bytes, errors: str = "replace") -> list[Any]:
    if datatype == "BYTES":
        return [v.decode("utf-8", errors) for v in _bytes_elements(raw)]
    if datatype == "BOOL":
        return list(map(bool, raw))
    if datatype == "FP16":
        if len(raw) % 2:
            raise ValueError("buffer size must be a multiple of element size")
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    code = ARRAY_CODES.get(datatype)
    if code is None:
        raise KeyError(datatype)
    values = array(code)
    if len(raw) % values.itemsize:
        raise ValueError("buffer size must be a multiple of element size")
    values.frombytes(raw)
    if SWAP:
        values.byteswap()
    return values.tolist()


def tensor_values(raws: Any, index: int, tensor: Any, errors: str = "replace") -> list[Any]:
    """A protobuf tensor's values: its raw contents (``raws[index]``) or its typed ones;
    ``errors`` says what a BYTES element that is not UTF-8 becomes (``strict``: an error)."""
    datatype = tensor.datatype
    if index < len(raws):
        return _raw_values(datatype, raws[index], errors)
    field = TYPED_CONTENTS.get(datatype)
    values = list(getattr(tensor.contents, field)) if field else []
    if datatype == "BYTES":
        return [v.decode("utf-8", errors) for v in values]
    if datatype == "FP32":
        return array("f", values).tolist()
    return values


def response_to_json(response: Any) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the JSON a v2 REST server returns."""
    document: dict[str, Any] = {"model_name": response.model_name}
    version = response.model_version
    if version:
        document["model_version"] = version
    found_id = response.id
    if found_id:
        document["id"] = found_id
    raws = response.raw_output_contents
    outputs = []
    for index, output in enumerate(response.outputs):
        datatype = output.datatype
        data = (
            _raw_values(datatype, raws[index])
            if index < len(raws)
            else tensor_values(raws, index, output)
        )
        # shape[:], a list, costs a third of list(shape) on protobuf's containers
        outputs.append(
            {"name": output.name, "datatype": datatype, "shape": output.shape[:], "data": data}
        )
    document["outputs"] = outputs
    return document
