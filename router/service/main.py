"""Start the router process: load graphs, build the transport, run the service on uvloop."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import tempfile
from functools import partial
from pathlib import Path

import uvloop

from infergraph.router.http.factory import make_transport
from infergraph.router.observability import span_export
from infergraph.router.observability.metrics import RouterMetrics, SharedMetrics
from infergraph.router.observability.telemetry import Telemetry
from infergraph.router.service.auth import AuthSettings, KubernetesAuth
from infergraph.router.service.handler import RouterService
from infergraph.router.service.lifecycle import serve
from infergraph.router.service.memory import pin_mmap_threshold
from infergraph.router.service.registry import GraphRegistry
from infergraph.router.service.workers import run_workers
from infergraph.router.settings import RouterSettings, SettingsError


def make_telemetry(settings: RouterSettings, registry: GraphRegistry) -> Telemetry:
    telemetry = Telemetry(access_log=settings.access_log)
    if settings.metrics:
        telemetry.metrics = RouterMetrics()
        if settings.metrics_dir is not None:
            telemetry.metrics.shared = SharedMetrics(settings.metrics_dir)
    if settings.tracing:
        plans = registry.plans
        default = plans[0].name if len(plans) == 1 else "infergraph-router"
        name = settings.service_name or default
        tracer, shutdown = span_export.make_tracer(
            settings.span_export, settings.otlp_protocol, name
        )
        telemetry.tracer = tracer
        telemetry.shutdown = shutdown
    return telemetry


def make_auth(settings: RouterSettings) -> KubernetesAuth | None:
    if settings.auth != "kubernetes":
        return None
    assert settings.auth_api_url is not None  # checked with the settings
    return KubernetesAuth(
        AuthSettings(
            api_url=settings.auth_api_url,
            token_file=settings.auth_token_file,
            ca_file=settings.auth_ca_file,
            namespace=settings.auth_namespace,
            resource=settings.auth_resource,
            verb=settings.auth_verb,
            cache_seconds=settings.auth_cache_seconds,
            protect_probes=settings.auth_probes,
        )
    )


async def _main(settings: RouterSettings, registry: GraphRegistry) -> None:
    transport = make_transport(settings)
    telemetry = make_telemetry(settings, registry)
    auth = make_auth(settings)
    await transport.start()
    try:
        await serve(RouterService(settings, registry, transport, telemetry=telemetry, auth=auth))
    finally:
        await transport.close()
        telemetry.close()
        if auth is not None:
            await auth.close()


def run(settings: RouterSettings) -> int:
    """Serve until signalled; raises ``GraphSpecError`` (exit 1) if the graph is invalid.

    With ``settings.workers`` above 1, that many forked workers share the port."""
    if settings.mmap_threshold is not None:
        pin_mmap_threshold(settings.mmap_threshold)
    registry = GraphRegistry(settings.source, list_graphs=settings.list_graphs)
    registry.load()
    # Everything loaded so far (modules, plans) lives as long as the process: keep it out of
    # the collector's full passes, which otherwise stall requests for tens of milliseconds (and,
    # with workers, out of the pages a collection would copy after the fork).
    gc.collect()
    gc.freeze()

    if settings.workers > 1:
        try:
            shared = Path(tempfile.mkdtemp(prefix="infergraph-metrics-"))
        except OSError as error:
            # A read-only root filesystem (as KServe runs router pods) without a volume there.
            raise SettingsError(
                f"--workers {settings.workers} keeps the workers' shared metrics in a temporary "
                f"directory (TMPDIR, else /tmp), and none can be written ({error}): mount a "
                "writable volume (an emptyDir at /tmp) or point TMPDIR at one"
            ) from error
        settings = dataclasses.replace(settings, metrics_dir=shared)
        try:
            return run_workers(settings.workers, partial(serve_one, settings, registry))
        finally:
            shutil.rmtree(shared, ignore_errors=True)
    return serve_one(settings, registry)


def serve_one(settings: RouterSettings, registry: GraphRegistry) -> int:
    uvloop.run(_main(settings, registry))
    return 0
