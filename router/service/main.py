"""Start the router process: load graphs, build the transport, run the service on uvloop."""

from __future__ import annotations

import uvloop

from infergraph.router.http.factory import make_transport
from infergraph.router.observability import tracing
from infergraph.router.observability.metrics import RouterMetrics
from infergraph.router.observability.telemetry import Telemetry
from infergraph.router.service.app import RouterService, serve
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.settings import RouterSettings


def make_telemetry(settings: RouterSettings, registry: GraphRegistry) -> Telemetry:
    telemetry = Telemetry(access_log=settings.access_log)
    if settings.metrics:
        telemetry.metrics = RouterMetrics()
    if settings.tracing:
        plans = registry.plans
        default = plans[0].name if len(plans) == 1 else "infergraph-router"
        provider = tracing.make_provider(
            settings.service_name or default, tracing.make_exporter(settings.otlp_protocol)
        )
        telemetry.tracer = provider.get_tracer("infergraph.router")
        telemetry.shutdown = provider.shutdown
    return telemetry


async def _main(settings: RouterSettings, registry: GraphRegistry) -> None:
    transport = make_transport(settings)
    telemetry = make_telemetry(settings, registry)
    await transport.start()
    try:
        await serve(RouterService(settings, registry, transport, telemetry=telemetry))
    finally:
        await transport.close()
        telemetry.close()


def run(settings: RouterSettings) -> int:
    """Serve until signalled; raises ``GraphSpecError`` (exit 1) if the graph is invalid."""
    registry = GraphRegistry(settings.source)
    registry.load()
    uvloop.run(_main(settings, registry))
    return 0
