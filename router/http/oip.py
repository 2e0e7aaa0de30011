"""The Open Inference Protocol's gRPC messages (package ``inference``, as KServe's
``grpc_predict_v2.proto`` and Triton's ``grpc_service.proto`` define them), built at import from
the table below into a descriptor pool of our own, and its ``GRPCInferenceService`` methods.

The router needs only the protobuf runtime for these: no generated module, no tritonclient and
so no numpy (which tritonclient imports with its package). Field names and numbers are the
protocol's, so the messages are the same on the wire; a test compares every field with the
generated ones tritonclient ships. Classes live in a pool of their own, so they do not clash
with tritonclient's when both are loaded (the tests load both).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_T = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _T.TYPE_BOOL,
    "string": _T.TYPE_STRING,
    "bytes": _T.TYPE_BYTES,
    "int32": _T.TYPE_INT32,
    "int64": _T.TYPE_INT64,
    "uint32": _T.TYPE_UINT32,
    "uint64": _T.TYPE_UINT64,
    "float": _T.TYPE_FLOAT,
    "double": _T.TYPE_DOUBLE,
}

# message: [(number, name, type, repeated?)]; a type that is no scalar names a message (".X"
# at the package's top level, "X" nested in this one); "params" is map<string, InferParameter>.
_TENSOR = [
    (1, "name", "string", False),
    (2, "datatype", "string", False),
    (3, "shape", "int64", True),
]
MESSAGES: dict[str, list[tuple[int, str, str, bool]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [(1, "live", "bool", False)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [(1, "ready", "bool", False)],
    "ModelReadyRequest": [(1, "name", "string", False), (2, "version", "string", False)],
    "ModelReadyResponse": [(1, "ready", "bool", False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        (1, "name", "string", False),
        (2, "version", "string", False),
        (3, "extensions", "string", True),
    ],
    "ModelMetadataRequest": [(1, "name", "string", False), (2, "version", "string", False)],
    "ModelMetadataResponse": [
        (1, "name", "string", False),
        (2, "versions", "string", True),
        (3, "platform", "string", False),
        (4, "inputs", "TensorMetadata", True),
        (5, "outputs", "TensorMetadata", True),
    ],
    "ModelMetadataResponse.TensorMetadata": _TENSOR,
    "ModelInferRequest": [
        (1, "model_name", "string", False),
        (2, "model_version", "string", False),
        (3, "id", "string", False),
        (4, "parameters", "params", True),
        (5, "inputs", "InferInputTensor", True),
        (6, "outputs", "InferRequestedOutputTensor", True),
        (7, "raw_input_contents", "bytes", True),
    ],
    "ModelInferRequest.InferInputTensor": [
        *_TENSOR,
        (4, "parameters", "params", True),
        (5, "contents", ".InferTensorContents", False),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        (1, "name", "string", False),
        (2, "parameters", "params", True),
    ],
    "ModelInferResponse": [
        (1, "model_name", "string", False),
        (2, "model_version", "string", False),
        (3, "id", "string", False),
        (4, "parameters", "params", True),
        (5, "outputs", "InferOutputTensor", True),
        (6, "raw_output_contents", "bytes", True),
    ],
    "ModelInferResponse.InferOutputTensor": [
        *_TENSOR,
        (4, "parameters", "params", True),
        (5, "contents", ".InferTensorContents", False),
    ],
    "ModelStreamInferResponse": [
        (1, "error_message", "string", False),
        (2, "infer_response", ".ModelInferResponse", False),
    ],
    "InferParameter": [  # one of these (the oneof parameter_choice)
        (1, "bool_param", "bool", False),
        (2, "int64_param", "int64", False),
        (3, "string_param", "string", False),
        (4, "double_param", "double", False),
        (5, "uint64_param", "uint64", False),
    ],
    "InferTensorContents": [
        (1, "bool_contents", "bool", True),
        (2, "int_contents", "int32", True),
        (3, "int64_contents", "int64", True),
        (4, "uint_contents", "uint32", True),
        (5, "uint64_contents", "uint64", True),
        (6, "fp32_contents", "float", True),
        (7, "fp64_contents", "double", True),
        (8, "bytes_contents", "bytes", True),
    ],
}
# method: (request, response, server streams)
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse", False),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse", False),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse", False),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse", False),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse", False),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse", False),
    "ModelStreamInfer": ("ModelInferRequest", "ModelStreamInferResponse", True),
}


def _field(
    owner: str, number: int, name: str, kind: str, repeated: bool
) -> descriptor_pb2.FieldDescriptorProto:
    field = descriptor_pb2.FieldDescriptorProto(name=name, number=number, json_name=_camel(name))
    field.label = _T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _T.TYPE_MESSAGE
        if kind == "params":
            field.type_name = f".{PACKAGE}.{owner}.ParametersEntry"
        elif kind.startswith("."):
            field.type_name = f".{PACKAGE}{kind}"
        else:
            field.type_name = f".{PACKAGE}.{owner}.{kind}"
    if owner == "InferParameter":
        field.oneof_index = 0
    return field


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="infergraph/oip.proto", package=PACKAGE, syntax="proto3"
    )
    built: dict[str, descriptor_pb2.DescriptorProto] = {}
    for path, fields in MESSAGES.items():
        parent, _, name = path.rpartition(".")
        message = (built[parent].nested_type if parent else proto.message_type).add(name=name)
        built[path] = message
        for number, field_name, kind, repeated in fields:
            message.field.append(_field(path, number, field_name, kind, repeated))
            if kind == "params" and not any(
                n.name == "ParametersEntry" for n in message.nested_type
            ):
                entry = message.nested_type.add(name="ParametersEntry")
                entry.options.map_entry = True
                entry.field.append(_field(path, 1, "key", "string", False))
                entry.field.append(_field("", 2, "value", ".InferParameter", False))
        if path == "InferParameter":
            message.oneof_decl.add(name="parameter_choice")
    service = proto.service.add(name=SERVICE.rpartition(".")[2])
    for method, (request, response, streams) in METHODS.items():
        service.method.add(
            name=method,
            input_type=f".{PACKAGE}.{request}",
            output_type=f".{PACKAGE}.{response}",
            server_streaming=streams,
            client_streaming=streams,
        )
    return proto


def _health_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc.health.v1``: ``Health.Check`` and ``Health.Watch``, as Kubernetes' gRPC probes
    call them. The status is an enum on the wire (a varint), kept here as its number."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="infergraph/health.proto", package=HEALTH_PACKAGE, syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=_T.TYPE_STRING, label=_T.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    response.field.add(name="status", number=1, type=_T.TYPE_INT32, label=_T.LABEL_OPTIONAL)
    return proto


HEALTH_PACKAGE = "grpc.health.v1"
HEALTH_SERVICE = f"{HEALTH_PACKAGE}.Health"
SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3  # HealthCheckResponse.ServingStatus

POOL = descriptor_pool.DescriptorPool()
FILE = POOL.Add(_file())
HEALTH_FILE = POOL.Add(_health_file())


def message(name: str, package: str = PACKAGE) -> Any:
    """The message class ``inference.<name>`` (nested ones as ``Outer.Inner``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{package}.{name}"))


ModelInferRequest: Any = message("ModelInferRequest")
ModelInferResponse: Any = message("ModelInferResponse")
InferParameter: Any = message("InferParameter")
HealthCheckRequest: Any = message("HealthCheckRequest", HEALTH_PACKAGE)
HealthCheckResponse: Any = message("HealthCheckResponse", HEALTH_PACKAGE)


def method_path(method: str) -> str:
    """A method's gRPC path, e.g. ``/inference.GRPCInferenceService/ModelInfer``."""
    return f"/{SERVICE}/{method}"
