"""gRPC ingress: the Open Inference Protocol's ``inference.GRPCInferenceService`` (KServe's and
Triton's ``grpc_predict_v2.proto``) and ``grpc.health.v1.Health``, served on ``--grpc-port``.

``model_name`` picks the graph (its name with ``--graph-dir``; with a single graph any name runs
it, as any path does over REST). A ``ModelInfer`` becomes the JSON v2 request the graph runs on
(``ingress_tensors``) and goes through the same ``RouterService.handle`` as a REST request to
``/graphs/<model_name>``: the same telemetry, ``PROPAGATE_HEADERS`` (applied to the call's
metadata, its headers), ``traceparent``, deadlines and errors. The answer comes back as a
``ModelInferResponse``; an error as the gRPC status KServe's server gives for the HTTP status
(``STATUS_CODES``), with the same cause. The client's ``grpc-timeout`` bounds the graph; a
client that cancels cancels the graph's calls.

A graph that ``carries_tensors`` (every step it can reach speaks ``v2-grpc`` and only passes
tensors on: ``engine.tensors``) runs on the request's own bytes, and its answer is the last
step's ``ModelInferResponse`` as the model server sent it: no tensor is written as JSON, and
BYTES elements need not be UTF-8. Any other graph runs on JSON v2.

``ModelStreamInfer`` answers each request of the stream in turn: a graph whose answering step
streams (an OpenAI step asked for ``"stream": true`` by a request parameter ``stream``) sends one
``ModelStreamInferResponse`` per server-sent event, its data as the BYTES output ``text_output``;
any other graph one response per request.

With ``--auth``, ``ModelInfer`` is checked by the handler as any request; ``ModelReady`` and
``ModelMetadata`` here, the same way; the server-wide probes and health stay open.

``ModelMetadata`` describes the graph as the model it fronts: inputs from the first step's model
and outputs from the answering step's (asked over v2 REST or gRPC), when they are v2 models.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]  # grpcio ships no type information
import orjson
from google.protobuf.message import DecodeError

from infergraph.router.engine.errors import GraphRequestError
from infergraph.router.http import binary_tensors, oip
from infergraph.router.http.ingress_tensors import request_to_json, response_from_json
from infergraph.router.http.tensors import U32, InvalidV2Request
from infergraph.router.protocols import OIP_INFER_REQUEST, OIP_INFER_RESPONSE
from infergraph.router.service.handler import RouterService
from infergraph.router.service.messages import Request, Response
from infergraph.router.service.metadata import ModelMetadata
from infergraph.router.service.registry import GRAPHS_PREFIX

log = logging.getLogger("infergraph.router")
Code = grpc.StatusCode
# The gRPC status for the HTTP status REST would answer (KServe's server and grpc-gateway's
# mapping); any other 4xx is INVALID_ARGUMENT, any other 5xx INTERNAL.
STATUS_CODES = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    408: Code.DEADLINE_EXCEEDED,
    409: Code.ABORTED,
    413: Code.RESOURCE_EXHAUSTED,
    429: Code.RESOURCE_EXHAUSTED,
    499: Code.CANCELLED,
    500: Code.INTERNAL,
    501: Code.UNIMPLEMENTED,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.DEADLINE_EXCEEDED,
}
STREAM_OUTPUT = "text_output"
STREAMED_RESPONSE = 2  # ModelStreamInferResponse.infer_response


def code_for(status: int) -> Any:
    found = STATUS_CODES.get(status)
    if found is not None:
        return found
    return Code.INVALID_ARGUMENT if 400 <= status < 500 else Code.INTERNAL


def _cause(response: Response) -> str:
    try:
        document = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return response.body.decode("utf-8", "replace") or f"status {response.status}"
    if isinstance(document, dict):
        for key in ("cause", "error"):
            if isinstance(document.get(key), str):
                return str(document[key])
    return response.body.decode("utf-8", "replace")


class _Abort(Exception):
    """An RPC that ends in a gRPC status."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class GrpcIngress:
    """The gRPC server in front of one ``RouterService``."""

    def __init__(self, service: RouterService, metadata: ModelMetadata) -> None:
        self.service = service
        self.metadata = metadata
        self.server: Any = None

    # -- the server ------------------------------------------------------------------------------

    async def start(
        self, host: str, port: int, *, reuse_port: bool = False, credentials: Any = None
    ) -> int:
        """Listen on ``host:port`` (0: any free port), over TLS with ``credentials``; the
        port bound."""
        limit = self.service.settings.grpc_max_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # gRPC's default lets a second process share the port silently.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
            ]
        )
        self.server.add_generic_rpc_handlers((self._inference(), self._health()))
        address = f"{host}:{port}"
        if credentials is not None:
            bound: int = self.server.add_secure_port(address, credentials)
        else:
            bound = self.server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot listen for gRPC on {host}:{port}")
        await self.server.start()
        return bound

    async def shutdown(self, grace: float) -> None:
        """Stop taking calls; wait up to ``grace`` seconds for those in flight."""
        if self.server is not None:
            await self.server.stop(grace)

    def _inference(self) -> Any:
        def unary(method: str, call: Callable[[Any, Any], Awaitable[Any]]) -> Any:
            request, response, _ = oip.METHODS[method]
            return grpc.unary_unary_rpc_method_handler(
                self._guarded(call),
                request_deserializer=_lenient(oip.message(request)),
                response_serializer=_serializer(oip.message(response)),
            )

        handlers = {
            "ServerLive": unary("ServerLive", self.server_live),
            "ServerReady": unary("ServerReady", self.server_ready),
            "ModelReady": unary("ModelReady", self.model_ready),
            "ServerMetadata": unary("ServerMetadata", self.server_metadata),
            "ModelMetadata": unary("ModelMetadata", self.model_metadata),
            "ModelInfer": unary("ModelInfer", self.model_infer),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self.model_stream_infer,
                request_deserializer=_lenient(oip.ModelInferRequest),
                response_serializer=_serializer(oip.message("ModelStreamInferResponse")),
            ),
        }
        return grpc.method_handlers_generic_handler(oip.SERVICE, handlers)

    def _health(self) -> Any:
        serialize = oip.HealthCheckResponse.SerializeToString
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(
                self._guarded(self.health_check),
                request_deserializer=_lenient(oip.HealthCheckRequest),
                response_serializer=serialize,
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                self.health_watch,
                request_deserializer=_lenient(oip.HealthCheckRequest),
                response_serializer=serialize,
            ),
        }
        return grpc.method_handlers_generic_handler(oip.HEALTH_SERVICE, handlers)

    def _guarded(self, call: Callable[[Any, Any], Awaitable[Any]]) -> Any:
        async def handler(request: Any, context: Any) -> Any:
            if isinstance(request, _Malformed):
                await context.abort(Code.INVALID_ARGUMENT, request.reason)
            try:
                return await call(request, context)
            except _Abort as abort:
                await context.abort(abort.code, abort.details)
            except Exception:
                log.exception("unexpected error in a gRPC call")
                await context.abort(Code.INTERNAL, "internal error in the router")

        return handler

    # -- probes and metadata ---------------------------------------------------------------------

    async def server_live(self, request: Any, context: Any) -> Any:
        return oip.message("ServerLiveResponse")(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        ready = not self.service.draining and bool(self.service.registry.plans)
        return oip.message("ServerReadyResponse")(ready=ready)

    async def model_ready(self, request: Any, context: Any) -> Any:
        await self._authorized(context, request.name)
        ready = not self.service.draining and self._plan(request.name, strict=False) is not None
        return oip.message("ModelReadyResponse")(ready=ready)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        version = importlib.metadata.version("infergraph")
        return oip.message("ServerMetadataResponse")(name="infergraph", version=version)

    async def model_metadata(self, request: Any, context: Any) -> Any:
        await self._authorized(context, request.name)
        plan = self._plan(request.name)
        described = await self.metadata.describe(plan)
        response = oip.message("ModelMetadataResponse")(
            name=request.name or plan.name, platform="infergraph"
        )
        for kind in ("inputs", "outputs"):
            for tensor in described.get(kind, []):
                getattr(response, kind).add(**tensor)
        return response

    async def health_check(self, request: Any, context: Any) -> Any:
        return oip.HealthCheckResponse(status=self._health_status(request.service))

    async def health_watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        status = self._health_status(request.service)
        yield oip.HealthCheckResponse(status=status)
        while status == oip.SERVING:
            await asyncio.sleep(0.5)
            if self._health_status(request.service) != status:
                status = self._health_status(request.service)
                yield oip.HealthCheckResponse(status=status)

    def _health_status(self, service: str) -> int:
        if service not in ("", oip.SERVICE):
            return oip.SERVICE_UNKNOWN
        return oip.NOT_SERVING if self.service.draining else oip.SERVING

    async def _authorized(self, context: Any, model: str) -> None:
        """With ``--auth``, what a graph is (ready, its tensors) is the callers' business only:
        checked as for ``ModelInfer``, from the call's ``authorization`` metadata."""
        auth = self.service.auth
        if auth is None:
            return
        header = dict(context.invocation_metadata() or ()).get("authorization")
        try:
            caller = await auth.authenticate(header)
            plan = self._plan(model, strict=False)
            if plan is not None:
                await auth.authorize(caller, plan.name)
        except GraphRequestError as error:
            raise _Abort(code_for(error.status), error.cause) from error

    def _plan(self, model: str, *, strict: bool = True) -> Any:
        try:
            return self.service.registry.lookup(GRAPHS_PREFIX + model)
        except GraphRequestError as error:
            if not strict:
                return None
            raise _Abort(code_for(error.status), error.cause) from error

    # -- inference ---------------------------------------------------------------------------------

    async def model_infer(self, inbound: Any, context: Any) -> Any:
        response = await self._run(inbound, context)
        if response.stream is not None:
            response = await self._gathered(response)
        return self._answer(inbound.message, response)

    async def _gathered(self, response: Response) -> Response:
        """A streamed answer as one reply, for a unary call: no larger than a message may be
        (past that the stream is closed, which ends the upstream call)."""
        assert response.stream is not None
        limit = self.service.settings.grpc_max_message_bytes
        chunks: list[bytes] = []
        size = 0
        async with contextlib.aclosing(response.stream) as stream:
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise _Abort(
                        Code.RESOURCE_EXHAUSTED,
                        f"the streamed answer is over {limit} bytes, the most a message carries "
                        "(--grpc-max-message-bytes); ModelStreamInfer relays it in parts",
                    )
                chunks.append(chunk)
        return Response(response.status, b"".join(chunks), response.content_type)

    async def model_stream_infer(self, requests: AsyncIterator[Any], context: Any) -> Any:
        stream_response = oip.message("ModelStreamInferResponse")
        async for inbound in requests:
            try:
                if isinstance(inbound, _Malformed):
                    raise _Abort(Code.INVALID_ARGUMENT, inbound.reason)
                request = inbound.message
                response = await self._run(inbound, context)
                if response.stream is None:
                    answer = self._answer(request, response)
                    if isinstance(answer, bytes):  # as it came: embedded as it is
                        yield binary_tensors.length_delimited(STREAMED_RESPONSE, answer)
                    else:
                        yield stream_response(infer_response=answer)
                    continue
                async for chunk in response.stream:
                    yield stream_response(infer_response=_text_output(request, chunk))
            except _Abort as abort:
                # As Triton: the stream goes on; this request's answer is its error.
                yield stream_response(error_message=f"{abort.code.name}: {abort.details}")

    async def _run(self, inbound: Inbound, context: Any) -> Response:
        request = inbound.message
        plan = self._plan(request.model_name)  # NOT_FOUND before any conversion
        stream = request.parameters.get("stream")
        if stream is not None and stream.WhichOneof("parameter_choice") != "bool_param":
            stream = None
        media = None
        if plan.carries_tensors and stream is None:
            body, media = inbound.raw, OIP_INFER_REQUEST
        else:
            try:
                body = request_to_json(request)
            except InvalidV2Request as error:
                raise _Abort(Code.INVALID_ARGUMENT, error.cause) from error
            if stream is not None:
                # What an OpenAI step reads is the body's own "stream".
                body = body[:-1] + (b',"stream":true}' if stream.bool_param else b"}")

        headers = [("Content-Type", "application/json")]
        for key, value in context.invocation_metadata() or ():
            if not key.startswith(":") and not key.endswith("-bin") and key != "content-type":
                headers.append((key, value))
        http = Request("POST", GRAPHS_PREFIX + request.model_name, tuple(headers), body, media)
        remaining = context.time_remaining()
        try:
            async with asyncio.timeout(remaining):
                response = await self.service.handle(http)
        except TimeoutError:
            raise _Abort(Code.DEADLINE_EXCEEDED, "the call's deadline passed") from None
        if response.abort:
            raise _Abort(code_for(response.status), f"status {response.status}")
        if response.status != 200:
            raise _Abort(code_for(response.status), _cause(response))
        return response

    def _answer(self, request: Any, response: Response) -> Any:
        """The ``ModelInferResponse`` for the graph's answer: bytes as the last step sent them
        when the graph ran on binary tensors, else converted from JSON."""
        if response.content_type == OIP_INFER_RESPONSE:
            return response.body
        try:
            return response_from_json(response.body, request.model_name, request.model_version)
        except InvalidV2Request as error:
            raise _Abort(Code.INTERNAL, f"the graph's answer: {error.cause}") from error


def _text_output(request: Any, chunk: bytes) -> Any:
    """One streamed chunk as a response with the BYTES output ``text_output``."""
    response = oip.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.outputs.add(name=STREAM_OUTPUT, datatype="BYTES", shape=[1])
    response.raw_output_contents.append(U32.pack(len(chunk)) + chunk)
    return response


class Inbound:
    """A ``ModelInferRequest`` as parsed, and the bytes it came as (for graphs that run on
    them)."""

    __slots__ = ("message", "raw")

    def __init__(self, message: Any, raw: bytes) -> None:
        self.message, self.raw = message, raw


class _Malformed:
    """What a message that does not parse becomes, so the handler answers INVALID_ARGUMENT
    with the reason (gRPC's own answer would be an INTERNAL without one)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _lenient(message: Any) -> Callable[[bytes], Any]:
    """Parse ``message``; a ``ModelInferRequest`` comes as an ``Inbound``."""
    name = message.DESCRIPTOR.name
    keep = message is oip.ModelInferRequest

    def parse(raw: bytes) -> Any:
        try:
            parsed = message.FromString(raw)
        except DecodeError as error:
            return _Malformed(f"not a valid {name}: {error}")
        return Inbound(parsed, raw) if keep else parsed

    return parse


def _serializer(message: Any) -> Callable[[Any], bytes]:
    """``message``'s encoding; bytes (an answer that already is one) go as they are."""
    serialize = message.SerializeToString

    def encode(value: Any) -> bytes:
        if isinstance(value, bytes):
            return value
        encoded: bytes = serialize(value)
        return encoded

    return encode
