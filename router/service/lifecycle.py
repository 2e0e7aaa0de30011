"""The router process's lifecycle: the server on its socket, signals, the drain and the
background tasks (graph reload, metrics publishing, the deadline sweep) around one
``RouterService``.

With ``--grpc-port``, the gRPC ingress (``grpc_ingress``) starts and stops beside it: its
``ServerReady`` and health answer not-ready through the drain, like ``/readyz``.

After SIGTERM or SIGINT, ``/readyz`` answers 503 for ``drain_seconds`` while requests are still
served (KServe's drain, so that load balancers stop sending); then the server stops accepting,
closes idle connections and waits for every request in flight to finish (as Go's
``Server.Shutdown`` does; each request is bounded by its graph's ``serverWrite``), and the
process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from contextlib import suppress
from typing import Protocol

from infergraph.router.engine.errors import GraphNotFound
from infergraph.router.service.aiohttp_server import AiohttpServer
from infergraph.router.service.grpc_ingress import GrpcIngress
from infergraph.router.service.handler import RouterService
from infergraph.router.service.metadata import ModelMetadata
from infergraph.router.service.server import HttpServer, Limits
from infergraph.router.service.tls import ServerTls, TlsFiles

log = logging.getLogger("infergraph.router")
DEFAULT_READ = 60.0  # KServe's serverRead default, for paths that name no graph
DEFAULT_IDLE = 180.0


class Server(Protocol):
    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None: ...
    async def shutdown(self) -> None: ...


def limits(service: RouterService) -> Limits:
    """The edge limits from the settings and the graphs' ``routerTimeouts``."""
    registry = service.registry
    plans = registry.plans

    def read_timeout(path: str) -> float | None:
        try:
            return registry.lookup(path).timeouts.server_read
        except GraphNotFound:
            return DEFAULT_READ

    single = plans[0].timeouts if len(plans) == 1 else None
    return Limits(
        max_header_bytes=service.settings.max_header_bytes,
        max_body_bytes=service.settings.max_body_bytes,
        idle_timeout=single.server_idle if single is not None else DEFAULT_IDLE,
        read_timeout=read_timeout,
        header_timeout=single.server_read if single is not None else DEFAULT_READ,
    )


async def _reload_tls(tls: ServerTls, interval: float = 1.0) -> None:
    """Pick up rotated certificate files (cert-manager rewrites them in place)."""
    while True:
        await asyncio.sleep(interval)
        tls.reload_if_changed()


def _longest_write(service: RouterService) -> float:
    """How long a call in flight may still take: the longest ``serverWrite`` of the graphs."""
    writes = [p.timeouts.server_write for p in service.registry.plans]
    return max((w for w in writes if w is not None), default=60.0)


def make_server(service: RouterService) -> Server:
    if service.settings.server == "aiohttp":
        return AiohttpServer(service.handle, limits(service))
    return HttpServer(service.handle, limits(service))


async def serve(service: RouterService) -> None:
    """Run until SIGTERM/SIGINT, then drain, stop accepting, finish what is in flight."""
    settings = service.settings
    plans = service.registry.plans
    server = make_server(service)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = ServerTls(TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca))
    ingress = None
    if settings.grpc_port is not None:  # first: /readyz answering means both listen
        ingress = GrpcIngress(service, ModelMetadata())
        credentials = tls.grpc_credentials() if tls is not None else None
        bound = await ingress.start(
            settings.host,
            settings.grpc_port,
            reuse_port=settings.workers > 1,
            credentials=credentials,
        )
        log.info("serving gRPC (Open Inference Protocol) on %s:%d", settings.host, bound)
    await server.start(
        settings.host,
        settings.port,
        reuse_port=settings.workers > 1,
        tls=tls.context if tls is not None else None,
    )
    reloader = asyncio.ensure_future(_reload_tls(tls)) if tls is not None else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(service.registry.watch(settings.reload_interval))
    metrics = service.telemetry.metrics
    publisher = asyncio.ensure_future(metrics.publish()) if metrics is not None else None
    service.deadlines.start()
    log.info(
        "serving %s on %s:%d",
        ", ".join(p.name for p in plans) or "no graphs yet",
        settings.host,
        settings.port,
    )
    try:
        await stop.wait()
        service.draining = True
        log.info("signal received: draining for %.1f s", settings.drain_seconds)
        await asyncio.sleep(settings.drain_seconds)
        log.info("drained: no new connections; waiting for the requests in flight")
        if ingress is not None:
            await asyncio.gather(server.shutdown(), ingress.shutdown(_longest_write(service)))
        else:
            await server.shutdown()
    finally:
        if ingress is not None:
            await ingress.shutdown(0)
            await ingress.metadata.close()
        for task in (watcher, publisher, reloader):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        await service.deadlines.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("stopped")
