"""The ``infergraph`` command: one sub-command family per part of the distribution.

``router`` and ``validate`` belong to the router, ``operator`` and ``crds`` to the operator,
``demo`` and ``predictor`` to the local predictors. Each part registers its own commands, so
no part imports another's to build the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from infergraph.operator import cli as operator_cli
from infergraph.predictors import cli as predictors_cli
from infergraph.router import cli as router_cli

PARTS = (router_cli.register, operator_cli.register, predictors_cli.register)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergraph", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in PARTS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
