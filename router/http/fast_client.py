"""The router's own HTTP/1.1 client: keep-alive connection pools on asyncio protocols, with
responses parsed by llhttp (through httptools).

A step call is a POST with a known body and a whole response read into memory, so the client
needs far less than a general one: no cookies, redirects, proxies or streaming uploads. Doing
only that work is what makes it cheaper per request than aiohttp's ``ClientSession``.

Failures map to the engine's ``UpstreamError`` tree here and nowhere else. A call that meets a
pooled keep-alive connection the server had already closed (nothing received) is retried once
on a new connection; any other failure is reported, never retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

import httptools

from infergraph.router.engine.errors import UpstreamConnectionError, UpstreamTimeout
from infergraph.router.engine.transport import Headers, Reply, ServiceTarget, StepCall

PoolKey = tuple[str, str, int]
_COPY_LIMIT = 64 * 1024


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the response arrived."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    __slots__ = (
        "_body",
        "_chunks",
        "_content_type",
        "_framed",
        "_received",
        "_waiter",
        "closed",
        "parser",
        "reused",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self._waiter: asyncio.Future[Reply] | None = None
        self._body: list[bytes] = []
        self._content_type: str | None = None
        self._framed = False  # Content-Length or chunked: the message has a known end
        self._received = False
        # Streaming replies: body chunks as they arrive, then None (end) or an exception.
        self._chunks: asyncio.Queue[bytes | Exception | None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamConnectionError("unexpected protocol upgrade in response"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectionError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if self._chunks is not None and waiter is not None and waiter.done():
            ended = self._received and not self._framed  # a stream delimited by the close
            self._end_stream(
                None if ended else UpstreamConnectionError("connection lost mid-stream")
            )
        if waiter is None or waiter.done():
            return
        if not self._received and self.reused:
            waiter.set_exception(_StaleConnection())
        elif self._received and not self._framed and self.parser.get_status_code():
            self._complete()  # a body delimited by the end of the connection
        else:
            reason = f": {exc}" if exc else ""
            self._fail(
                UpstreamConnectionError(f"connection closed before the response ended{reason}")
            )

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self._content_type = value.decode("latin-1")
        elif lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self._chunks is not None and self._waiter is not None and not self._waiter.done():
            status = self.parser.get_status_code()
            self._waiter.set_result(Reply(status, b"", self._content_type, stream=self._stream()))

    def on_body(self, body: bytes) -> None:
        if self._chunks is not None:
            self._chunks.put_nowait(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._chunks is not None:
            self._end_stream(None)
        else:
            self._complete()

    # streaming
    def _end_stream(self, outcome: Exception | None) -> None:
        chunks, self._chunks = self._chunks, None
        if chunks is not None:
            chunks.put_nowait(outcome)

    async def _stream(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; closing the iterator early aborts the connection."""
        chunks = self._chunks
        assert chunks is not None
        finished = False
        try:
            while True:
                item = await chunks.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            # A streamed connection is not reused: close it, or abort it if the reader left early.
            if finished:
                self.close()
            else:
                self.abort()

    # request side
    def _complete(self) -> None:
        waiter = self._waiter
        status = self.parser.get_status_code()
        body = self._body
        reply = Reply(status, body[0] if len(body) == 1 else b"".join(body), self._content_type)
        if not self.parser.should_keep_alive() or not self._framed:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fail(self, error: Exception) -> None:
        self._end_stream(error)
        self.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def send(self, head: bytes, body: bytes, stream: bool = False) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._waiter = waiter = asyncio.get_running_loop().create_future()
        self._chunks = asyncio.Queue() if stream else None
        self._body = []
        self._content_type = None
        self._framed = False
        self._received = False
        if len(body) <= _COPY_LIMIT:
            self.transport.write(head + body)  # one small copy beats a vectored write
        else:
            self.transport.writelines((head, body))
        return waiter


class _HeadCache:
    """Encoded request lines per target and header blocks per header set, built once each."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lines: dict[str, bytes] = {}
        self._headers: dict[Headers, bytes] = {}

    def head(self, target: ServiceTarget, headers: Headers, length: int) -> bytes:
        line = self._lines.get(target.url)
        if line is None:
            line = f"POST {target.path} HTTP/1.1\r\nHost: {target.authority}\r\n".encode("latin-1")
            if len(self._lines) >= self._size:
                self._lines.clear()
            self._lines[target.url] = line
        block = self._headers.get(headers)
        if block is None:
            block = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
            if len(self._headers) >= self._size:
                self._headers.clear()
            self._headers[headers] = block
        return b"%sContent-Length: %d\r\n%s\r\n" % (line, length, block)


class FastTransport:
    """Pooled keep-alive HTTP/1.1 connections per (scheme, host, port)."""

    def __init__(self, max_connections: int = 1024, max_idle_per_host: int = 512) -> None:
        self._limit = asyncio.Semaphore(max_connections) if max_connections > 0 else None
        self._max_idle = max_idle_per_host
        self._idle: dict[PoolKey, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._open: set[_Connection] = set()
        self._heads = _HeadCache()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    async def _connect(self, target: ServiceTarget) -> _Connection:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            kwargs = {"ssl": self._ssl, "server_hostname": target.host}
        _, connection = await loop.create_connection(
            _Connection, target.host, target.port, **kwargs
        )
        self._open.add(connection)
        return connection

    def _release(self, key: PoolKey, connection: _Connection) -> None:
        if connection.closed:
            self._open.discard(connection)
            return
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= self._max_idle:
            connection.close()
            self._open.discard(connection)
            return
        connection.reused = True
        idle.append(connection)

    async def _exchange(
        self, key: PoolKey, target: ServiceTarget, head: bytes, body: bytes, stream: bool
    ) -> Reply:
        idle = self._idle.get(key)
        connection = None
        while idle:
            candidate = idle.pop()
            if not candidate.closed:
                connection = candidate
                break
            self._open.discard(candidate)
        if connection is None:
            connection = await self._connect(target)
        try:
            reply = await connection.send(head, body, stream)
        except BaseException:
            connection.abort()
            self._open.discard(connection)
            raise
        if stream:
            self._open.discard(connection)  # the reply's stream owns and closes it
        else:
            self._release(key, connection)
        return reply

    async def _send(self, call: StepCall) -> Reply:
        target = call.target
        key = (target.scheme, target.host, target.port)
        head = self._heads.head(target, call.headers, len(call.body))
        try:
            return await self._exchange(key, target, head, call.body, call.stream)
        except _StaleConnection:
            reply = await self._exchange(key, target, head, call.body, call.stream)
            return dataclasses.replace(reply, attempts=2)

    async def _limited(self, call: StepCall) -> Reply:
        if self._limit is None:
            return await self._send(call)
        async with self._limit:
            return await self._send(call)

    async def send(self, call: StepCall) -> Reply:
        url = call.target.url
        try:
            if call.timeout is None:
                return await self._limited(call)
            async with asyncio.timeout(call.timeout):
                return await self._limited(call)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f'Post "{url}": context deadline exceeded (timeout {call.timeout} s)'
            ) from exc
        except UpstreamConnectionError as exc:
            raise UpstreamConnectionError(f'Post "{url}": {exc.cause}') from exc
        except _StaleConnection as exc:
            raise UpstreamConnectionError(
                f'Post "{url}": connection closed twice in a row'
            ) from exc
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise UpstreamConnectionError(
                f'Post "{url}": dial tcp {call.target.host}:{call.target.port}: {reason}'
            ) from exc
