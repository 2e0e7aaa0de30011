"""A fault-injecting model server on raw asyncio sockets, for black-box tests of the router's
downstream clients.

One server plays many roles: the first segment of the request path picks the behaviour and
the query string tunes it, so ``/stall`` and ``/stall/v1/models/m:predict`` both stall. A path
that names no behaviour gets the server's default (``mode``, itself a path such as
``"fail?status=503&rate=0.2"``; ``"ok"`` unless told).

==========================================  ===============================================
``/ok``                                     200, the request body echoed (``{}`` if empty),
                                            ``application/json``; ``?reset_after_ms=N``
                                            then resets the idle connection N ms later
``/slow?ms=N&rate=0.01``                    the same after N ms (with that probability,
                                            seeded; always unless told)
``/fail?status=503&rate=0.2``               ``status`` with that probability (seeded), else
                                            ``/ok``
``/stall``                                  read the request, never answer
``/reset``                                  read the request, reset the connection (RST)
``/close-after-read?nth=K``                 answer the first K-1 requests of a connection,
                                            read the K-th and close without answering
``/garbage``                                bytes that are not HTTP, then close
``/close-after-headers``                    a head promising a body, then close
``/trickle?bytes_per_s=N``                  the echo's body at N bytes per second
``/sse?events=N&interval_ms=M&one_write=1`` N server-sent events and ``[DONE]``, chunked;
                                            ``one_write=1`` sends the whole response at once
==========================================  ===============================================

Every request is counted per path (without the query) once it has been read whole: that is
a delivery. Control paths are not counted: ``GET /ready`` (always 200), ``GET /_counts``
(the counts as JSON), ``DELETE /_counts`` (reset them), ``GET /_connections``.

Run it in the test's own event loop (``async with FaultServer() as server``), in a thread of
its own for tests that block their loop or are synchronous (``with FaultServer().in_thread()``),
or as a process for tests of real router processes (``fault_process(port)``, which runs
``python -m infergraph.testing.faults --port P --mode M``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import socket
import struct
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Self
from urllib.parse import parse_qsl, urlsplit

from infergraph.predictors.processes import ServerProcess

MODES = frozenset(
    {
        "ok",
        "slow",
        "fail",
        "stall",
        "reset",
        "close-after-read",
        "garbage",
        "close-after-headers",
        "trickle",
        "sse",
    }
)
# Connection handler tasks carry the test suite's fixture prefix: the server ends them itself.
TASK_PREFIX = "fixture:faults-"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query
    params: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes
    number: int  # 1 for a connection's first request


def response(
    status: int, body: bytes = b"", content_type: str = "application/json", close: bool = False
) -> bytes:
    """A whole HTTP/1.1 response with a Content-Length."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "")
    return head.encode("latin-1") + b"\r\n" + body


def sse_response(events: int) -> tuple[bytes, list[bytes]]:
    """The head of a chunked event stream and its chunks, the terminating one included."""
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    payloads = [b'data: {"event": %d}\n\n' % i for i in range(events)] + [b"data: [DONE]\n\n"]
    return head, [b"%x\r\n%s\r\n" % (len(p), p) for p in payloads] + [b"0\r\n\r\n"]


def sse_body(events: int) -> bytes:
    """The event stream a client should read from ``/sse?events=N``."""
    return b"".join(b'data: {"event": %d}\n\n' % i for i in range(events)) + b"data: [DONE]\n\n"


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultServer:
    """The server; ``counts`` holds deliveries per path, ``connections`` the connections
    accepted. ``keepalive`` (seconds) closes a connection idle that long, as servers do."""

    def __init__(
        self,
        port: int = 0,
        *,
        mode: str = "ok",
        seed: int = 0,
        keepalive: float | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        default = urlsplit(mode if mode.startswith("/") else f"/{mode}")
        self._default_mode = default.path.strip("/")
        if self._default_mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(sorted(MODES))}")
        self._default_params = dict(parse_qsl(default.query))
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.rng = random.Random(seed)
        self.counts: collections.Counter[str] = collections.Counter()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._delivery: asyncio.Event | None = None

    def url(self, path: str = "/ok") -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def delivered(self, path: str, count: int, within: float = 5.0) -> None:
        """Wait until ``path`` has had ``count`` deliveries (from the server's own loop)."""
        assert self._delivery is not None, "start the server first"
        async with asyncio.timeout(within):
            while self.counts[path] < count:
                self._delivery.clear()
                await self._delivery.wait()

    async def __aenter__(self) -> Self:
        self._delivery = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[Self]:
        """Serve from a thread with its own event loop while the block runs."""
        started = threading.Event()
        loop: list[asyncio.AbstractEventLoop] = []
        stop = asyncio.Event()
        errors: list[BaseException] = []

        async def main() -> None:
            try:
                async with self:
                    loop.append(asyncio.get_running_loop())
                    started.set()
                    await stop.wait()
            except BaseException as exc:
                errors.append(exc)
                started.set()

        thread = threading.Thread(target=asyncio.run, args=(main(),), name="faults", daemon=True)
        thread.start()
        started.wait(10)
        if errors or not loop:
            thread.join(10)
            raise RuntimeError("the fault server did not start") from (
                errors[0] if errors else None
            )
        try:
            yield self
        finally:
            loop[0].call_soon_threadsafe(stop.set)
            thread.join(10)

    # connections
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections += 1
        task.set_name(f"{TASK_PREFIX}{self.connections}")
        self._tasks.add(task)
        number = 0
        try:
            while True:
                number += 1
                request = await self._read(reader, number)
                if request is None or not await self._answer(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except asyncio.CancelledError:
            # Stopped by __aexit__. Ending normally spares Python 3.11's stream server a
            # logged "CancelledError" from the task's done callback.
            return
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, number: int) -> Request | None:
        """The next request, or None when the connection stayed idle past ``keepalive``."""
        try:
            async with asyncio.timeout(self.keepalive if number > 1 else None):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return None
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = {}
        for header in lines:
            if header:
                name, _, value = header.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        return Request(method, parts.path, dict(parse_qsl(parts.query)), headers, body, number)

    async def _answer(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is done."""
        path = request.path
        if path == "/ready":
            writer.write(response(200, b"ready", "text/plain"))
            return True
        if path == "/_counts":
            if request.method == "DELETE":
                self.counts.clear()
            writer.write(response(200, json.dumps(dict(self.counts)).encode()))
            return True
        if path == "/_connections":
            writer.write(response(200, json.dumps({"connections": self.connections}).encode()))
            return True
        self.counts[path] += 1
        if self._delivery is not None:
            self._delivery.set()
        mode = path.strip("/").split("/", 1)[0]
        params = dict(request.params)
        if mode not in MODES:
            mode, params = self._default_mode, {**self._default_params, **params}
        echo = request.body or b"{}"
        close = request.headers.get("connection", "").lower() == "close"

        if mode == "slow":
            # Only a rate draws from the seeded RNG (other modes' sequences stay as they were).
            if "rate" not in params or self.rng.random() < float(params["rate"]):
                await asyncio.sleep(float(params.get("ms", "100")) / 1000)
        elif mode == "fail" and self.rng.random() < float(params.get("rate", "1")):
            status = int(params.get("status", "503"))
            writer.write(response(status, b'{"error": "injected failure"}', close=close))
            return not close
        elif mode == "stall":
            while await reader.read(65536):
                pass  # until the client goes away
            return False
        elif mode == "reset":
            reset(writer)
            return False
        elif mode == "close-after-read" and request.number >= int(params.get("nth", "1")):
            return False
        elif mode == "garbage":
            writer.write(b"\x00\x01 this is not HTTP \xff\r\n\r\n")
            await writer.drain()
            return False
        elif mode == "close-after-headers":
            writer.write(response(200, echo)[: -len(echo)])
            await writer.drain()
            return False
        elif mode == "trickle":
            return await self._trickle(writer, echo, float(params.get("bytes_per_s", "100")))
        elif mode == "sse":
            await self._events(writer, params)
            return True

        writer.write(response(200, echo, close=close))
        if "reset_after_ms" in params:
            await writer.drain()
            await asyncio.sleep(float(params["reset_after_ms"]) / 1000)
            reset(writer)
            return False
        return not close

    async def _trickle(self, writer: asyncio.StreamWriter, body: bytes, rate: float) -> bool:
        writer.write(response(200, body)[: -len(body)])
        piece = max(1, int(rate / 20))
        for start in range(0, len(body), piece):
            await writer.drain()
            await asyncio.sleep(piece / rate)
            writer.write(body[start : start + piece])
        return True

    async def _events(self, writer: asyncio.StreamWriter, params: dict[str, str]) -> None:
        head, chunks = sse_response(int(params.get("events", "3")))
        if params.get("one_write") == "1":
            writer.write(head + b"".join(chunks))
            return
        interval = float(params.get("interval_ms", "0")) / 1000
        writer.write(head)
        for chunk in chunks:
            await writer.drain()
            if interval:
                await asyncio.sleep(interval)
            writer.write(chunk)


def fault_process(
    port: int,
    mode: str = "ok",
    *,
    seed: int = 0,
    keepalive: float | None = None,
    log_path: Path | None = None,
) -> ServerProcess:
    """The server as a child process (start it with ``with``), ready once ``/ready`` answers."""
    argv = [sys.executable, "-m", "infergraph.testing.faults", "--port", str(port)]
    argv += ["--mode", mode, "--seed", str(seed)]
    if keepalive is not None:
        argv += ["--keepalive", str(keepalive)]
    return ServerProcess(argv, f"http://127.0.0.1:{port}/ready", log_path=log_path)


def counts(base_url: str, reset: bool = False) -> dict[str, int]:
    """The deliveries per path of the server at ``base_url`` (``http://host:port``)."""
    request = urllib.request.Request(f"{base_url}/_counts", method="DELETE" if reset else "GET")
    with urllib.request.urlopen(request, timeout=10) as answer:
        result: dict[str, int] = json.loads(answer.read())
        return result


async def _serve_forever(server: FaultServer) -> None:
    async with server:
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", default="ok", help="the behaviour of paths that name none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keepalive", type=float, default=None, help="idle seconds")
    args = parser.parse_args(argv)
    server = FaultServer(
        args.port, mode=args.mode, seed=args.seed, keepalive=args.keepalive, host=args.host
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(server))


if __name__ == "__main__":
    main()
