"""The router's commands: ``router`` serves graphs, ``validate`` checks graph files.

``infergraph.cli`` (the distribution's command) calls ``register``. The router's settings are
built here, from flags and the environment, and passed in; nothing else in the router reads the
environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast, get_args

from infergraph.router.engine.errors import GraphSpecError
from infergraph.router.service.registry import load_file
from infergraph.router.settings import (
    MMAP_THRESHOLD,
    Auth,
    Client,
    GraphSource,
    GrpcClient,
    OtlpProtocol,
    RouterSettings,
    Server,
    SettingsError,
    SpanExport,
)

log = logging.getLogger("infergraph")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``router`` and ``validate`` to the distribution's command line."""
    p = sub.add_parser("router", help="serve InferenceGraphs over HTTP (a drop-in for KServe's)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--graph-json", help="the InferenceGraph spec as JSON (KServe's flag)")
    source.add_argument("--graph", type=Path, help="a graph file (YAML/JSON), hot-reloaded")
    source.add_argument("--graph-dir", type=Path, help="serve every graph file at /graphs/<name>")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="serve the Open Inference Protocol over gRPC on this port too (off unless given)",
    )
    tls = p.add_argument_group("TLS")
    tls.add_argument(
        "--tls-cert", type=Path, help="serve HTTPS (and gRPC over TLS) with this chain"
    )
    tls.add_argument("--tls-key", type=Path, help="the private key of --tls-cert")
    tls.add_argument("--tls-client-ca", type=Path, help="require client certificates from this CA")
    tls.add_argument("--upstream-ca", type=Path, help="verify https/grpcs steps against this CA")
    tls.add_argument("--upstream-client-cert", type=Path, help="client certificate for steps")
    tls.add_argument("--upstream-client-key", type=Path, help="its private key")
    auth = p.add_argument_group("client authentication")
    auth.add_argument("--auth", choices=get_args(Auth), default="none",
                      help="kubernetes: bearer tokens checked by TokenReview, access by "
                      "SubjectAccessReview on the graph's resource")  # fmt: skip
    auth.add_argument("--auth-api-url", help="the API server (default: in-cluster)")
    auth.add_argument("--auth-token-file", type=Path, help="the router's token for reviews")
    auth.add_argument("--auth-ca-file", type=Path, help="the API server's CA")
    auth.add_argument("--auth-namespace", help="the graph's namespace (default: the pod's)")
    auth.add_argument("--auth-resource", default="serving.kserve.io/inferencegraphs",
                      help="group/resource the review asks about")  # fmt: skip
    auth.add_argument("--auth-verb", default="get", help="the verb the review asks about")
    auth.add_argument("--auth-cache-seconds", type=float, default=10.0)
    auth.add_argument("--auth-probes", action="store_true",
                      help="probes and /metrics need a token too (default: open)")  # fmt: skip
    p.add_argument(
        "--grpc-max-message-bytes",
        type=int,
        default=8 * 1024 * 1024,
        help="gRPC messages above this are refused (default 8 MiB, as KServe)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="after SIGTERM, keep serving this long with /readyz at 503 (default 30, as KServe)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=32 * 1024 * 1024, help="413 above (default 32 MiB)"
    )
    p.add_argument("--reload-interval", type=float, default=1.0, help="graph file poll seconds")
    p.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        help="downstream connections per backend (scheme, host and port; default 1024)",
    )
    p.add_argument(
        "--pool-timeout",
        type=float,
        default=5.0,
        help="seconds a step call waits for a free connection to its backend, then 503 (default 5)",
    )
    p.add_argument(
        "--idle-connection-seconds",
        type=float,
        default=4.0,
        help="close pooled keep-alive connections idle this long (default 4, below uvicorn's 5)",
    )
    p.add_argument(
        "--max-header-bytes",
        type=int,
        default=1024 * 1024,
        help="request line and headers above this get 431 (default 1 MiB, as Go's net/http)",
    )
    p.add_argument(
        "--server",
        choices=get_args(Server),
        default="fast",
        help="HTTP server: the router's own on httptools (fast) or aiohttp's low-level server",
    )
    p.add_argument(
        "--list-graphs",
        action="store_true",
        help="name the graphs served in the 404 for an unknown graph (off: tenants stay private)",
    )
    p.add_argument(
        "--client",
        choices=get_args(Client),
        default="fast",
        help="downstream HTTP client: the router's own (fast) or aiohttp's ClientSession",
    )
    p.add_argument(
        "--grpc-client",
        choices=get_args(GrpcClient),
        default="fast",
        help="client for v2-grpc steps: the router's own HTTP/2 client (fast) or grpc.aio",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT), each with its own event loop",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    p.add_argument(
        "--access-log", action="store_true", help="log one line per request (errors always)"
    )
    p.add_argument(
        "--no-metrics", dest="metrics", action="store_false", help="do not serve /metrics"
    )
    p.add_argument(
        "--tracing",
        choices=("auto", "on", "off"),
        default="auto",
        help="OpenTelemetry tracing; auto: on when an OTEL_EXPORTER_OTLP_*ENDPOINT is set",
    )
    p.add_argument(
        "--span-export",
        choices=get_args(SpanExport),
        default="process",
        help="process (default): spans encoded to OTLP as they end, sent by a child process "
        "(network I/O off the event loop's GIL); process-sdk: pickled, rebuilt and encoded by "
        "the SDK in the child; thread: the SDK's BatchSpanProcessor in the router",
    )
    p.set_defaults(run=run_router)
    v = sub.add_parser("validate", help="check graph files; exit 1 if any is invalid")
    v.add_argument("files", nargs="+", type=Path)
    v.set_defaults(run=lambda args: validate(args.files))


def settings_from_args(args: argparse.Namespace) -> RouterSettings:
    return RouterSettings(
        source=GraphSource(
            graph_json=args.graph_json, graph_file=args.graph, graph_dir=args.graph_dir
        ),
        host=args.host,
        port=args.port,
        propagate_headers=os.environ.get("PROPAGATE_HEADERS"),
        drain_seconds=args.drain_seconds,
        max_body_bytes=args.max_body_bytes,
        mmap_threshold=None if allocator_tuned(os.environ) else MMAP_THRESHOLD,
        reload_interval=args.reload_interval,
        max_connections=args.max_connections,
        pool_timeout=args.pool_timeout,
        idle_connection_seconds=args.idle_connection_seconds,
        max_header_bytes=args.max_header_bytes,
        server=args.server,
        list_graphs=args.list_graphs,
        client=args.client,
        grpc_client=args.grpc_client,
        workers=args.workers,
        tracing=tracing_wanted(args.tracing, os.environ),
        span_export=args.span_export,
        # Checked against the choices when the settings are built.
        otlp_protocol=cast(
            OtlpProtocol,
            os.environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ),
        ),
        service_name=os.environ.get("OTEL_SERVICE_NAME"),
        metrics=args.metrics,
        access_log=args.access_log,
        grpc_port=args.grpc_port,
        grpc_max_message_bytes=args.grpc_max_message_bytes,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        upstream_ca=args.upstream_ca,
        upstream_client_cert=args.upstream_client_cert,
        upstream_client_key=args.upstream_client_key,
        **auth_settings(args, os.environ),
    )


SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def auth_settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """The authentication settings, in a pod defaulting to its service account's own."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    in_pod = args.auth == "kubernetes" and host is not None
    api_url = args.auth_api_url or (f"https://{host}:{port}" if in_pod else None)
    token, ca, namespace = args.auth_token_file, args.auth_ca_file, args.auth_namespace
    if in_pod and token is None:
        token = SERVICE_ACCOUNT / "token"
    if in_pod and ca is None:
        ca = SERVICE_ACCOUNT / "ca.crt"
    if namespace is None:
        found = SERVICE_ACCOUNT / "namespace"
        namespace = found.read_text().strip() if in_pod and found.exists() else "default"
    return {
        "auth": args.auth,
        "auth_api_url": api_url,
        "auth_token_file": token,
        "auth_ca_file": ca,
        "auth_namespace": namespace,
        "auth_resource": args.auth_resource,
        "auth_verb": args.auth_verb,
        "auth_cache_seconds": args.auth_cache_seconds,
        "auth_probes": args.auth_probes,
    }


def allocator_tuned(env: Mapping[str, str]) -> bool:
    """Whether the user set glibc's mmap threshold, which the router then leaves alone."""
    return "MALLOC_MMAP_THRESHOLD_" in env or "malloc.mmap_threshold" in env.get(
        "GLIBC_TUNABLES", ""
    )


def tracing_wanted(choice: str, env: Mapping[str, str]) -> bool:
    if choice != "auto":
        return choice == "on"
    if (
        env.get("OTEL_SDK_DISABLED", "").lower() == "true"
        or env.get("OTEL_TRACES_EXPORTER") == "none"
    ):
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def validate(files: list[Path]) -> int:
    status = 0
    for path in files:
        try:
            plan = load_file(path)
        except GraphSpecError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"ok {path}: {plan.summary()}")
        for warning in plan.warnings:
            print(f"  warning: {warning}")
    return status


def run_router(args: argparse.Namespace) -> int:
    # The serving stack (infergraph[router]) is imported only to serve: the operator's image
    # runs this command line without it.
    from infergraph.router.observability import logs  # noqa: PLC0415
    from infergraph.router.service import main  # noqa: PLC0415

    logs.configure(args.log_level, args.log_format == "json")
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    try:
        return main.run(settings)
    except GraphSpecError as exc:
        log.error("%s", exc)
        return 1
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
