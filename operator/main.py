"""Run the operator: build its handler registry and memo, and hand control to kopf."""

from __future__ import annotations

import asyncio

import kopf

from infergraph.operator import handlers, standard
from infergraph.operator.knative import ROUTER_IMAGE
from infergraph.operator.reconcile import OperatorSettings


def webhook_server(
    *,
    port: int | None,
    host: str | None = None,
    addr: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> kopf.WebhookServer | None:
    """The admission webhook's server, when a port is given (else no webhook is served)."""
    if port is None:
        return None
    return kopf.WebhookServer(addr=addr, port=port, host=host, certfile=cert, pkeyfile=key)


def run_operator(
    *,
    namespaces: list[str],
    clusterwide: bool,
    router_image: str | None,
    otlp_endpoint: str | None,
    default_mode: str = "Serverless",
    webhook_port: int | None = None,
    webhook_host: str | None = None,
    webhook_addr: str | None = None,
    webhook_cert: str | None = None,
    webhook_key: str | None = None,
) -> int:
    settings = OperatorSettings(
        router_image=router_image or ROUTER_IMAGE,
        otlp_endpoint=otlp_endpoint,
        default_mode=standard.MODES[default_mode],
    )
    admission = webhook_server(
        port=webhook_port, host=webhook_host, addr=webhook_addr, cert=webhook_cert, key=webhook_key
    )
    asyncio.run(
        kopf.operator(
            registry=handlers.build_registry(admission),
            memo=handlers.new_memo(settings),
            clusterwide=clusterwide or not namespaces,
            namespaces=namespaces,
            standalone=True,
        )
    )
    return 0
