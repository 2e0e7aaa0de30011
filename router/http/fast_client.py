"""The router's own HTTP/1.1 client: keep-alive connection pools on asyncio protocols, with
responses parsed by llhttp (through httptools).

A step call is a POST with a known body and a whole response read into memory, so the client
needs far less than a general one: no cookies, redirects, proxies or streaming uploads. Doing
only that work is what makes it cheaper per request than aiohttp's ``ClientSession``.

Connections are pooled per backend (scheme, host, port), as Envoy's per-cluster limits are: a
backend has at most ``max_connections`` connections, and a call that finds them all busy waits
at most ``pool_timeout`` seconds for one, then fails with ``UpstreamOverloaded`` (503). So one
hung model server holds up only the calls to it. A streamed reply keeps its connection until
the stream ends. An idle connection older than ``idle_connection_seconds`` is closed, never
reused: shorter than common servers' keep-alive timeouts, so a reused connection seldom races
the server closing it.

As Go's net/http does for a POST, a request is sent again only when it provably never reached
the server: its write on a reused connection failed at once (the server had reset it). A
connection that closes after the request was written and before any byte of the response is
an error, never a resend: the server may have acted on the request.

Failures map to the engine's ``UpstreamError`` tree here and nowhere else.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import dataclasses
import functools
import ssl
import time
from collections import deque
from typing import Any

import httptools

from infergraph.router.engine.errors import (
    UpstreamConnectFailed,
    UpstreamConnectionError,
    UpstreamOverloaded,
    UpstreamTimeout,
)
from infergraph.router.engine.transport import Headers, Reply, ServiceTarget, StepCall
from infergraph.router.http.bodies import BodyBuffer
from infergraph.router.http.deadlines import Deadlines
from infergraph.router.http.streams import ChunkStream

PoolKey = tuple[str, str, int]
_COPY_LIMIT = 64 * 1024
MAX_RESPONSE_HEAD = 10 << 20  # as Go's Transport: a reply's status line and headers


_STREAM_BUFFER = 256 * 1024  # a streamed reply's bytes read ahead of its reader, at most


class _NotSent(Exception):
    """The request's write failed at once: not a byte of it left this process."""


class _Stream(ChunkStream):
    """A streamed reply body, made when its request is sent: the chunks the connection feeds
    in as they arrive, then ``None`` (the end) or an exception.

    Once the whole message has arrived, the stream lets go of its connection: a framed,
    keep-alive reply gives it back to the pool (as Go's client does once a body is read to its
    end), so the next streamed call needs no new TCP connection. Closing the stream before the
    message ends (even before reading anything) aborts the connection, so the model server
    stops.

    Reading pauses while more than ``_STREAM_BUFFER`` bytes wait to be taken, and resumes
    once they are, so a reader slower than the model server (a slow client behind the router)
    holds the server back through TCP, as Go's ReverseProxy does by copying at the client's
    pace, rather than the router keeping all it sends.
    """

    __slots__ = ("_chunks", "_connection", "_done", "_paused", "_queued")

    def __init__(self, connection: _Connection) -> None:
        self._connection: _Connection | None = connection
        self._chunks: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self._done = False
        self._queued = 0  # bytes fed and not yet taken
        self._paused = False

    def feed(self, item: bytes | Exception | None) -> None:
        self._chunks.put_nowait(item)
        if type(item) is bytes:
            self._queued += len(item)
            if self._queued > _STREAM_BUFFER and not self._paused:
                connection = self._connection
                if connection is not None and connection.transport is not None:
                    self._paused = True
                    connection.transport.pause_reading()

    def release(self) -> None:
        """The message has arrived whole: the connection is no longer this stream's."""
        self._resume()  # it goes back to the pool reading
        self._connection = None

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            connection = self._connection
            if connection is not None and connection.transport is not None:
                connection.transport.resume_reading()

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._chunks.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, bytes):
            self._queued -= len(item)
            if self._paused and self._queued <= _STREAM_BUFFER // 4:
                self._resume()
            return item
        self._done = True
        connection, self._connection = self._connection, None
        if item is None:
            if connection is not None:
                connection.close()
            raise StopAsyncIteration
        if connection is not None:
            connection.abort()
        raise item

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    __slots__ = (
        "_body",
        "_content_type",
        "_framed",
        "_head_left",
        "_received",
        "_stream",
        "_streaming",
        "_waiter",
        "closed",
        "idle_since",
        "loop",
        "on_stream_end",
        "parser",
        "reused",
        "stream_end",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Kept: asyncio.get_running_loop() costs a getpid system call on every call.
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False  # closing or closed: never to be used again
        self.reused = False
        self.idle_since = 0.0
        # How the last streamed reply ended: None while it runs (or for a plain reply), True
        # when it arrived whole on a connection fit for reuse, False when the connection is
        # gone. ``on_stream_end`` hears it once, when set by then.
        self.stream_end: bool | None = None
        self.on_stream_end: collections.abc.Callable[[bool], None] | None = None
        self._waiter: asyncio.Future[Reply] | None = None
        self._body = BodyBuffer()
        self._content_type: str | None = None
        self._framed = False  # Content-Length or chunked: the message has a known end
        self._received = False
        self._head_left = -1  # bytes the reply's head may still take; -1 once it is read
        self._stream: _Stream | None = None  # the streamed reply still being fed
        self._streaming = False  # the current request asked for a streamed reply

    @property
    def usable(self) -> bool:
        """Open as far as this process knows: not closed by us, the server or an error."""
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if self._stream is None and (waiter is None or waiter.done()):
            # Bytes on an idle connection (a 408 before a close, say): as Go does, drop it.
            self.close()
            return
        self._received = True
        in_head = self._head_left >= 0
        try:
            self.parser.feed_data(data)
            if in_head and self._head_left >= 0:
                # All of it is head. llhttp reports a header only once it ends, so an endless
                # one is cut as it arrives, at Go's MaxResponseHeaderBytes (10 MiB).
                self._head_left -= len(data)
                if self._head_left < 0:
                    limit = MAX_RESPONSE_HEAD
                    self._fail(UpstreamConnectionError(f"response headers over {limit} bytes"))
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamConnectionError("unexpected protocol upgrade in response"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamConnectionError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        stream = self._stream
        if stream is not None and waiter is not None and waiter.done():
            self._stream = None
            ended = self._received and not self._framed  # a stream delimited by the close
            stream.feed(None if ended else UpstreamConnectionError("connection lost mid-stream"))
        elif waiter is not None and not waiter.done():
            if self._received and not self._framed and self.parser.get_status_code():
                self._complete()  # a body delimited by the end of the connection
            else:
                reason = f": {exc}" if exc else ""
                what = "ended" if self._received else "arrived"
                self._fail(
                    UpstreamConnectionError(f"connection closed before the response {what}{reason}")
                )
        if self._streaming and self.stream_end is None:
            self._end_stream(False)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self._content_type = value.decode("latin-1")
        elif lowered in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._head_left = -1
        waiter = self._waiter
        if self._stream is not None and waiter is not None and not waiter.done():
            status = self.parser.get_status_code()
            waiter.set_result(Reply(status, b"", self._content_type, stream=self._stream))

    def on_body(self, body: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        stream = self._stream
        if stream is None:
            self._complete()
            return
        self._stream = None
        stream.release()
        stream.feed(None)  # every chunk is queued; the connection is done, read or not
        if self.parser.should_keep_alive() and self._framed:
            self._end_stream(True)
        else:
            self.close()  # connection_lost ends the stream's hold on it

    def _end_stream(self, reusable: bool) -> None:
        self.stream_end = reusable
        on_end, self.on_stream_end = self.on_stream_end, None
        if on_end is not None:
            on_end(reusable)

    # request side
    def _complete(self) -> None:
        waiter = self._waiter
        status = self.parser.get_status_code()
        reply = Reply(status, self._body.value(), self._content_type)
        if not self.parser.should_keep_alive() or not self._framed:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def _fail(self, error: Exception) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.feed(error)
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
        """Write the request; ``_NotSent`` when the write failed at once."""
        transport = self.transport
        assert transport is not None
        self._body = BodyBuffer()
        self._content_type = None
        self._framed = False
        self._received = False
        self._head_left = MAX_RESPONSE_HEAD
        if len(body) <= _COPY_LIMIT:
            transport.write(head + body)  # one small copy beats a vectored write
        else:
            transport.writelines((head, body))
        # asyncio and uvloop both try the socket at once and close the transport when that
        # fails: the server had already reset the connection.
        if transport.is_closing():
            self.closed = True
            raise _NotSent()
        self._stream = _Stream(self) if stream else None
        self._streaming = stream
        self.stream_end = None
        self._waiter = waiter = self.loop.create_future()
        return waiter


class _Pool:
    """One backend's connections: the idle ones, and slots for the ones in use (``limit``
    in all), handed to waiting calls in turn."""

    __slots__ = ("idle", "in_use", "limit", "name", "waiters")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_use = 0
        self.idle: deque[_Connection] = deque()  # oldest first
        self.waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        if self.in_use < self.limit and not self.waiters:
            self.in_use += 1
            return True
        return False

    async def acquire(self, within: float) -> None:
        """Wait for a slot; ``TimeoutError`` after ``within`` seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(within):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was handed over as the wait ended: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the first waiting call
                return
        self.in_use -= 1


_CACHED_BLOCK_BYTES = 2048


class _HeadCache:
    """Encoded request lines per target and header blocks per header set, built once each.
    Blocks over ``_CACHED_BLOCK_BYTES`` are built on every call: header sets are the clients'
    (with an id per request they never repeat), and 4,096 of 1 MiB each held 8 GiB."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lines: dict[str, bytes] = {}
        self._headers: dict[Headers, bytes] = {}

    def head(
        self, target: ServiceTarget, headers: Headers, length: int, uncached: Headers = ()
    ) -> bytes:
        """The request head; ``uncached`` (the trace context, new on every call) goes after
        the cached header block."""
        line = self._lines.get(target.url)
        if line is None:
            line = f"POST {target.path} HTTP/1.1\r\nHost: {target.authority}\r\n".encode("latin-1")
            if len(self._lines) >= self._size:
                self._lines.clear()
            self._lines[target.url] = line
        block = self._headers.get(headers)
        if block is None:
            block = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")
            if len(block) <= _CACHED_BLOCK_BYTES:
                if len(self._headers) >= self._size:
                    self._headers.clear()
                self._headers[headers] = block
        if uncached:
            block += "".join(f"{name}: {value}\r\n" for name, value in uncached).encode("latin-1")
        return b"%sContent-Length: %d\r\n%s\r\n" % (line, length, block)


class FastTransport:
    """Pooled keep-alive HTTP/1.1 connections per backend (scheme, host, port)."""

    def __init__(
        self,
        max_connections: int = 1024,
        max_idle_per_host: int = 512,
        pool_timeout: float = 5.0,
        idle_connection_seconds: float = 4.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._max_connections = max_connections if max_connections > 0 else 2**62
        self._max_idle = max_idle_per_host
        self._pool_timeout = pool_timeout
        self._idle_seconds = idle_connection_seconds
        self._pools: dict[PoolKey, _Pool] = {}
        self._ssl: ssl.SSLContext | None = tls  # made on the first https step when None
        self._open: set[_Connection] = set()
        self._heads = _HeadCache()
        self._sweeper: asyncio.TimerHandle | None = None
        self._deadlines = Deadlines(resolution=0.01)  # per-call timeouts
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        await self._deadlines.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._pools.clear()

    # connections
    async def _connect(self, target: ServiceTarget) -> _Connection:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            kwargs = {"ssl": self._ssl, "server_hostname": target.host}
        _, connection = await loop.create_connection(
            functools.partial(_Connection, loop), target.host, target.port, **kwargs
        )
        self._open.add(connection)
        return connection

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    def _checkout(self, pool: _Pool) -> _Connection | None:
        """The most recently used idle connection that is open and not expired."""
        idle = pool.idle
        if not idle:
            return None
        horizon = time.monotonic() - self._idle_seconds
        while idle:
            connection = idle.pop()
            if connection.idle_since <= horizon:  # expired, and so is every older one
                self._discard(connection)
                while idle:
                    self._discard(idle.pop())
                return None
            if connection.usable:
                return connection
            self._discard(connection)
        return None

    def _checkin(self, pool: _Pool, connection: _Connection) -> None:
        idle = pool.idle
        if not connection.usable or self._closed or len(idle) >= self._max_idle:
            self._discard(connection)
            return
        connection.reused = True
        connection.idle_since = time.monotonic()
        idle.append(connection)
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._idle_seconds, self._sweep)

    def _sweep(self) -> None:
        """Close the expired idle connections (checkout never uses them anyway); runs while
        any connection is idle, every ``idle_connection_seconds``."""
        self._sweeper = None
        horizon = time.monotonic() - self._idle_seconds
        waiting = False
        for pool in self._pools.values():
            idle = pool.idle
            while idle and (idle[0].idle_since <= horizon or not idle[0].usable):
                self._discard(idle.popleft())
            waiting = waiting or bool(idle)
        if waiting and not self._closed:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._idle_seconds, self._sweep)

    # calls
    async def _exchange(
        self, pool: _Pool, target: ServiceTarget, head: bytes, body: bytes, stream: bool
    ) -> Reply:
        connection = self._checkout(pool)
        attempts = 0
        while True:
            attempts += 1
            if connection is None:
                connection = await self._connect(target)
            try:
                waiter = connection.send(head, body, stream)
                break
            except _NotSent:
                self._discard(connection)
                if not connection.reused:
                    raise UpstreamConnectionError(
                        "connection closed before the request was written"
                    ) from None
                # Never reached the server: send it on a new connection (the pool's other
                # idle connections may be as stale).
                connection = None
        try:
            reply = await waiter
        except BaseException:
            connection.abort()
            self._open.discard(connection)
            raise
        if stream:
            # The connection keeps its slot until the stream lets go of it.
            end = functools.partial(self._stream_ended, pool, connection)
            if connection.stream_end is None:
                connection.on_stream_end = end
            else:
                end(connection.stream_end)
        else:
            self._checkin(pool, connection)
            pool.release()
        return reply if attempts == 1 else dataclasses.replace(reply, attempts=attempts)

    def _stream_ended(self, pool: _Pool, connection: _Connection, reusable: bool) -> None:
        if reusable:
            self._checkin(pool, connection)
        else:
            self._open.discard(connection)
        pool.release()

    async def _send(self, call: StepCall) -> Reply:
        target = call.target
        key = (target.scheme, target.host, target.port)
        pool = self._pools.get(key)
        if pool is None:
            host = f"[{target.host}]" if ":" in target.host else target.host
            pool = _Pool(f"{target.scheme}://{host}:{target.port}", self._max_connections)
            self._pools[key] = pool
        if not pool.try_acquire():
            try:
                await pool.acquire(self._pool_timeout)
            except TimeoutError:
                raise UpstreamOverloaded(
                    f'Post "{target.url}": no connection to {pool.name} became free within '
                    f"{self._pool_timeout} s ({pool.in_use} in use)"
                ) from None
        head = self._heads.head(target, call.headers, len(call.body), call.trace_headers)
        try:
            return await self._exchange(pool, target, head, call.body, call.stream)
        except BaseException:
            pool.release()
            raise

    async def send(self, call: StepCall) -> Reply:
        url = call.target.url
        try:
            if call.timeout is None:
                return await self._send(call)
            deadlines = self._deadlines
            task = deadlines.watch(call.timeout)
            try:
                return await self._send(call)
            except asyncio.CancelledError as exc:
                if deadlines.expired(task):
                    raise UpstreamTimeout(
                        f'Post "{url}": context deadline exceeded (timeout {call.timeout} s)'
                    ) from exc
                raise
            finally:
                deadlines.remove(task)
        except UpstreamConnectionError as exc:
            raise UpstreamConnectionError(f'Post "{url}": {exc.cause}') from exc
        except OSError as exc:  # from connecting: nothing was sent
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise UpstreamConnectFailed(
                f'Post "{url}": dial tcp {call.target.host}:{call.target.port}: {reason}'
            ) from exc
