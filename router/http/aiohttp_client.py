"""A transport on aiohttp's ClientSession: the stock client, kept as the reference the fast
client is tested and benchmarked against.

It follows the fast client's rules with aiohttp's own machinery: at most ``max_connections``
connections per backend (``TCPConnector(limit_per_host=...)``); a call waits for one at most
``pool_timeout`` seconds (``ClientTimeout.connect``, which bounds the wait for a pooled
connection and the TCP connect together), then fails with ``UpstreamOverloaded``; idle
connections are not reused after ``idle_connection_seconds`` (``keepalive_timeout``). aiohttp
sends a POST only once: it retries only idempotent methods on a reused connection.
"""

from __future__ import annotations

import ssl
from types import SimpleNamespace
from typing import Any

import aiohttp

from infergraph.router.engine.errors import (
    UpstreamConnectFailed,
    UpstreamConnectionError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.http.streams import ChunkStream


class _BodyStream(ChunkStream):
    """A streamed body as it arrives. Closing the stream closes the response (and so its
    connection) even if it was never read."""

    __slots__ = ("_done", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._done = False

    def __aiter__(self) -> _BodyStream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._response.content.readany()
        except aiohttp.ClientError as exc:
            await self.aclose()
            raise UpstreamConnectionError(f"{self._response.url}: {exc}") from exc
        except BaseException:
            await self.aclose()
            raise
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._response.close()


class _Queue:
    """Whether a call is waiting for one of its backend's connections (set by trace hooks)."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = False


async def _queued(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceConnectionQueuedStartParams,
) -> None:
    context.trace_request_ctx.waiting = True


async def _dequeued(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceConnectionQueuedEndParams,
) -> None:
    context.trace_request_ctx.waiting = False


class AiohttpTransport:
    """One pooled, keep-alive ``ClientSession`` for every step call."""

    def __init__(
        self,
        max_connections: int = 1024,
        pool_timeout: float = 5.0,
        idle_connection_seconds: float = 4.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._tls = tls
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout
        self._idle_seconds = idle_connection_seconds
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self._max_connections,
            keepalive_timeout=self._idle_seconds,
            ttl_dns_cache=60,
            ssl=self._tls if self._tls is not None else True,
        )
        queue = aiohttp.TraceConfig()
        queue.on_connection_queued_start.append(_queued)
        queue.on_connection_queued_end.append(_dequeued)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
            trace_configs=[queue],
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, call: StepCall) -> Reply:
        assert self._session is not None, "start() the transport first"
        target = call.target
        url = target.url
        timeout = aiohttp.ClientTimeout(total=call.timeout, connect=self._pool_timeout)
        queue = _Queue()
        options: dict[str, Any] = {
            "data": call.body,
            "headers": list(call.all_headers()),
            "timeout": timeout,
            "trace_request_ctx": queue,
        }
        try:
            if call.stream:
                response = await self._session.post(url, **options)
                content_type = response.headers.get("Content-Type")
                return Reply(response.status, b"", content_type, stream=_BodyStream(response))
            async with self._session.post(url, **options) as response:
                body = await response.read()
                return Reply(response.status, body, response.headers.get("Content-Type"))
        except aiohttp.ConnectionTimeoutError as exc:
            if queue.waiting:
                host = f"[{target.host}]" if ":" in target.host else target.host
                raise UpstreamOverloaded(
                    f'Post "{url}": no connection to {target.scheme}://{host}:{target.port} '
                    f"became free within {self._pool_timeout} s ({self._max_connections} in use)"
                ) from exc
            raise UpstreamConnectFailed(
                f'Post "{url}": dial tcp {target.host}:{target.port}: i/o timeout'
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f'Post "{url}": context deadline exceeded') from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectFailed(f'Post "{url}": {exc}') from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamConnectionError(f'Post "{url}": {exc}') from exc
