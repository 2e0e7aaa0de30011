"""The operator's commands: ``operator`` runs the Kubernetes operator, ``crds`` writes the
CustomResourceDefinitions generated from the models.

``infergraph.cli`` (the distribution's command) calls ``register``. The operator configures its
own logging (plain text lines), not the router's.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from infergraph.operator import crds

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``operator`` and ``crds`` to the distribution's command line."""
    o = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    scope = o.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true", help="watch the whole cluster")
    o.add_argument("--router-image", default=None, help="image of the graph routers it deploys")
    o.add_argument("--otlp-endpoint", default=None, help="OTLP endpoint set on the routers")
    o.add_argument(
        "--default-deployment-mode",
        choices=("Serverless", "Standard", "RawDeployment"),
        default="Serverless",
        help="for graphs without the serving.kserve.io/deploymentMode annotation: Knative "
        "Services (Serverless, the default) or Deployments, Services and HPAs (Standard; "
        "RawDeployment is its former name)",
    )
    o.add_argument("--webhook-port", type=int, default=None, help="serve the admission webhook")
    o.add_argument("--webhook-host", default=None, help="host name the API server calls it at")
    o.add_argument("--webhook-addr", default=None, help="address the webhook server binds")
    o.add_argument("--webhook-cert", default=None, help="webhook TLS certificate (PEM)")
    o.add_argument("--webhook-key", default=None, help="webhook TLS private key (PEM)")
    o.add_argument(
        "--webhook-service",
        default=None,
        metavar="NAMESPACE/NAME",
        help="register the webhook as this Service (port 443) rather than as a URL: how the "
        "API server reaches an operator in the cluster",
    )
    o.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="the operator's and kopf's log level (default INFO)",
    )
    o.set_defaults(run=run_operator)
    c = sub.add_parser("crds", help="write the CustomResourceDefinitions from the models")
    c.add_argument("--out", type=Path, default=Path("deploy/crds"))
    c.set_defaults(run=write_crds)


def configure_logging(level: str) -> None:
    """One text line per record on stderr, replacing any handlers the root logger had."""
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)


def run_operator(args: argparse.Namespace) -> int:
    # kopf and the Kubernetes client are imported only when the operator runs, not by every
    # command of the distribution.
    from infergraph.operator import main  # noqa: PLC0415

    configure_logging(args.log_level)
    return main.run_operator(
        namespaces=args.namespace or [],
        clusterwide=args.all_namespaces,
        router_image=args.router_image,
        otlp_endpoint=args.otlp_endpoint,
        default_mode=args.default_deployment_mode,
        webhook_port=args.webhook_port,
        webhook_host=args.webhook_host,
        webhook_addr=args.webhook_addr,
        webhook_cert=args.webhook_cert,
        webhook_key=args.webhook_key,
        webhook_service=args.webhook_service,
        pod=os.environ.get("POD_ID"),
    )


def write_crds(args: argparse.Namespace) -> int:
    for path in crds.write_crds(args.out):
        print(f"wrote {path}")
    return 0
