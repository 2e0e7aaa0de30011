"""The ``infergraph`` command: ``router`` serves graphs, ``validate`` checks graph files,
``demo`` runs the embedded demo. Settings are built here, from flags and the environment, and
passed in; nothing else reads the environment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from infergraph.router.engine.errors import GraphSpecError
from infergraph.router.service.registry import load_file
from infergraph.router.settings import GraphSource, RouterSettings

log = logging.getLogger("infergraph")


def _router_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("router", help="serve InferenceGraphs over HTTP (a drop-in for KServe's)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--graph-json", help="the InferenceGraph spec as JSON (KServe's flag)")
    source.add_argument("--graph", type=Path, help="a graph file (YAML/JSON), hot-reloaded")
    source.add_argument("--graph-dir", type=Path, help="serve every graph file at /graphs/<name>")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
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
    p.add_argument("--max-connections", type=int, default=1024, help="downstream pool size")
    p.add_argument(
        "--client",
        choices=("fast", "aiohttp"),
        default="fast",
        help="downstream HTTP client: the router's own (fast) or aiohttp's ClientSession",
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
        choices=("process", "thread"),
        default="process",
        help="encode and send spans in a child process (default, off the event loop's GIL) or "
        "in a thread of the router (OpenTelemetry's BatchSpanProcessor)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _router_parser(sub)
    v = sub.add_parser("validate", help="check graph files; exit 1 if any is invalid")
    v.add_argument("files", nargs="+", type=Path)
    d = sub.add_parser("demo", help="run the embedded demo: local predictors, router, requests")
    d.add_argument("--port", type=int, default=0, help="router port (default: a free one)")
    o = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    scope = o.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch the whole cluster")
    o.add_argument("--router-image", default=None, help="image of the graph routers it deploys")
    o.add_argument("--otlp-endpoint", default=None, help="OTLP endpoint set on the routers")
    o.add_argument("--webhook-port", type=int, default=None, help="serve the admission webhook")
    o.add_argument("--webhook-host", default=None, help="host name the API server calls it at")
    o.add_argument("--webhook-addr", default=None, help="address the webhook server binds")
    o.add_argument("--webhook-cert", default=None, help="webhook TLS certificate (PEM)")
    o.add_argument("--webhook-key", default=None, help="webhook TLS private key (PEM)")
    c = sub.add_parser("crds", help="write the CustomResourceDefinitions from the models")
    c.add_argument("--out", type=Path, default=Path("deploy/crds"))
    p = sub.add_parser("predictor", help="run a local predictor (demo, tests, benchmarks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--models", action="store_true", help="serve the iris scikit-learn models")
    return parser


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
        reload_interval=args.reload_interval,
        max_connections=args.max_connections,
        client=args.client,
        workers=args.workers,
        tracing=tracing_wanted(args.tracing, os.environ),
        span_export=args.span_export,
        otlp_protocol=os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ),
        service_name=os.environ.get("OTEL_SERVICE_NAME"),
        metrics=args.metrics,
        access_log=args.access_log,
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


def run_router(settings: RouterSettings) -> int:
    from infergraph.router.service.main import run

    try:
        return run(settings)
    except GraphSpecError as exc:
        log.error("%s", exc)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "validate":
        return validate(args.files)
    if args.command == "crds":
        from infergraph.operator.crds import write_crds

        for path in write_crds(args.out):
            print(f"wrote {path}")
        return 0
    from infergraph.router.observability import logs

    logs.configure(
        getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text") == "json"
    )
    if args.command == "router":
        if args.workers < 1 or (args.workers > 1 and args.port == 0):
            log.error("--workers needs a number from 1, and a fixed --port when above 1")
            return 2
        return run_router(settings_from_args(args))
    if args.command == "operator":
        from infergraph.operator.main import run_operator

        return run_operator(
            namespaces=args.namespace or [],
            clusterwide=args.all_namespaces,
            router_image=args.router_image,
            otlp_endpoint=args.otlp_endpoint,
            webhook_port=args.webhook_port,
            webhook_host=args.webhook_host,
            webhook_addr=args.webhook_addr,
            webhook_cert=args.webhook_cert,
            webhook_key=args.webhook_key,
        )
    if args.command == "predictor":
        from infergraph.predictors import local

        argv = ["--host", args.host, "--port", str(args.port)] + (
            ["--models"] if args.models else []
        )
        local.main(argv)
        return 0
    from infergraph.predictors.demo import run_demo

    return asyncio.run(run_demo(router_port=args.port))


if __name__ == "__main__":
    sys.exit(main())
