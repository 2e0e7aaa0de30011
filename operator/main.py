"""Run the operator: build its handler registry and memo, and hand control to kopf."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncGenerator
from typing import Any

import kopf

from infergraph.operator import handlers, standard
from infergraph.operator.knative import ROUTER_IMAGE
from infergraph.operator.reconcile import OperatorSettings


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, registered as a Service reference instead of a URL.

    In a cluster the API server reaches the operator through its Service: it resolves a
    ``service`` reference itself (to the Service's address, or to its endpoints), whereas a URL
    would need the API server's own resolver to know ``*.svc`` names, which it usually does not.
    """

    def __init__(self, *, service: str, service_port: int = 443, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        namespace, _, name = service.partition("/")
        if not namespace or not name:
            raise ValueError(f"--webhook-service must be NAMESPACE/NAME, not {service!r}")
        self.service = {"namespace": namespace, "name": name, "port": service_port}

    async def __call__(self, fn: Any) -> AsyncGenerator[Any, None]:
        async for config in super().__call__(fn):
            config.pop("url", None)
            config["service"] = {**self.service, "path": self.path or ""}  # type: ignore[typeddict-item]
            yield config


def webhook_server(
    *,
    port: int | None,
    host: str | None = None,
    addr: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    service: str | None = None,
) -> kopf.WebhookServer | None:
    """The admission webhook's server, when a port is given (else no webhook is served).

    With ``service`` (NAMESPACE/NAME) the API server calls it through that Service's port 443;
    otherwise at ``https://host:port``."""
    if port is None:
        return None
    if service is not None:
        return ServiceWebhookServer(
            service=service, addr=addr, port=port, host=host, certfile=cert, pkeyfile=key
        )
    return kopf.WebhookServer(addr=addr, port=port, host=host, certfile=cert, pkeyfile=key)


def identity(pod: str | None = None) -> str:
    """The operator's identity for kopf: the pod's name (``POD_ID``, as deploy/operator.yaml sets
    it), else host and process. Never the user name: kopf's own default looks it up in
    /etc/passwd, which has no entry for the image's uid 65532 (nor for OpenShift's random ones).
    """
    return pod or f"uid{os.getuid()}@{socket.gethostname()}/{os.getpid()}"


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
    webhook_service: str | None = None,
    pod: str | None = None,
) -> int:
    settings = OperatorSettings(
        router_image=router_image or ROUTER_IMAGE,
        otlp_endpoint=otlp_endpoint,
        default_mode=standard.MODES[default_mode],
    )
    admission = webhook_server(
        port=webhook_port,
        host=webhook_host,
        addr=webhook_addr,
        cert=webhook_cert,
        key=webhook_key,
        service=webhook_service,
    )
    asyncio.run(
        kopf.operator(
            registry=handlers.build_registry(admission),
            memo=handlers.new_memo(settings),
            clusterwide=clusterwide or not namespaces,
            namespaces=namespaces,
            standalone=True,
            identity=identity(pod),  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        )
    )
    return 0
