"""The router's own HTTP/1.1 server: one asyncio protocol per connection, requests parsed by
llhttp (through httptools), the edge rules of Go's net/http.

- The whole request (line, headers, body) must arrive within the read timeout of the graph it
  is for (``serverRead``, as Go's ``ReadTimeout``: trickled headers are cut too); a kept-alive
  connection may then wait ``idle`` seconds for its next request (Go's ``IdleTimeout``).
- Request line plus headers above ``max_header_bytes`` get 431; a body above ``max_body_bytes``
  gets 413, at once when the declared length says so (so ``Expect: 100-continue`` clients never
  send it). ``Expect: 100-continue`` is answered before the body is read; another expectation
  gets 417.
- HTTP/0.9, malformed requests and smuggling attempts (Content-Length with Transfer-Encoding,
  two lengths) get 400 and the connection is closed. Upgrades are refused.
- Requests on one connection are answered in order (pipelining); a client that goes away
  cancels the handler of its request.
- ``shutdown`` stops accepting, closes idle connections and lets every request in flight
  finish (Go's ``Server.Shutdown``).

Deadlines are checked by one sweep for all connections (``resolution`` seconds apart), not by
a timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from infergraph.router.http.bodies import BodyBuffer
from infergraph.router.service.messages import Request, Response, error_body

log = logging.getLogger("infergraph.router")
TLS_HANDSHAKE_SECONDS = 10.0  # a client that does not finish its handshake by then is dropped

Handler = Callable[[Request], Awaitable[Response]]
_PIPELINE_DEPTH = 16  # requests queued on one connection before it stops reading
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_bytes: int = 1024 * 1024
    max_body_bytes: int = 32 * 1024 * 1024
    idle_timeout: float | None = 180.0
    # serverRead of the graph a path is for (None: no limit); before the path is known, the
    # longest of them applies.
    read_timeout: Callable[[str], float | None] = lambda _path: 60.0
    header_timeout: float | None = 60.0


class _Date:
    """The ``Date`` header, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_DATE = _Date()


def _head(status: int, fields: list[tuple[bytes, bytes]], close: bool) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Unknown"))]
    lines.extend(name + b": " + value for name, value in fields)
    lines.append(b"Date: " + _DATE.value())
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


_PREFIXES: dict[tuple[int, str | None], bytes] = {}


def _prefix(status: int, content_type: str | None) -> bytes:
    """A head's status line and content type, as ``_head`` writes them (kept for the first
    256 pairs: statuses are few, content types mostly the same few)."""
    prefix = _PREFIXES.get((status, content_type))
    if prefix is None:
        prefix = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        if content_type is not None:
            prefix += b"Content-Type: " + _latin1(content_type) + b"\r\n"
        if len(_PREFIXES) < 256:
            _PREFIXES[status, content_type] = prefix
    return prefix


def _latin1(value: str) -> bytes:
    return value.encode("latin-1", "replace")


class _Refused(Exception):
    """A request the server answers itself, then closes the connection. Raised in a parser
    callback (``_Connection.refuse`` keeps it, since llhttp wraps what a callback raises)."""

    def __init__(self, status: int, cause: str) -> None:
        super().__init__(cause)
        self.status = status
        self.cause = cause


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the handler for each in turn, writes."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        # Read deadline (loop time) while a request is arriving or awaited; None while busy.
        self.deadline: float | None = None
        self.closed = False
        self.closing = False  # close after the response being written
        self.task: asyncio.Task[None] | None = None
        self.queue: deque[tuple[Request, bool]] = deque()
        self.writable: asyncio.Future[None] | None = None
        self.reading = True
        self.receiving = False  # between the first byte of a request and its end
        self._refusal: _Refused | None = None
        self._reset_request()

    def _reset_request(self) -> None:
        self._url: list[bytes] = []
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._in_head = False  # between a request's first byte and the end of its headers
        self._head_read = 0  # bytes read while in the head, after the read that began it
        self._body = BodyBuffer()
        self._path = ""
        self._method = ""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop sets TCP_NODELAY on every TCP connection it accepts (as asyncio's loops do).
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self._expect_request(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)  # a writer waiting to drain wakes up (and is cancelled)
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: stop the work done for it
        self.server.connection_closed()

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        try:
            self.parser.feed_data(data)
            if in_head and self._in_head:
                # All of it is one head still arriving. llhttp reports a header only once it
                # is whole (and httptools grows it by concatenation, at a cost growing with its
                # square), so an endless one is cut as it is read, as Go cuts MaxHeaderBytes
                # (with Go's 4096 bytes of slack over the limit counted on whole headers).
                self._head_read += len(data)
                if self._head_read > self.limits.max_header_bytes + 4096:
                    self._refuse(431, self._header_limit_cause())
        except _Refused as refused:
            self._refuse(refused.status, refused.cause)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # llhttp reports an exception raised in a callback as its own error.
            kept = self._refusal
            if kept is not None:
                self._refuse(kept.status, kept.cause)
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._reset_request()
        self.receiving = self._in_head = True
        if self.task is None:  # while a response is produced, the next request waits its turn
            self._expect_request(self.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self.parser
        if parser.get_http_version() not in ("1.0", "1.1"):
            raise self._refused(400, "only HTTP/1.0 and HTTP/1.1 are served (not HTTP/0.9)")
        self._method = parser.get_method().decode("latin-1")
        raw = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        if raw.startswith(b"/") and b"?" not in raw and b"#" not in raw:
            path = raw.decode("latin-1")  # origin-form without a query: the path itself
        else:
            try:
                url = httptools.parse_url(raw)
            except httptools.HttpParserInvalidURLError as exc:
                raise self._refused(400, f"invalid request target: {exc}") from exc
            path = (url.path or b"/").decode("latin-1")
        if "%" in path:
            try:
                path = _unquote(path)
            except _Refused as refused:
                raise self._refused(refused.status, refused.cause) from None
        self._path = path
        if self.task is None:
            self._expect_request(self.limits.read_timeout(path))
        length = None
        expect = None
        for name, value in self._headers:
            lower = name.lower()
            if lower == "content-length":
                length = int(value) if value.isascii() and value.isdigit() else None
            elif lower == "expect":
                expect = value.lower()
        limit = self.limits.max_body_bytes
        if length is not None and length > limit:
            raise self._refused(413, f"request body of {length} bytes is over the limit of {limit}")
        if expect is not None:
            if expect != "100-continue":
                raise self._refused(417, f"unsupported expectation {expect!r}")
            if parser.get_http_version() == "1.1" and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        limit = self.limits.max_body_bytes
        if self._body.size + len(body) > limit:
            raise self._refused(413, f"request body is over the limit of {limit} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = Request(self._method, self._path, tuple(self._headers), self._body.value())
        keep_alive = self.parser.should_keep_alive()
        self.deadline = None
        self.receiving = False
        self.queue.append((request, keep_alive))
        if len(self.queue) >= _PIPELINE_DEPTH and self.transport is not None and self.reading:
            self.reading = False
            self.transport.pause_reading()
        if self.task is None:
            self._next()

    # the rest
    def _refused(self, status: int, cause: str) -> _Refused:
        self._refusal = _Refused(status, cause)
        return self._refusal

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.limits.max_header_bytes:
            raise self._refused(431, self._header_limit_cause())

    def _header_limit_cause(self) -> str:
        return f"request line and headers are over {self.limits.max_header_bytes} bytes"

    def _expect_request(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else self.loop.time() + timeout

    def _next(self) -> None:
        if not self.queue:
            self.task = None
            if self.receiving:  # the next request has begun to arrive
                self._expect_request(self.limits.header_timeout)
            elif self.closing:
                self._close()
            else:
                self._expect_request(self.limits.idle_timeout)
            return
        request, keep_alive = self.queue.popleft()
        if not self.reading and self.transport is not None:
            self.reading = True
            self.transport.resume_reading()
        self.task = self.loop.create_task(self._serve(request, keep_alive))

    async def _serve(self, request: Request, keep_alive: bool) -> None:
        try:
            response = await self.server.handler(request)
        except asyncio.CancelledError:
            return  # the client went away
        except Exception:
            log.exception("unexpected error in the request handler")
            response = Response(500, error_body("internal error in the router"), "application/json")
        try:
            if self.closed:
                return
            if response.abort:
                self._abort()
                return
            if not keep_alive or self.server.shutting_down:
                self.closing = True
            if response.stream is not None:
                await self._write_stream(request, response)
            else:
                self._write_whole(request, response)
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            if response.stream is not None:
                # Never relayed or cut short (the client left): closing the stream closes
                # the upstream call, so the model server stops generating.
                await response.stream.aclose()
        self._next()

    def _fields(self, response: Response) -> list[tuple[bytes, bytes]]:
        fields = [(_latin1(k), _latin1(v)) for k, v in response.headers]
        if response.content_type is not None:
            fields.append((b"Content-Type", _latin1(response.content_type)))
        return fields

    def _write_whole(self, request: Request, response: Response) -> None:
        assert self.transport is not None
        if response.headers:
            fields = self._fields(response)
            fields.append((b"Content-Length", b"%d" % len(response.body)))
            head = _head(response.status, fields, self.closing)
        else:  # the common case: the same head as _head's, from a prefix made once
            head = b"%sContent-Length: %d\r\nDate: %s\r\n%s\r\n" % (
                _prefix(response.status, response.content_type),
                len(response.body),
                _DATE.value(),
                b"Connection: close\r\n" if self.closing else b"",
            )
        if request.method == "HEAD" or not response.body:
            self.transport.write(head)
        elif len(response.body) < 16384:
            self.transport.write(head + response.body)
        else:
            self.transport.writelines((head, response.body))

    async def _write_stream(self, request: Request, response: Response) -> None:
        assert self.transport is not None
        assert response.stream is not None
        fields = self._fields(response)
        if request.method == "HEAD":
            # No body, so no framing either (Go's net/http drops Transfer-Encoding for HEAD):
            # the head alone, and the stream is closed unread (_serve closes it).
            self.transport.write(_head(response.status, fields, self.closing))
            return
        chunked = self.parser.get_http_version() == "1.1"
        if chunked:
            fields.append((b"Transfer-Encoding", b"chunked"))
        else:
            self.closing = True  # HTTP/1.0: the end of the body is the end of the connection
        # The head leaves at once, as Go's ReverseProxy flushes a streamed reply's header at
        # once: a model's first token can be seconds away, and a client may time out waiting
        # for the head.
        self.transport.write(_head(response.status, fields, self.closing))
        # Closing the stream (also when the client goes away) closes the upstream call.
        async with contextlib.aclosing(response.stream) as chunks:
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    if not chunked:
                        self.transport.write(chunk)
                    elif len(chunk) < 16384:
                        self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    else:
                        self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                    if self.writable is not None and not self.writable.done():
                        await self.writable
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception as exc:
                # The reply broke off mid-way: the client must not take it for a whole one.
                self._abort()
                raise ConnectionResetError("the streamed reply broke off") from exc
        if chunked:
            self.transport.write(b"0\r\n\r\n")

    def _refuse(self, status: int, cause: str) -> None:
        """Answer a request the handler never sees, and close the connection."""
        if self.transport is None or self.closed:
            return
        if self.task is not None:  # a response is still being produced: do not interleave
            self._abort()
            return
        body = error_body(cause)
        fields = [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % len(body))]
        self.transport.write(_head(status, fields, close=True) + body)
        self._close()

    def timed_out(self) -> None:
        """The read or idle deadline passed: close without answering, as Go does."""
        self.deadline = None
        self._abort()

    def shutdown(self) -> None:
        """Close now if idle, else after the response in progress (and any queued ones)."""
        self.closing = True
        if self.task is None and not self.queue and not self.receiving:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


def _unquote(path: str) -> str:
    """Percent-decode a path; a ``%`` not followed by two hex digits is a client error."""
    index = path.find("%")
    while index != -1:
        escape = path[index + 1 : index + 3]
        if len(escape) != 2 or any(c not in "0123456789abcdefABCDEF" for c in escape):
            raise _Refused(400, "invalid percent-encoding in the request path")
        index = path.find("%", index + 3)
    return unquote(path, encoding="latin-1")


class HttpServer:
    """Listens on a socket and serves every request with ``handler``."""

    def __init__(self, handler: Handler, limits: Limits, resolution: float = 0.1) -> None:
        self.handler = handler
        self.limits = limits
        self.resolution = resolution
        self.connections: set[_Connection] = set()
        self.shutting_down = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._all_closed: asyncio.Event | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=4096,
            ssl=tls,
            ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS if tls is not None else None,
        )
        self._sweeper = loop.create_task(self._sweep())

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.resolution)
            now = loop.time()
            for connection in [c for c in self.connections if c.deadline is not None]:
                if connection.deadline is not None and connection.deadline <= now:
                    connection.timed_out()

    def connection_closed(self) -> None:
        if self._all_closed is not None and not self.connections:
            self._all_closed.set()

    async def shutdown(self) -> None:
        """Stop accepting, close idle connections, wait for every request in flight."""
        self.shutting_down = True
        if self._server is not None:
            self._server.close()
        self._all_closed = asyncio.Event()
        for connection in list(self.connections):
            connection.shutdown()
        if self.connections:
            await self._all_closed.wait()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            await self._server.wait_closed()
