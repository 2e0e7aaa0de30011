"""The handler on aiohttp's low-level server (``--server aiohttp``), the stock path kept beside
the router's own server.

It applies the same edge rules where aiohttp lets it: the header limit (as line and field
sizes), 413 from the declared length before the body is read, ``Expect: 100-continue``
answered, the body read within ``serverRead``, HTTP/0.9 refused. aiohttp's parser rejects what
llhttp rejects. What it cannot do: its header limit is per line and per field rather than for
the whole head, and its count of header lines is capped (``max_headers``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from contextlib import aclosing

from aiohttp import web, web_server

from infergraph.router.service.messages import Request, Response, error_body
from infergraph.router.service.server import Limits

Handler = Callable[[Request], Awaitable[Response]]
JSON = "application/json"


def _refused(status: int, cause: str) -> web.Response:
    return web.Response(status=status, body=error_body(cause), content_type=JSON)


class AiohttpServer:
    def __init__(self, handler: Handler, limits: Limits) -> None:
        self.handler = handler
        self.limits = limits
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self.shutting_down = False

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        limit = self.limits.max_header_bytes
        server = web_server.Server(
            self._handle,
            handler_cancellation=True,
            keepalive_timeout=self.limits.idle_timeout or 3600.0,
            access_log=None,
            max_line_size=limit,
            max_field_size=limit,
            max_headers=max(128, limit // 64),
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        # Shutdown waits for the requests in flight (each is bounded by serverWrite).
        self._site = web.TCPSite(
            self._runner,
            host,
            port,
            shutdown_timeout=3600.0,
            reuse_port=reuse_port or None,
            ssl_context=tls,
        )
        await self._site.start()

    @property
    def port(self) -> int:
        assert self._runner is not None
        address = self._runner.addresses[0]
        return int(address[1])

    async def shutdown(self) -> None:
        self.shutting_down = True
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.version < (1, 0):
            # aiohttp would answer in HTTP/0.9's own version: answer as HTTP/1.1, then close.
            if request.transport is not None:
                cause = error_body("only HTTP/1.0 and HTTP/1.1 are served (not HTTP/0.9)")
                request.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(cause), cause)
                )
                request.transport.close()
            return web.Response(status=400)
        limits = self.limits
        length = request.content_length
        if length is not None and length > limits.max_body_bytes:
            return _refused(
                413, f"request body of {length} bytes is over the limit of {limits.max_body_bytes}"
            )
        expect = request.headers.get("Expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                return _refused(417, f"unsupported expectation {expect.lower()!r}")
            if request.version == (1, 1) and request.writer is not None:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            async with asyncio.timeout(limits.read_timeout(request.path)):
                body = await _read_body(request, limits.max_body_bytes)
        except TimeoutError:
            _abort(request)  # as Go's ReadTimeout: the connection is closed, no answer
            return web.Response(status=408)
        if body is None:
            return _refused(413, f"request body is over the limit of {limits.max_body_bytes} bytes")
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
        response = await self.handler(Request(request.method, request.path, headers, body))
        return await self._render(request, response)

    async def _render(self, request: web.BaseRequest, response: Response) -> web.StreamResponse:
        if response.abort:
            _abort(request)
            return web.Response(status=response.status)
        extra = dict(response.headers)
        if response.stream is None:
            rendered = web.Response(status=response.status, body=response.body, headers=extra)
            if response.content_type is not None:
                rendered.headers["Content-Type"] = response.content_type
            return rendered
        streamed = web.StreamResponse(status=response.status, headers=extra)
        if response.content_type is not None:
            streamed.headers["Content-Type"] = response.content_type
        async with aclosing(response.stream) as chunks:
            await streamed.prepare(request)
            try:
                async for chunk in chunks:
                    await streamed.write(chunk)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception:
                _abort(request)
                return streamed
        await streamed.write_eof()
        return streamed


async def _read_body(request: web.BaseRequest, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes."""
    stream = request.content
    if stream.is_eof():
        body = stream.read_nowait()
        return body if len(body) <= limit else None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
