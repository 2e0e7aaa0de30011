"""The ``v2-grpc`` step transport: Open Inference Protocol over gRPC (as Triton serves it),
behind the JSON v2 the graph speaks.

A ``v2-grpc`` step builds a ``ModelInferRequest`` straight from the decoded JSON
(``tensors.request_from_json``), calls the ``ModelInfer`` RPC on one reused ``grpc.aio`` channel
per target, and turns the ``ModelInferResponse`` straight back into JSON v2. No numpy and no
tritonclient are on this path: the messages are ``oip``'s, the call a plain ``grpc.aio`` unary
method. Datatypes and shapes round-trip exactly.

A call whose body already is a ``ModelInferRequest`` (a graph reached over gRPC ingress,
``engine.tensors``) is sent as those bytes, with the step's model written in
(``binary_tensors.with_model``), and its reply is the ``ModelInferResponse``'s bytes as they came:
no tensor is decoded on that path.

Two clients make the call (``--grpc-client``): the router's own HTTP/2 client (``h2_grpc``,
the default: cheaper per call) or ``grpc.aio`` (``grpcio``), one connection per target either
way, with the same statuses and deadlines.

A request that is not valid JSON v2 gets 400 with a reason, as a v2 REST server answers; gRPC
status codes map to the HTTP statuses v2 REST uses; an unreachable server is a connection error.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
import orjson
from google.protobuf.message import DecodeError

from infergraph.router.engine.errors import (
    UpstreamConnectFailed,
    UpstreamConnectionError,
    UpstreamTimeout,
)
from infergraph.router.engine.transport import Headers, Reply, StepCall
from infergraph.router.http import h2_grpc, oip
from infergraph.router.http.binary_tensors import with_model
from infergraph.router.http.deadlines import Deadlines
from infergraph.router.http.tensors import InvalidV2Request, request_from_json, response_to_json
from infergraph.router.http.upstream_tls import UpstreamTls
from infergraph.router.protocols import OIP_INFER_REQUEST, OIP_INFER_RESPONSE
from infergraph.router.settings import GrpcClient

JSON = "application/json"

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
# The channel tritonclient.grpc.aio opens: no message-size limit, its keepalive defaults.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.keepalive_time_ms", 2**31 - 1),
    ("grpc.keepalive_timeout_ms", 20000),
    ("grpc.keepalive_permit_without_calls", False),
    ("grpc.http2.max_pings_without_data", 2),
]


# --- errors and the transport -------------------------------------------------------------------


def _error(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"error": message}), JSON)


def error_reply(code: str, message: str, url: str, timeout: float | None) -> Reply:
    """The reply v2 REST gives for a ``ModelInfer`` that failed with gRPC status ``code`` (its
    name, e.g. ``NOT_FOUND``); raises for failures below HTTP.

    ``UNAVAILABLE`` is a connection error and ``DEADLINE_EXCEEDED`` a timeout; other codes map
    through ``HTTP_STATUS``, and any code not listed there is 500.
    """
    if code == "UNAVAILABLE":
        raise UpstreamConnectionError(f'ModelInfer "{url}": {message}')
    if code == "DEADLINE_EXCEEDED":
        raise UpstreamTimeout(
            f'ModelInfer "{url}": context deadline exceeded (timeout {timeout} s)'
        )
    return _error(HTTP_STATUS.get(code, 500), message or code)


# gRPC's custom metadata (PROTOCOL-HTTP2.md): keys of these characters, lower-case; text values
# of printable ASCII; "-bin" keys carry base64, padded or not (grpc-go decodes either, but not a
# value padded part way, such as "AB=" or "AAAA=", which it fails as malformed metadata).
_KEY = re.compile(r"[0-9a-z_.\-]+")
_TEXT_VALUE = re.compile(r"[\x20-\x7e]*")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?")


def grpc_metadata(headers: Headers) -> list[tuple[str, str]]:
    """The forwarded headers as a call's custom metadata, the same for both clients: names
    lower-cased, every value kept (a name may repeat). Left out: what the clients set
    themselves (``content-type``, ``grpc-timeout``), the names gRPC reserves (``grpc-``), a
    name outside gRPC's key characters, a text value outside printable ASCII and a ``-bin``
    value that is not base64. gRPC cannot carry those, and sending them failed the call
    (``grpc.aio`` raised before sending, and a server may reset the stream), making a client's
    header a 500; grpc-gateway and Envoy's transcoder forward only well-formed metadata too."""
    metadata = []
    for name, value in headers:
        key = name.lower()
        if key == "content-type" or key.startswith("grpc-") or not _KEY.fullmatch(key):
            continue
        if key.endswith("-bin"):
            if not _BASE64.fullmatch(value):
                continue
        elif not _TEXT_VALUE.fullmatch(value):
            continue
        metadata.append((key, value))
    return metadata


def _binary_values(metadata: list[tuple[str, str]]) -> tuple[tuple[str, str | bytes], ...]:
    """``grpc.aio``'s form: a ``-bin`` key's value as the bytes its base64 stands for."""
    return tuple(
        (key, base64.b64decode(value + "=" * (-len(value) % 4)) if key.endswith("-bin") else value)
        for key, value in metadata
    )


def _request(call: StepCall, binary: bool) -> Any:
    """What the call sends: a ``ModelInferRequest``'s bytes as they came, asking for the step's
    model, when ``binary``; else the message built from the JSON v2 body (raises
    ``InvalidV2Request``)."""
    if binary:
        return with_model(call.body, call.model or "", call.model_version or "")
    return request_from_json(call.body, call.model or "", call.model_version or "")


class H2Upstream:
    """One target's connection on the router's own HTTP/2 client, and ``ModelInfer``'s
    request head for it."""

    __slots__ = ("channel", "head")

    def __init__(self, scheme: str, host: str, port: int, tls: UpstreamTls) -> None:
        context = h2_grpc.tls_context(tls.context()) if scheme == "grpcs" else None
        self.channel = h2_grpc.H2Channel(host, port, context)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        scheme = "https" if scheme == "grpcs" else "http"
        self.head = h2_grpc.request_head(scheme, authority, oip.method_path("ModelInfer"))

    async def close(self) -> None:
        await self.channel.close()


class Upstream:
    """One target's ``grpc.aio`` channel and its ``ModelInfer`` method, on messages and on bytes."""

    __slots__ = ("channel", "model_infer", "model_infer_bytes")

    def __init__(self, address: str, credentials: Any) -> None:
        if credentials is not None:
            self.channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.model_infer: Callable[..., Any] = self.channel.unary_unary(
            oip.method_path("ModelInfer"),
            request_serializer=oip.ModelInferRequest.SerializeToString,
            response_deserializer=oip.ModelInferResponse.FromString,
        )
        # Without (de)serializers grpc sends and returns the bytes as they are.
        self.model_infer_bytes: Callable[..., Any] = self.channel.unary_unary(
            oip.method_path("ModelInfer")
        )

    async def close(self) -> None:
        await self.channel.close()


class GrpcV2Transport:
    """One connection per target, reused; each step is one ``ModelInfer`` call, made by the
    router's own HTTP/2 client (``client="fast"``) or by ``grpc.aio`` (``"grpcio"``).
    ``grpcs://`` targets use ``tls``'s certificates (the system's trust store by default)."""

    def __init__(self, tls: UpstreamTls | None = None, client: GrpcClient = "fast") -> None:
        self._tls = tls or UpstreamTls()
        self._fast = client == "fast"
        self._clients: dict[tuple[str, str, int], Upstream] = {}
        self._h2: dict[tuple[str, str, int], H2Upstream] = {}
        self._deadlines = Deadlines(resolution=0.01)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        h2, self._h2 = self._h2, {}
        await self._deadlines.close()
        upstreams: list[Upstream | H2Upstream] = [*clients.values(), *h2.values()]
        await asyncio.gather(*(upstream.close() for upstream in upstreams))

    def _h2_client(self, call: StepCall) -> H2Upstream:
        target = call.target
        key = (target.scheme, target.host, target.port)
        client = self._h2.get(key)
        if client is None:
            client = self._h2[key] = H2Upstream(target.scheme, target.host, target.port, self._tls)
        return client

    def _client(self, call: StepCall) -> Upstream:
        target = call.target
        key = (target.scheme, target.host, target.port)
        client = self._clients.get(key)
        if client is None:
            secure = target.scheme == "grpcs"
            credentials = self._tls.grpc_credentials() if secure else None
            client = Upstream(f"{target.host}:{target.port}", credentials)
            self._clients[key] = client
        return client

    async def send(self, call: StepCall) -> Reply:
        binary = call.media == OIP_INFER_REQUEST
        try:
            request = _request(call, binary)
        except InvalidV2Request as exc:
            return _error(exc.status, exc.cause)
        if self._fast:
            return await self._send_h2(call, request, binary)
        return await self._send_grpcio(call, request, binary)

    async def _send_h2(self, call: StepCall, request: Any, binary: bool) -> Reply:
        message = request if binary else request.SerializeToString()
        client = self._h2_client(call)
        metadata = grpc_metadata(call.all_headers())
        url = call.target.url
        try:
            if call.timeout is None:
                data = await h2_grpc.unary(client.channel, client.head, metadata, message, None)
            else:
                data = await self._timed(call, client, metadata, message)
        except h2_grpc.GrpcCallError as exc:
            if not exc.sent:
                raise UpstreamConnectFailed(f'ModelInfer "{url}": {exc.message}') from exc
            return error_reply(exc.code, exc.message, url, call.timeout)
        except OSError as exc:  # connecting: nothing was sent
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise UpstreamConnectFailed(
                f'ModelInfer "{url}": dial tcp {call.target.host}:{call.target.port}: {reason}'
            ) from exc
        if binary:
            return Reply(200, data, OIP_INFER_RESPONSE)
        try:
            response = oip.ModelInferResponse.FromString(data)
        except DecodeError as exc:  # as grpc.aio's deserializer failing: INTERNAL
            reason = f"the reply is not a ModelInferResponse ({exc})"
            return error_reply("INTERNAL", reason, url, call.timeout)
        return _json_reply(response, call)

    async def _timed(
        self, call: StepCall, client: H2Upstream, metadata: list[tuple[str, str]], message: bytes
    ) -> bytes:
        """The call, cancelled (its stream reset) when ``call.timeout`` runs out."""
        deadlines = self._deadlines
        task = deadlines.watch(call.timeout or 0.0)
        try:
            return await h2_grpc.unary(client.channel, client.head, metadata, message, call.timeout)
        except asyncio.CancelledError as exc:
            if deadlines.expired(task):
                raise UpstreamTimeout(
                    f'ModelInfer "{call.target.url}": context deadline exceeded '
                    f"(timeout {call.timeout} s)"
                ) from exc
            raise
        finally:
            deadlines.remove(task)

    async def _send_grpcio(self, call: StepCall, request: Any, binary: bool) -> Reply:
        client = self._client(call)
        model_infer = client.model_infer_bytes if binary else client.model_infer
        metadata = _binary_values(grpc_metadata(call.all_headers()))
        try:
            response = await model_infer(
                request=request,
                metadata=metadata,
                timeout=call.timeout,
                compression=grpc.Compression.NoCompression,
            )
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() is not None else "UNKNOWN"
            return error_reply(code, exc.details() or "", call.target.url, call.timeout)
        if binary:
            return Reply(200, response, OIP_INFER_RESPONSE)
        return _json_reply(response, call)


def _json_reply(response: Any, call: StepCall) -> Reply:
    """The v2 REST reply for a ``ModelInferResponse``; one whose tensors cannot be read (contents
    short of their shape, an unknown datatype) is the model server's fault: INTERNAL, a 500
    naming why, as a reply that is not a message at all is."""
    try:
        return Reply(200, orjson.dumps(response_to_json(response)), JSON)
    except (ValueError, KeyError, struct.error) as exc:
        reason = f"the reply's outputs cannot be read ({type(exc).__name__}: {exc})"
        return error_reply("INTERNAL", reason, call.target.url, call.timeout)
