"""The ``infergraph`` command: one sub-command family per part of the distribution.

``router`` and ``validate`` belong to the router, ``operator`` and ``crds`` to the operator,
``demo`` and ``predictor`` to the local predictors. Each part registers its own commands, so
no part imports another's to build the command line, and a part's dependencies (an extra:
``infergraph[router]``, ``infergraph[operator]``) are imported only when its command runs.
``infergraph --graph-json <spec>`` is ``infergraph router --graph-json <spec>``, as KServe's
controller runs its router image.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from infergraph.operator import cli as operator_cli
from infergraph.predictors import cli as predictors_cli
from infergraph.router import cli as router_cli

PARTS = (router_cli.register, operator_cli.register, predictors_cli.register)
COMMANDS = ("router", "validate", "operator", "crds", "demo", "predictor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in PARTS:
        register(sub)
    return parser


def kserve_form(argv: list[str]) -> list[str]:
    """KServe's controller starts a router image with its own arguments only (``--graph-json
    <spec>``), keeping the image's entrypoint: arguments that begin with an option other than
    help mean ``router``."""
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        return ["router", *argv]
    return argv


# The extra that installs each third-party package a command imports when it runs.
EXTRAS = {
    **dict.fromkeys(
        ("aiohttp", "uvloop", "httptools", "tritonclient", "grpc", "opentelemetry",
         "prometheus_client"),
        "router",
    ),
    **dict.fromkeys(("kopf", "kubernetes"), "operator"),
    "sklearn": "demo",
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(kserve_form(sys.argv[1:] if argv is None else argv))
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ModuleNotFoundError as error:
        extra = EXTRAS.get((error.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"infergraph {args.command}: {error.name} is not installed; this command needs "
            f"pip install 'infergraph[{extra}]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
