"""The predictors' commands: ``demo`` runs the embedded demo, ``predictor`` a local predictor.

``infergraph.cli`` (the distribution's command) calls ``register``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` and ``predictor`` to the distribution's command line."""
    d = sub.add_parser("demo", help="run the embedded demo: local predictors, router, requests")
    d.add_argument("--port", type=int, default=0, help="router port (default: a free one)")
    d.add_argument(
        "--graph",
        type=Path,
        default=None,
        help="a graph of the demo's shape (default: graphs/demo.yaml)",
    )
    d.set_defaults(run=run_demo)
    p = sub.add_parser("predictor", help="run a local predictor (demo, tests, benchmarks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--models", action="store_true", help="serve the iris scikit-learn models")
    p.set_defaults(run=run_predictor)


def run_demo(args: argparse.Namespace) -> int:
    from infergraph.predictors import demo  # noqa: PLC0415 - scikit-learn only when asked for

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    graph = args.graph if args.graph is not None else demo.DEMO_GRAPH
    return asyncio.run(demo.run_demo(router_port=args.port, graph=graph))


def run_predictor(args: argparse.Namespace) -> int:
    from infergraph.predictors import local  # noqa: PLC0415 - scikit-learn only when asked for

    logging.basicConfig(level=logging.INFO, format="%(message)s")

    argv = ["--host", args.host, "--port", str(args.port)] + (["--models"] if args.models else [])
    local.main(argv)
    return 0
