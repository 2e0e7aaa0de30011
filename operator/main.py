"""Run the operator: configure the handlers and hand control to kopf."""

from __future__ import annotations

import asyncio

import kopf

from infergraph.operator import handlers
from infergraph.operator.knative import ROUTER_IMAGE
from infergraph.operator.reconcile import OperatorSettings


def run_operator(
    *,
    namespaces: list[str],
    clusterwide: bool,
    router_image: str | None,
    otlp_endpoint: str | None,
    webhook_port: int | None = None,
    webhook_host: str | None = None,
    webhook_addr: str | None = None,
    webhook_cert: str | None = None,
    webhook_key: str | None = None,
) -> int:
    handlers.configure(
        OperatorSettings(router_image=router_image or ROUTER_IMAGE, otlp_endpoint=otlp_endpoint)
    )
    if webhook_port is not None:
        handlers.register_admission(
            kopf.WebhookServer(
                addr=webhook_addr,
                port=webhook_port,
                host=webhook_host,
                certfile=webhook_cert,
                pkeyfile=webhook_key,
            )
        )
    asyncio.run(
        kopf.operator(
            clusterwide=clusterwide or not namespaces,
            namespaces=namespaces,
            standalone=True,
        )
    )
    return 0
