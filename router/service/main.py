"""Start the router process: load graphs, build the transport, run the service on uvloop."""

from __future__ import annotations

import uvloop

from infergraph.router.http.factory import make_transport
from infergraph.router.service.app import RouterService, serve
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.settings import RouterSettings


async def _main(settings: RouterSettings, registry: GraphRegistry) -> None:
    transport = make_transport(settings)
    await transport.start()
    try:
        await serve(RouterService(settings, registry, transport))
    finally:
        await transport.close()


def run(settings: RouterSettings) -> int:
    """Serve until signalled; raises ``GraphSpecError`` (exit 1) if the graph is invalid."""
    registry = GraphRegistry(settings.source)
    registry.load()
    uvloop.run(_main(settings, registry))
    return 0
