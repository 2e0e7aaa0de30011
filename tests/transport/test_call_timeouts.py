"""The fast client's per-call timeouts (router/http/deadlines.py) against a server that never
answers: a timeout is an UpstreamTimeout no earlier than asked and at most a resolution or so
later; a cancellation from outside stays a cancellation; nothing stays timed afterwards."""

from __future__ import annotations

import asyncio

import pytest

from infergraph.router.engine.errors import UpstreamTimeout
from infergraph.router.engine.transport import StepCall, parse_target
from infergraph.router.http.fast_client import FastTransport


async def _silent_server() -> tuple[asyncio.Server, int]:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _call(port: int, timeout: float) -> StepCall:
    return StepCall(
        target=parse_target(f"http://127.0.0.1:{port}/v1/models/m:predict"),
        body=b"{}",
        headers=(("Content-Type", "application/json"),),
        timeout=timeout,
    )


def test_a_timed_call_ends_in_upstream_timeout_on_time() -> None:
    async def main() -> float:
        server, port = await _silent_server()
        transport = FastTransport()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UpstreamTimeout, match=r"timeout 0\.2 s"):
            await transport.send(_call(port, 0.2))
        took = loop.time() - started
        assert not transport._deadlines._due
        assert not transport._deadlines._expired
        await transport.close()
        server.close()
        return took

    took = asyncio.run(main())
    assert 0.2 <= took < 0.2 + 0.1


def test_a_cancellation_from_outside_is_not_a_timeout() -> None:
    async def main() -> None:
        server, port = await _silent_server()
        transport = FastTransport()
        task = asyncio.ensure_future(transport.send(_call(port, 5)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not transport._deadlines._due
        await transport.close()
        server.close()

    asyncio.run(main())
