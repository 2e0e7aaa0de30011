"""A transport on aiohttp's ClientSession: the stock client, kept as the reference the fast
client is tested and benchmarked against."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import aiohttp

from infergraph.router.engine.errors import UpstreamConnectionError, UpstreamTimeout
from infergraph.router.engine.transport import Reply, StepCall


async def _chunks(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    """A streamed body as it arrives; leaving early closes the connection."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except aiohttp.ClientError as exc:
        raise UpstreamConnectionError(f"{response.url}: {exc}") from exc
    finally:
        response.close()


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
            if call.stream:
                response = await self._session.post(
                    url, data=call.body, headers=list(call.headers), timeout=timeout
                )
                content_type = response.headers.get("Content-Type")
                return Reply(response.status, b"", content_type, stream=_chunks(response))
            async with self._session.post(
                url, data=call.body, headers=list(call.headers), timeout=timeout
            ) as response:
                body = await response.read()
                return Reply(response.status, body, response.headers.get("Content-Type"))
        except TimeoutError as exc:
            raise UpstreamTimeout(f'Post "{url}": context deadline exceeded') from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamConnectionError(f'Post "{url}": {exc}') from exc
