"""Pick the downstream HTTP transport named in the settings."""

from __future__ import annotations

from typing import Protocol

from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.http.aiohttp_client import AiohttpTransport
from infergraph.router.http.fast_client import FastTransport
from infergraph.router.settings import RouterSettings


class ManagedTransport(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def send(self, call: StepCall) -> Reply: ...


def make_transport(settings: RouterSettings) -> ManagedTransport:
    if settings.client == "aiohttp":
        return AiohttpTransport(max_connections=settings.max_connections)
    return FastTransport(max_connections=settings.max_connections)
