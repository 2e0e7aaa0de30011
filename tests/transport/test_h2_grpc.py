"""``v2-grpc`` steps over the router's own HTTP/2 client (``--grpc-client fast``), beside
``grpc.aio`` (``grpcio``).

Against a real grpcio server, both clients must give the same replies: tensors, gRPC statuses,
deadlines, 8 MiB messages both ways (past every flow-control window), the server's stream limit,
TLS with a client certificate, forwarded headers, a server that restarts. Against a server
scripted frame by frame, the HTTP/2 duties a grpcio server seldom exercises: PING, padding and
CONTINUATION, a refused stream, GOAWAY, a small window, trailers-only errors, a broken peer.
Each test runs on the stock loop and on uvloop (conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import hpack
import orjson
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from infergraph.router.engine.errors import (
    UpstreamConnectFailed,
    UpstreamConnectionError,
    UpstreamTimeout,
)
from infergraph.router.engine.transport import Headers, Reply, StepCall, parse_target
from infergraph.router.http import h2_grpc
from infergraph.router.http.upstream_tls import UpstreamTls
from infergraph.router.http.v2_grpc import GrpcV2Transport
from infergraph.router.protocols import Protocol
from infergraph.router.settings import GrpcClient
from infergraph.testing.certs import Authority

CLIENTS: list[GrpcClient] = ["fast", "grpcio"]


BODY = b'{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]}]}'
ECHOED = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]}
MESSAGE_LIMIT = 64 * 1024 * 1024


class Model(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Echoes its inputs as outputs. The model name steers it: ``sleep-S`` answers after S
    seconds, ``abort-CODE`` fails with that gRPC status, ``cut-short`` cuts the first output's
    contents a byte short. Counts calls in flight."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.cancelled = 0
        self.metadata: list[dict[str, str]] = []
        self.raw_metadata: list[tuple[tuple[str, str | bytes], ...]] = []
        self.entered = asyncio.Event()
        self.was_cancelled = asyncio.Event()

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        self.raw_metadata.append(tuple(context.invocation_metadata()))
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.entered.set()
        try:
            name = request.model_name
            if name.startswith("sleep-"):
                await asyncio.sleep(float(name.removeprefix("sleep-")))
            if name.startswith("abort-"):
                code = getattr(grpc.StatusCode, name.removeprefix("abort-"))
                await context.abort(code, "model said no: 100% ünsure")
            response = service_pb2.ModelInferResponse(model_name=name, id=request.id)
            for tensor in request.inputs:
                response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.extend(request.raw_input_contents)
            if name == "cut-short":
                response.raw_output_contents[0] = response.raw_output_contents[0][:-1]
            return response
        except asyncio.CancelledError:
            self.cancelled += 1
            self.was_cancelled.set()
            raise
        finally:
            self.active -= 1


@contextlib.asynccontextmanager
async def grpc_server(
    model: Model, port: int = 0, credentials: Any = None, **options: Any
) -> AsyncIterator[tuple[Any, int]]:
    settings = [
        ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ("grpc.so_reuseport", 0),
        *options.items(),
    ]
    server = grpc.aio.server(options=settings)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(model, server)
    address = f"127.0.0.1:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    await server.start()
    try:
        yield server, bound
    finally:
        await server.stop(None)


def step(
    port: int,
    body: bytes = BODY,
    *,
    model: str = "m",
    timeout: float | None = 5.0,
    headers: Headers = (),
    scheme: str = "grpc",
) -> StepCall:
    return StepCall(
        target=parse_target(f"{scheme}://127.0.0.1:{port}"),
        body=body,
        headers=headers,
        timeout=timeout,
        protocol=Protocol.V2_GRPC,
        model=model,
    )


def outputs(reply: Reply) -> list[dict[str, Any]]:
    assert reply.status == 200, reply.body
    answer: list[dict[str, Any]] = orjson.loads(reply.body)["outputs"]
    return answer


# --- against a real grpcio server -------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_call_round_trips_its_tensors_and_connections_are_reused(
    client: GrpcClient,
) -> None:
    model = Model()
    transport = GrpcV2Transport(client=client)
    async with grpc_server(model) as (_, port):
        try:
            for _ in range(3):
                assert outputs(await transport.send(step(port))) == [ECHOED]
        finally:
            await transport.close()
    assert len(model.metadata) == 3


CODES = [
    ("NOT_FOUND", 404),
    ("INVALID_ARGUMENT", 400),
    ("RESOURCE_EXHAUSTED", 429),
    ("INTERNAL", 500),
    ("DATA_LOSS", 500),
]


@pytest.mark.parametrize(("code", "status"), CODES)
async def test_both_clients_give_the_same_reply_for_a_grpc_status(code: str, status: int) -> None:
    replies = []
    async with grpc_server(Model()) as (_, port):
        for client in CLIENTS:
            transport = GrpcV2Transport(client=client)
            try:
                replies.append(await transport.send(step(port, model=f"abort-{code}")))
            finally:
                await transport.close()
    fast, grpcio = replies
    assert (fast.status, fast.body) == (grpcio.status, grpcio.body)
    assert fast.status == status
    assert orjson.loads(fast.body) == {"error": "model said no: 100% ünsure"}


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_reply_whose_outputs_cannot_be_read_is_a_500_naming_why(client: GrpcClient) -> None:
    """Contents a byte short of their shape raised out of the transport: a 500 "internal error
    in the router" with a traceback, and no retry or fallback, since the engine took it for a
    bug of its own. It is the model server's error, as a reply that is not a message is."""
    transport = GrpcV2Transport(client=client)
    async with grpc_server(Model()) as (_, port):
        try:
            reply = await transport.send(step(port, model="cut-short"))
            assert outputs(await transport.send(step(port))) == [ECHOED]
        finally:
            await transport.close()
    assert reply.status == 500
    assert orjson.loads(reply.body)["error"].startswith("the reply's outputs cannot be read (")


@pytest.mark.parametrize("client", CLIENTS)
async def test_unavailable_is_a_connection_error(client: GrpcClient) -> None:
    transport = GrpcV2Transport(client=client)
    async with grpc_server(Model()) as (_, port):
        try:
            with pytest.raises(UpstreamConnectionError):
                await transport.send(step(port, model="abort-UNAVAILABLE"))
        finally:
            await transport.close()


async def test_a_closed_port_is_a_connect_failure_naming_the_address() -> None:
    async with grpc_server(Model()) as (_, port):
        pass  # the port is free again
    transport = GrpcV2Transport(client="fast")
    try:
        with pytest.raises(UpstreamConnectFailed, match=f"dial tcp 127.0.0.1:{port}"):
            await transport.send(step(port))
    finally:
        await transport.close()


@pytest.mark.parametrize("client", CLIENTS)
async def test_8_mib_each_way_passes_every_flow_control_window(client: GrpcClient) -> None:
    count = 2 * 1024 * 1024  # FP32: 8 MiB of raw contents
    values = [float(i % 1000) for i in range(count)]
    body = orjson.dumps(
        {"inputs": [{"name": "big", "shape": [count], "datatype": "FP32", "data": values}]}
    )
    transport = GrpcV2Transport(client=client)
    async with grpc_server(Model()) as (_, port):
        try:
            replies = await asyncio.gather(*(transport.send(step(port, body)) for _ in range(3)))
        finally:
            await transport.close()
    for reply in replies:
        (tensor,) = outputs(reply)
        assert tensor["shape"] == [count]
        assert tensor["data"] == values


async def test_the_deadline_resets_the_stream_and_the_connection_serves_on() -> None:
    model = Model()
    transport = GrpcV2Transport(client="fast")
    async with grpc_server(model) as (_, port):
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeout, match="context deadline exceeded"):
                await transport.send(step(port, model="sleep-5", timeout=0.3))
            assert 0.29 <= loop.time() - started < 1.5
            await asyncio.wait_for(model.was_cancelled.wait(), 5)  # the server saw the reset
            assert model.cancelled == 1
            assert outputs(await transport.send(step(port))) == [ECHOED]
            (connection,) = [transport._h2_client(step(port)).channel._connection]
            assert connection is not None
            assert not connection._streams
        finally:
            await transport.close()


async def test_a_cancelled_call_frees_its_stream() -> None:
    model = Model()
    transport = GrpcV2Transport(client="fast")
    async with grpc_server(model) as (_, port):
        try:
            task = asyncio.ensure_future(transport.send(step(port, model="sleep-5", timeout=None)))
            await asyncio.wait_for(model.entered.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(model.was_cancelled.wait(), 5)
            assert model.cancelled == 1
            connection = transport._h2_client(step(port)).channel._connection
            assert connection is not None
            assert not connection._streams
        finally:
            await transport.close()


async def test_calls_beyond_the_servers_stream_limit_wait_for_a_stream() -> None:
    model = Model()
    transport = GrpcV2Transport(client="fast")
    async with grpc_server(model, **{"grpc.max_concurrent_streams": 2}) as (_, port):
        try:
            await transport.send(step(port))  # the server's SETTINGS are known from here
            replies = await asyncio.gather(
                *(transport.send(step(port, model="sleep-0.05")) for _ in range(10))
            )
        finally:
            await transport.close()
    assert all(reply.status == 200 for reply in replies)
    assert model.peak == 2


async def test_headers_reach_the_server_and_connection_headers_do_not() -> None:
    model = Model()
    transport = GrpcV2Transport(client="fast")
    headers = (
        ("X-Request-Id", "r-1"),
        ("Connection", "close"),
        ("TE", "gzip"),
        ("Content-Type", "application/json"),
    )
    call = step(port=0, headers=headers)
    async with grpc_server(model) as (_, port):
        call = step(port, headers=headers).with_headers(
            headers, (("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),)
        )
        try:
            assert (await transport.send(call)).status == 200
        finally:
            await transport.close()
    (seen,) = model.metadata
    assert seen["x-request-id"] == "r-1"
    assert seen["traceparent"] == "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert "connection" not in seen
    assert seen.get("grpc-timeout") is None  # grpcio consumes it: the deadline test reads it


@pytest.mark.parametrize("client", CLIENTS)
async def test_headers_grpc_cannot_carry_are_left_out_by_both_clients(client: GrpcClient) -> None:
    """Forwarded headers become the same metadata on both clients, and one gRPC cannot carry
    is left out rather than failing the call (grpc.aio raised for each of these, a 500 made
    of a client's header)."""
    model = Model()
    transport = GrpcV2Transport(client=client)
    headers = (
        ("X-Request-Id", "r-1"),
        ("X-Tag", "a"),
        ("X-Tag", "b"),  # a name may repeat
        ("X-Trace-Bin", "AAEC"),  # base64 of 00 01 02
        ("X-Short-Bin", "AAE"),  # unpadded base64 of 00 01
        ("X-Broken-Bin", "A"),  # no base64
        ("X-Partly-Bin", "AB="),  # padded part way: grpc-go fails the call on it
        ("X-Over-Bin", "AAAA="),
        ("Grpc-Status", "3"),  # gRPC's own names
        ("Grpc-Timeout", "1n"),
        ("X-Accent", "caf\xe9"),  # text outside printable ASCII
        ("X-\xdc", "1"),  # a name outside gRPC's key characters
    )
    async with grpc_server(model) as (_, port):
        try:
            reply = await transport.send(step(port, headers=headers))
        finally:
            await transport.close()
    assert reply.status == 200, reply.body
    (seen,) = model.metadata
    forwarded = {k: v for k, v in seen.items() if k.startswith("x-")}
    assert forwarded == {
        "x-request-id": "r-1",
        "x-tag": "b",  # invocation_metadata as a dict keeps the last of the two
        "x-trace-bin": b"\x00\x01\x02",
        "x-short-bin": b"\x00\x01",
    }
    assert seen.get("grpc-status") is None
    (raw,) = model.raw_metadata
    assert [value for key, value in raw if key == "x-tag"] == ["a", "b"]


async def test_a_server_that_restarts_is_reached_on_a_new_connection() -> None:
    transport = GrpcV2Transport(client="fast")
    try:
        async with grpc_server(Model()) as (_server, port):
            assert (await transport.send(step(port))).status == 200
        async with grpc_server(Model(), port=port):
            assert (await transport.send(step(port))).status == 200
    finally:
        await transport.close()


@pytest.mark.parametrize("client", CLIENTS)
async def test_grpcs_with_a_client_certificate(client: GrpcClient, tmp_path: Path) -> None:
    ca = Authority(tmp_path / "ca", "ca")
    server_pair, client_pair = ca.issue("127.0.0.1"), ca.issue("router", server=False)
    credentials = grpc.ssl_server_credentials(
        [(server_pair.key.read_bytes(), server_pair.cert.read_bytes())],
        root_certificates=ca.cert.read_bytes(),
        require_client_auth=True,
    )
    trusted = UpstreamTls(ca.cert, client_pair.cert, client_pair.key)
    async with grpc_server(Model(), credentials=credentials) as (_, port):
        transport = GrpcV2Transport(trusted, client=client)
        try:
            assert outputs(await transport.send(step(port, scheme="grpcs"))) == [ECHOED]
        finally:
            await transport.close()
        # Without the client certificate the server refuses the handshake.
        transport = GrpcV2Transport(UpstreamTls(ca.cert), client=client)
        try:
            with pytest.raises(UpstreamConnectionError):
                await transport.send(step(port, scheme="grpcs"))
        finally:
            await transport.close()


# --- against a server scripted frame by frame -----------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME = struct.Struct(">IBI")
REPLY = service_pb2.ModelInferResponse(model_name="m").SerializeToString()


class Peer:
    """One accepted connection of the scripted server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()

    async def frame(self) -> tuple[int, int, int, bytes]:
        kind, flags, stream_id = FRAME.unpack(await self.reader.readexactly(9))
        payload = await self.reader.readexactly(kind >> 8)
        return kind & 0xFF, flags, stream_id, payload

    async def until(self, wanted: int) -> tuple[int, int, bytes]:
        """Frames up to the next one of type ``wanted``: its flags, stream and payload."""
        while True:
            kind, flags, stream_id, payload = await self.frame()
            if kind == wanted:
                return flags, stream_id, payload

    async def request(self) -> tuple[int, dict[str, str], bytes]:
        """The next call: its stream, headers and DATA (to END_STREAM)."""
        flags, stream_id, block = await self.until(h2_grpc.HEADERS)
        headers = {str(n): str(v) for n, v in self.decoder.decode(block)}
        data = b""
        while not flags & h2_grpc.END_STREAM:
            flags, _, payload = await self.until(h2_grpc.DATA)
            data += payload
        return stream_id, headers, data

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self.writer.write(FRAME.pack(len(payload) << 8 | kind, flags, stream_id) + payload)

    def headers(self, stream_id: int, fields: list[tuple[str, str]], flags: int = 0) -> None:
        block = self.encoder.encode(fields)
        self.send(h2_grpc.HEADERS, flags | h2_grpc.END_HEADERS, stream_id, block)

    def reply(self, stream_id: int, message: bytes = REPLY) -> None:
        self.headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        self.send(h2_grpc.DATA, 0, stream_id, b"\0" + len(message).to_bytes(4) + message)
        self.headers(stream_id, [("grpc-status", "0")], h2_grpc.END_STREAM)


Script = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(*scripts: Script) -> AsyncIterator[tuple[int, list[BaseException]]]:
    """A server whose n-th connection runs ``scripts[n]`` after the preface and SETTINGS
    exchange; yields the port and the scripts' failures."""
    failures: list[BaseException] = []
    queue = list(scripts)

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        try:
            assert await reader.readexactly(len(PREFACE)) == PREFACE
            peer.send(h2_grpc.SETTINGS, 0, 0)
            await queue.pop(0)(peer)
            await writer.drain()
            await reader.read()  # until the client closes
        except Exception as exc:
            failures.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], failures
    finally:
        server.close()
        await server.wait_closed()


async def fast_call(port: int, step_timeout: float | None = 5.0) -> Reply:
    transport = GrpcV2Transport(client="fast")
    try:
        return await transport.send(step(port, timeout=step_timeout))
    finally:
        await transport.close()


async def test_a_ping_is_answered_with_its_payload() -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.send(h2_grpc.PING, 0, 0, b"12345678")
        flags, _, payload = await peer.until(h2_grpc.PING)
        assert (flags, payload) == (h2_grpc.ACK, b"12345678")
        peer.reply(stream_id)

    async with scripted(script) as (port, failures):
        assert (await fast_call(port)).status == 200
    assert not failures


async def test_padding_and_continuation_frames_are_read() -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        block = peer.encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
        padded = bytes([3]) + block[:1] + b"\0\0\0"
        peer.send(h2_grpc.HEADERS, h2_grpc.PADDED, stream_id, padded)
        peer.send(h2_grpc.CONTINUATION, h2_grpc.END_HEADERS, stream_id, block[1:])
        message = b"\0" + len(REPLY).to_bytes(4) + REPLY
        peer.send(h2_grpc.DATA, h2_grpc.PADDED, stream_id, bytes([5]) + message + b"\0" * 5)
        peer.headers(stream_id, [("grpc-status", "0")], h2_grpc.END_STREAM)

    async with scripted(script) as (port, failures):
        reply = await fast_call(port)
    assert not failures
    assert reply.status == 200
    assert orjson.loads(reply.body)["model_name"] == "m"


async def test_a_refused_stream_is_sent_again() -> None:
    seen: list[int] = []

    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        seen.append(stream_id)
        peer.send(h2_grpc.RST_STREAM, 0, stream_id, h2_grpc.REFUSED_STREAM.to_bytes(4))
        stream_id, _, _ = await peer.request()
        seen.append(stream_id)
        peer.reply(stream_id)

    async with scripted(script) as (port, failures):
        assert (await fast_call(port)).status == 200
    assert not failures
    assert seen == [1, 3]


async def test_a_call_above_goaways_last_stream_goes_to_a_new_connection() -> None:
    async def going_away(peer: Peer) -> None:
        await peer.request()
        peer.send(h2_grpc.GOAWAY, 0, 0, struct.pack(">II", 0, 0))

    async def fresh(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.reply(stream_id)

    async with scripted(going_away, fresh) as (port, failures):
        assert (await fast_call(port)).status == 200
    assert not failures


async def test_a_small_window_holds_the_request_back_until_granted() -> None:
    message_size = 1000

    async def script(peer: Peer) -> None:
        # A 100-byte window for each stream: once the client has it (the first call may be sent
        # before), no more than that may come before a grant.
        peer.send(h2_grpc.SETTINGS, 0, 0, struct.pack(">HI", h2_grpc.INITIAL_WINDOW_SIZE, 100))
        stream_id, _, _ = await peer.request()
        peer.reply(stream_id)  # read after the SETTINGS: the next call has the small window
        flags, stream_id, _ = await peer.until(h2_grpc.HEADERS)
        received = 0
        while received < 100:
            flags, _, payload = await peer.until(h2_grpc.DATA)
            received += len(payload)
        assert received == 100
        assert not flags & h2_grpc.END_STREAM
        with pytest.raises(TimeoutError):  # nothing more without a grant
            await asyncio.wait_for(peer.until(h2_grpc.DATA), 0.2)
        peer.send(h2_grpc.WINDOW_UPDATE, 0, stream_id, (10_000).to_bytes(4))
        while not flags & h2_grpc.END_STREAM:
            flags, _, payload = await peer.until(h2_grpc.DATA)
            received += len(payload)
        assert received >= message_size
        peer.reply(stream_id)

    values = [1.0] * (message_size // 4)
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP32", "data": values}]}
    )
    async with scripted(script) as (port, failures):
        transport = GrpcV2Transport(client="fast")
        try:
            assert (await transport.send(step(port))).status == 200
            reply = await transport.send(step(port, body))
        finally:
            await transport.close()
    assert not failures
    assert reply.status == 200


async def test_a_trailers_only_error_and_an_http_error_map_like_grpc() -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        fields = [(":status", "200"), ("grpc-status", "5"), ("grpc-message", "no%20such%20model")]
        peer.headers(stream_id, fields, h2_grpc.END_STREAM)
        stream_id, _, _ = await peer.request()
        peer.headers(stream_id, [(":status", "503")], h2_grpc.END_STREAM)

    async with scripted(script) as (port, failures):
        transport = GrpcV2Transport(client="fast")
        try:
            reply = await transport.send(step(port))
            assert (reply.status, orjson.loads(reply.body)) == (404, {"error": "no such model"})
            with pytest.raises(UpstreamConnectionError, match="HTTP status 503"):
                await transport.send(step(port))
        finally:
            await transport.close()
    assert not failures


async def test_a_status_of_a_digit_beyond_ascii_fails_its_call_only() -> None:
    """``"²".isdigit()`` is true, but ``int("²")`` raises: in ``data_received``, which took the
    connection down with every call on it. Now the call fails as a status gRPC cannot read
    (UNKNOWN, a 500) and the connection serves the next call."""

    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.headers(stream_id, [(":status", "200"), ("grpc-status", "\u00b2")], h2_grpc.END_STREAM)
        stream_id, _, _ = await peer.request()
        peer.reply(stream_id)

    async with scripted(script) as (port, failures):
        transport = GrpcV2Transport(client="fast")
        try:
            failed = await transport.send(step(port))
            served = await transport.send(step(port))
        finally:
            await transport.close()
    assert not failures
    assert failed.status == 500
    assert (served.status, orjson.loads(served.body)["model_name"]) == (200, "m")


async def test_a_reply_that_is_no_model_infer_response_is_a_500_naming_it() -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.reply(stream_id, b"\xff\xff")  # a field tag cut short

    async with scripted(script) as (port, failures):
        reply = await fast_call(port)
    assert not failures
    assert reply.status == 500
    assert "not a ModelInferResponse" in orjson.loads(reply.body)["error"]


async def test_a_server_that_breaks_the_protocol_gets_goaway_and_the_call_fails() -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.send(h2_grpc.PUSH_PROMISE, h2_grpc.END_HEADERS, stream_id, b"\0\0\0\2")
        _, _, payload = await peer.until(h2_grpc.GOAWAY)
        assert struct.unpack(">II", payload[:8])[1] == 1  # PROTOCOL_ERROR

    async with scripted(script) as (port, failures):
        reply = await fast_call(port)
    assert not failures
    assert reply.status == 500
    assert "protocol error" in orjson.loads(reply.body)["error"]


async def test_a_header_block_that_is_continued_without_end_is_cut_at_1_mib() -> None:
    """CONTINUATION frames that never end the block (CVE-2023-45288): the client kept them
    all, 64 MiB and on, waiting for an end. Now it ends the connection past 1 MiB."""
    sent = 0

    async def script(peer: Peer) -> None:
        nonlocal sent
        stream_id, _, _ = await peer.request()
        peer.send(h2_grpc.HEADERS, 0, stream_id, peer.encoder.encode([(":status", "200")]))
        with contextlib.suppress(ConnectionError):
            while sent < 64 * 1024 * 1024:
                peer.send(h2_grpc.CONTINUATION, 0, stream_id, b"\x40\x01a\x01b" * 3276)
                sent += 5 * 3276
                await peer.writer.drain()

    async with scripted(script) as (port, failures):
        reply = await fast_call(port)
    assert all(isinstance(failure, ConnectionError) for failure in failures), failures
    assert reply.status == 500
    assert "a header block over 1048576 bytes" in orjson.loads(reply.body)["error"]
    assert sent < 8 * 1024 * 1024


async def test_a_connection_closed_mid_call_is_a_connection_error() -> None:
    async def script(peer: Peer) -> None:
        await peer.request()
        peer.writer.close()

    async with scripted(script) as (port, _):
        with pytest.raises(UpstreamConnectionError):
            await fast_call(port)


async def test_a_hung_server_times_out_and_gets_the_stream_reset() -> None:
    resets: list[tuple[int, int]] = []
    reset_seen = asyncio.Event()

    async def script(peer: Peer) -> None:
        stream_id, headers, _ = await peer.request()
        assert headers["grpc-timeout"].endswith("u")
        _, reset, payload = await peer.until(h2_grpc.RST_STREAM)
        resets.append((reset, int.from_bytes(payload)))
        reset_seen.set()
        assert reset == stream_id

    async with scripted(script) as (port, failures):
        with pytest.raises(UpstreamTimeout):
            await fast_call(port, step_timeout=0.2)
        await asyncio.wait_for(reset_seen.wait(), 5)
    assert not failures
    assert resets == [(1, h2_grpc.CANCEL)]


# --- pieces ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(0.3, "300000u"), (99.0, "99000000u"), (100.0, "100000m"), (1e6, "1000000S"), (0.0, "0u")],
)
def test_grpc_timeout_takes_the_finest_unit_that_fits(seconds: float, value: str) -> None:
    assert h2_grpc.grpc_timeout(seconds) == value


def test_request_head_decodes_as_the_fields_grpc_expects() -> None:
    head = h2_grpc.request_head("http", "127.0.0.1:8001", "/inference.X/ModelInfer")
    extra = h2_grpc.literal("x-long", "v" * 300)  # a length past the 7-bit prefix
    assert [(str(n), str(v)) for n, v in hpack.Decoder().decode(head + extra)] == [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.X/ModelInfer"),
        (":authority", "127.0.0.1:8001"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-long", "v" * 300),
    ]


def test_indexed_blocks_are_decoded_once_while_the_table_stands() -> None:
    encoder, reader = hpack.Encoder(), h2_grpc.HeaderReader()
    fields = [(":status", "200"), ("content-type", "application/grpc")]
    assert reader.read(encoder.encode(fields)) == fields  # inserts content-type
    indexed = encoder.encode(fields)
    assert all(b & 0x80 for b in indexed)
    assert reader.read(indexed) == fields
    assert reader._known == {indexed: fields}
    # A block that inserts shifts the table: the kept decoding must go.
    assert reader.read(encoder.encode([("x-new", "1")])) == [("x-new", "1")]
    assert reader._known == {}
    assert reader.read(encoder.encode(fields)) == fields
