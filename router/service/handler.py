"""The router's HTTP front: one request handler on aiohttp's low-level server.

``/readyz`` and ``/healthz`` answer probes, ``/metrics`` the scrape; every other request runs a
graph. Errors are rendered here, in one place, from the status their exception carries; the
request's telemetry is the recorder's (``observability.recorder``), the process around the
handler is ``lifecycle``'s.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from contextlib import aclosing

import orjson
import pygjson
from aiohttp import web

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import (
    BodyTooLarge,
    ClientReadTimeout,
    DeadlineExceeded,
    GraphRequestError,
)
from infergraph.router.engine.headers import HeaderPolicy
from infergraph.router.engine.plan import GraphPlan
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply, Transport
from infergraph.router.observability.recorder import RequestRecorder
from infergraph.router.observability.telemetry import Telemetry
from infergraph.router.service.deadlines import Deadlines
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.settings import RouterSettings

log = logging.getLogger("infergraph.router")

JSON = "application/json"


def error_response(error: GraphRequestError) -> web.Response:
    body = orjson.dumps({"error": "Failed to process request", "cause": error.cause})
    return web.Response(status=error.status, body=body, content_type=JSON)


def _content_type(reply: Reply) -> str:
    declared = reply.content_type
    if declared is not None and declared.startswith(JSON):
        return declared
    if reply.body and pygjson.validate(reply.body):
        return JSON
    return declared or "application/octet-stream"


def _check_length(request: web.BaseRequest, limit: int) -> None:
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes is over the limit of {limit}")


def buffered_body(request: web.BaseRequest) -> bytes | None:
    """The body if it has already arrived whole (the common case for small requests), else None."""
    stream = request.content
    if stream.is_eof():
        return stream.read_nowait()
    return None


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    stream = request.content
    while True:
        chunk = await stream.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def stream_reply(
    request: web.BaseRequest, reply: Reply, chunks: AsyncGenerator[bytes, None]
) -> web.StreamResponse:
    """Relay a streamed step reply (server-sent events) chunk by chunk as it arrives.

    If the client goes away the handler is cancelled, which closes ``chunks`` and so the
    upstream connection: the model server stops generating.
    """
    response = web.StreamResponse(status=reply.status)
    response.headers["Content-Type"] = reply.content_type or "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    async with aclosing(chunks):
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(chunk)
        except GraphRequestError as error:
            log.error("stream from the model server broke off: %s", error.cause)
            _abort(request)
            return response
    await response.write_eof()
    return response


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


class RouterService:
    """Serves the registry's graphs through one transport."""

    def __init__(
        self,
        settings: RouterSettings,
        registry: GraphRegistry,
        transport: Transport,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.telemetry = telemetry or Telemetry()
        self.transport = self.telemetry.wrap(transport)
        self.headers = HeaderPolicy.from_setting(settings.propagate_headers)
        self.rng = rng or random.Random()
        self.draining = False
        self.deadlines = Deadlines()
        for rejected in self.headers.rejected:
            log.error("PROPAGATE_HEADERS: skipping a pattern that does not compile: %s", rejected)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/readyz":
            if self.draining:
                return web.Response(status=503, text="shutting down")
            return web.Response(status=200)
        if path == "/healthz":
            return web.Response(status=200, text="ok")
        if path == "/metrics":
            page = self.telemetry.metrics_page()
            if page is not None:
                return web.Response(body=page[0], headers={"Content-Type": page[1]})
        try:
            plan = self.registry.lookup(path)
        except GraphRequestError as error:
            return error_response(error)
        recorder = self.telemetry.recorder(plan.name, request.headers, path)
        ctx = ExecutionContext(
            transport=self.transport,
            headers=self.headers.forward(request.headers.items()),
            service_timeout=plan.timeouts.service_client,
            rng=self.rng,
            graph=plan.name,
            observer=self.telemetry.observer(plan.name),
            calls=recorder.upstream,
        )
        with recorder:
            response = await self._respond(request, plan, ctx, recorder)
            recorder.answered(response.status)
        return response

    async def _respond(
        self,
        request: web.BaseRequest,
        plan: GraphPlan,
        ctx: ExecutionContext,
        recorder: RequestRecorder,
    ) -> web.StreamResponse:
        try:
            body = await self._body(request, plan.timeouts.server_read)
            reply = await self._run(request, plan, body, ctx)
        except GraphRequestError as error:
            recorder.failed(error)
            if error.close_connection:
                # As Go's ReadTimeout and WriteTimeout: the client sees its connection closed.
                _abort(request)
                return web.Response(status=error.status)
            return error_response(error)
        except Exception:
            log.exception("unexpected error while serving a request", extra={"graph": plan.name})
            return error_response(GraphRequestError("internal error in the router"))
        if reply.stream is not None:
            return await stream_reply(request, reply, reply.stream)
        response = web.Response(status=reply.status, body=reply.body)
        response.headers["Content-Type"] = _content_type(reply)
        return response

    async def _body(self, request: web.BaseRequest, read_timeout: float | None) -> bytes:
        """The request body; ``ClientReadTimeout`` when it took longer than ``serverRead``."""
        limit = self.settings.max_body_bytes
        _check_length(request, limit)
        body = buffered_body(request)
        if body is not None:
            if len(body) > limit:
                raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
            return body
        try:
            async with asyncio.timeout(read_timeout):
                return await read_body(request, limit)
        except TimeoutError as exc:
            raise ClientReadTimeout(
                f"the request body took longer than serverRead ({read_timeout} s)"
            ) from exc

    async def _run(
        self, request: web.BaseRequest, plan: GraphPlan, body: bytes, ctx: ExecutionContext
    ) -> Reply:
        """Run the graph; ``DeadlineExceeded`` when it ran past ``serverWrite``."""
        timeouts = plan.timeouts
        if timeouts.server_write is None:
            return await run_graph(plan, body, ctx)
        task = asyncio.current_task()
        assert task is not None
        self.deadlines.add(task, timeouts.server_write)
        expired = False
        try:
            return await run_graph(plan, body, ctx)
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
