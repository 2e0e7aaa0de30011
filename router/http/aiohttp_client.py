"""A transport on aiohttp's ClientSession: the stock client, kept as the reference the fast
client is tested and benchmarked against."""

from __future__ import annotations

import asyncio

import aiohttp

from infergraph.router.engine.errors import UpstreamConnectionError, UpstreamTimeout
from infergraph.router.engine.transport import Reply, StepCall


class AiohttpTransport:
    """One pooled, keep-alive ``ClientSession`` for every step call."""

    def __init__(self, max_connections: int = 1024) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, call: StepCall) -> Reply:
        assert self._session is not None, "start() the transport first"
        url = call.target.url
        timeout = aiohttp.ClientTimeout(total=call.timeout)
        try:
            async with self._session.post(
                url, data=call.body, headers=list(call.headers), timeout=timeout
            ) as response:
                body = await response.read()
                return Reply(response.status, body, response.headers.get("Content-Type"))
        except TimeoutError as exc:
            raise UpstreamTimeout(f'Post "{url}": context deadline exceeded') from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamConnectionError(f'Post "{url}": {exc}') from exc
        except asyncio.CancelledError:
            raise
