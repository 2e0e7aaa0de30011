"""The router's transport: the HTTP client named in the settings, plus gRPC for v2-grpc steps."""

from __future__ import annotations

from typing import Protocol as Interface

from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.http.aiohttp_client import AiohttpTransport
from infergraph.router.http.fast_client import FastTransport
from infergraph.router.http.upstream_tls import UpstreamTls
from infergraph.router.http.v2_grpc import GrpcV2Transport
from infergraph.router.protocols import Protocol
from infergraph.router.settings import RouterSettings


class ManagedTransport(Interface):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def send(self, call: StepCall) -> Reply: ...


class ProtocolTransport:
    """Sends ``v2-grpc`` steps over gRPC and every other step over HTTP."""

    def __init__(self, http: ManagedTransport, grpc: ManagedTransport) -> None:
        self.http = http
        self.grpc = grpc

    async def start(self) -> None:
        await self.http.start()
        await self.grpc.start()

    async def close(self) -> None:
        await self.http.close()
        await self.grpc.close()

    async def send(self, call: StepCall) -> Reply:
        if call.protocol == Protocol.V2_GRPC:
            return await self.grpc.send(call)
        return await self.http.send(call)


def make_transport(settings: RouterSettings) -> ManagedTransport:
    """The HTTP client the settings name, with their per-backend connection limits."""
    client = AiohttpTransport if settings.client == "aiohttp" else FastTransport
    tls = UpstreamTls(
        settings.upstream_ca, settings.upstream_client_cert, settings.upstream_client_key
    )
    custom = settings.upstream_ca is not None or settings.upstream_client_cert is not None
    http: ManagedTransport = client(
        max_connections=settings.max_connections,
        pool_timeout=settings.pool_timeout,
        idle_connection_seconds=settings.idle_connection_seconds,
        tls=tls.context() if custom else None,
    )
    return ProtocolTransport(http, GrpcV2Transport(tls, settings.grpc_client))
