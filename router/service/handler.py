"""The router's request handler: what each request gets, whichever HTTP server carried it.

``/readyz`` and ``/healthz`` answer probes, ``/metrics`` the scrape; every other request runs a
graph. Errors are rendered here, in one place, from the status their exception carries; the
request's telemetry is the recorder's (``observability.recorder``); the servers
(``server``, ``aiohttp_server``) and the process around them are elsewhere (``lifecycle``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator

from infergraph.router.engine import jsontext
from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import DeadlineExceeded, GraphRequestError
from infergraph.router.engine.headers import HeaderPolicy
from infergraph.router.engine.plan import GraphPlan
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Headers, Reply, Transport
from infergraph.router.http import oip
from infergraph.router.http.binary_tensors import OipTensorCodec
from infergraph.router.http.deadlines import Deadlines
from infergraph.router.http.ingress_tensors import request_to_json
from infergraph.router.http.streams import ChunkStream
from infergraph.router.observability.recorder import RequestRecorder
from infergraph.router.observability.telemetry import Telemetry
from infergraph.router.protocols import OIP_MEDIA
from infergraph.router.service.auth import KubernetesAuth
from infergraph.router.service.messages import Request, Response, error_body
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.settings import RouterSettings

log = logging.getLogger("infergraph.router")

JSON = "application/json"
READY = Response(200)
SHUTTING_DOWN = Response(503, b"shutting down", "text/plain; charset=utf-8")
HEALTHY = Response(200, b"ok", "text/plain; charset=utf-8")
STREAM_HEADERS = (("Cache-Control", "no-cache"),)
# Which steps their fallback answered: "node/step=target", comma-separated.
FALLBACK_HEADER = "X-Infergraph-Fallback"
TENSOR_CODEC = OipTensorCodec()


def error_response(error: GraphRequestError, headers: Headers = ()) -> Response:
    return Response(error.status, error_body(error.cause), JSON, headers=error.headers + headers)


def _fallback_headers(ctx: ExecutionContext) -> Headers:
    if not ctx.fallbacks:
        return ()
    return ((FALLBACK_HEADER, ", ".join(ctx.fallbacks)),)


def _content_type(reply: Reply) -> str:
    declared = reply.content_type
    if declared is not None and (declared.startswith(JSON) or declared in OIP_MEDIA):
        return declared
    if reply.body and jsontext.valid(reply.body):
        return JSON
    return declared or "application/octet-stream"


def _as_json(request: Request) -> Request:
    """A binary ``ModelInferRequest`` (already parsed once by gRPC ingress) as JSON v2."""
    body = request_to_json(oip.ModelInferRequest.FromString(request.body))
    return Request(request.method, request.path, request.headers, body)


class _Relay(ChunkStream):
    """A streamed step reply (server-sent events), chunk by chunk as it arrives; the request's
    recording ends with it. Closing it, even before the first chunk (the client left before
    the reply could start), closes the upstream call, so the model server stops generating,
    and records the request as the client's leaving."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], recorder: RequestRecorder) -> None:
        self._chunks = chunks
        self._recorder = recorder
        self._done = False

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            await self._finish(None)
            raise
        except GraphRequestError as error:
            log.error("stream from the model server broke off: %s", error.cause)
            self._recorder.failed(error)
            await self._finish(error)
            raise
        except BaseException as error:  # cancelled: the client went away
            await self._finish(error)
            raise

    async def aclose(self) -> None:
        if not self._done:
            await self._finish(GeneratorExit())

    async def _finish(self, error: BaseException | None) -> None:
        self._done = True
        try:
            await self._chunks.aclose()
        finally:
            self._recorder.close(type(error) if error is not None else None, error, None)


class RouterService:
    """Serves the registry's graphs through one transport."""

    def __init__(
        self,
        settings: RouterSettings,
        registry: GraphRegistry,
        transport: Transport,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
        *,
        auth: KubernetesAuth | None = None,
    ) -> None:
        self.auth = auth
        self.settings = settings
        self.registry = registry
        self.telemetry = telemetry or Telemetry()
        self.transport = self.telemetry.wrap(transport)
        self.untraced = self.telemetry.untraced or self.transport
        self.headers = HeaderPolicy.from_setting(settings.propagate_headers)
        self.rng = rng or random.Random()
        self.draining = False
        self.deadlines = Deadlines()
        for rejected in self.headers.rejected:
            log.error("PROPAGATE_HEADERS: skipping a pattern that does not compile: %s", rejected)

    async def handle(self, request: Request) -> Response:
        path = request.path
        auth = self.auth
        caller = None
        if auth is not None and auth.settings.protect_probes:
            try:
                caller = await auth.authenticate(request.header("authorization"))
            except GraphRequestError as error:
                return error_response(error)
        if path == "/readyz":
            return SHUTTING_DOWN if self.draining else READY
        if path == "/healthz":
            return HEALTHY
        if path == "/metrics":
            page = self.telemetry.metrics_page()
            if page is not None:
                return Response(200, page[0], page[1])
        try:
            if auth is not None and caller is None:  # 401 before a 404 names what is served
                caller = await auth.authenticate(request.header("authorization"))
            plan = self.registry.lookup(path)
            if auth is not None and caller is not None:
                await auth.authorize(caller, plan.name)
            if request.media is not None and not plan.carries_tensors:
                # Reloaded since gRPC ingress chose the binary path: run it on JSON v2.
                request = _as_json(request)
        except GraphRequestError as error:
            return error_response(error)
        recorder = self.telemetry.recorder(plan.name, request.headers, path)
        traced = recorder.traced
        ctx = ExecutionContext(
            transport=self.transport if traced else self.untraced,
            headers=recorder.outgoing(self.headers.forward(request.headers)),
            service_timeout=plan.timeouts.service_client,
            rng=self.rng,
            graph=plan.name,
            observer=self.telemetry.observer(plan.name, traced),
            calls=recorder.upstream,
            trace_headers=recorder.trace_headers,
            event_loop=self.deadlines.loop(),
        )
        if request.media is not None:
            ctx.tensors = TENSOR_CODEC
        with recorder:
            response = await self._respond(request, plan, ctx, recorder)
            recorder.answered(response.status)
            if response.stream is not None:
                # The recording goes on while the stream is relayed: _relay ends it.
                recorder.keep_open()
                stream = _Relay(response.stream, recorder)
                return Response(
                    response.status,
                    content_type=response.content_type,
                    headers=response.headers,
                    stream=stream,
                )
        return response

    async def _respond(
        self,
        request: Request,
        plan: GraphPlan,
        ctx: ExecutionContext,
        recorder: RequestRecorder,
    ) -> Response:
        try:
            reply = await self._run(plan, request, ctx)
        except GraphRequestError as error:
            recorder.failed(error)
            if error.close_connection:
                # As Go's WriteTimeout: the client sees its connection closed.
                return Response(error.status, abort=True)
            return error_response(error, _fallback_headers(ctx))
        except Exception:
            log.exception("unexpected error while serving a request", extra={"graph": plan.name})
            return error_response(GraphRequestError("internal error in the router"))
        if reply.stream is not None:
            return Response(
                reply.status,
                content_type=reply.content_type or "text/event-stream",
                headers=STREAM_HEADERS + _fallback_headers(ctx),
                stream=reply.stream,
            )
        return Response(reply.status, reply.body, _content_type(reply), _fallback_headers(ctx))

    async def _run(self, plan: GraphPlan, request: Request, ctx: ExecutionContext) -> Reply:
        """Run the graph; ``DeadlineExceeded`` when it ran past ``serverWrite``."""
        timeouts = plan.timeouts
        # The engine alone holds the body from here, so it can drop it once no step reads it.
        if timeouts.server_write is None:
            return await run_graph(plan, request.take_body(), ctx, request.media)
        task = self.deadlines.watch(timeouts.server_write)
        expired = False
        try:
            return await run_graph(plan, request.take_body(), ctx, request.media)
        except asyncio.CancelledError:
            expired = self.deadlines.remove(task)
            if not expired:
                raise
            task.uncancel()
            log.warning("graph %s ran past serverWrite; closing the connection", plan.name)
            raise DeadlineExceeded(
                f"the graph ran past serverWrite ({timeouts.server_write} s)"
            ) from None
        finally:
            if not expired:
                self.deadlines.remove(task)
