"""The router process's lifecycle: the listening socket, signals, the drain and the background
tasks (graph reload, metrics publishing, the deadline sweep) around one ``RouterService``."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress

from aiohttp import web, web_server

from infergraph.router.service.handler import RouterService

log = logging.getLogger("infergraph.router")


async def serve(service: RouterService) -> None:
    """Run until SIGTERM/SIGINT, then drain: readyz turns 503, requests finish, then exit."""
    settings = service.settings
    plans = service.registry.plans
    idle = plans[0].timeouts.server_idle if len(plans) == 1 else 180.0
    server = web_server.Server(
        service.handle,
        handler_cancellation=True,
        keepalive_timeout=idle if idle is not None else 3600.0,
        access_log=None,
    )
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner,
        settings.host,
        settings.port,
        shutdown_timeout=max(settings.drain_seconds, 1.0),
        reuse_port=settings.workers > 1 or None,
    )
    await site.start()
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
    finally:
        for task in (watcher, publisher):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        await service.deadlines.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("stopped")
