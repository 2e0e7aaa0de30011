"""An InferenceGraph's steps resolved against the Predictors they name (no I/O).

A step with ``serviceName`` refers to a Predictor in the same namespace; the operator fills in
that Predictor's inference endpoint (URL, protocol, model) before the router sees the graph.
Validation uses the router's own graph compiler, so the operator, the webhook and
``infergraph validate`` agree on what a valid graph is.
"""

from __future__ import annotations

import copy
from typing import Any

from infergraph.operator.resources import Endpoint
from infergraph.router.engine.errors import GraphSpecError
from infergraph.router.engine.plan import compile_plan
from infergraph.router.engine.spec import parse_spec

PLACEHOLDER = "http://{name}.predictor.invalid/"


def _service_steps(spec: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = spec.get("nodes") or {}
    return [
        step
        for node in nodes.values()
        if isinstance(node, dict)
        for step in node.get("steps") or []
        if isinstance(step, dict) and step.get("serviceName") and not step.get("nodeName")
    ]


def referenced_predictors(spec: dict[str, Any]) -> set[str]:
    """Predictor names the graph's steps refer to (steps without their own serviceUrl)."""
    return {s["serviceName"] for s in _service_steps(spec) if not s.get("serviceUrl")}


def resolve(spec: dict[str, Any], endpoints: dict[str, Endpoint]) -> dict[str, Any]:
    """A copy of ``spec`` whose serviceName steps call the named Predictors' endpoints."""
    resolved = copy.deepcopy(spec)
    for step in _service_steps(resolved):
        if step.get("serviceUrl"):
            continue
        endpoint = endpoints.get(step["serviceName"])
        if endpoint is None:
            continue
        step["serviceUrl"] = endpoint.url
        if endpoint.protocol is not None:
            step.setdefault("protocol", endpoint.protocol.value)
    return resolved


# The longest name a graph or Predictor may have, in either mode (an annotation moves it between
# them): Standard mode labels its pods app: isvc.<name>, and a label's value holds at most 63
# characters (a longer one failed every reconcile, unreported).
MAX_NAME = 63 - len("isvc.")


# Deeper than any valid graph (templates stop at 64 levels): a spec this deep is refused before
# anything recursive (copy.deepcopy, the compiler) reads it and runs out of stack.
MAX_SPEC_DEPTH = 100


def name_problem(name: str) -> str | None:
    """Why a graph's or Predictor's name is too long for the objects made for it, or None."""
    if len(name) <= MAX_NAME:
        return None
    return (
        f"the name is {len(name)} characters, over {MAX_NAME}: it is written into label "
        f"values (app: isvc.<name>), which Kubernetes holds to 63"
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` containers deep (read without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def problems(spec: dict[str, Any], name: str) -> list[str]:
    """Every reason the graph is invalid, worded as ``infergraph validate`` words them.

    Unresolved Predictor references are not problems here (the Predictor may come later); they
    are checked with placeholder URLs so everything else about the graph is still validated.
    """
    if _deeper_than(spec, MAX_SPEC_DEPTH):
        return [f"the spec nests over {MAX_SPEC_DEPTH} levels deep"]
    if (long := name_problem(name)) is not None:
        return [long]
    placeholders = {
        p: Endpoint(url=PLACEHOLDER.format(name=p)) for p in referenced_predictors(spec)
    }
    try:
        compile_plan(
            parse_spec(
                {
                    "spec": resolve(spec, placeholders),
                    "kind": "InferenceGraph",
                    "metadata": {"name": name},
                },
                default_name=name,
            )
        )
    except GraphSpecError as exc:
        return [str(p) for p in exc.problems] or [str(exc)]
    return []


def invalid_graph_message(problems: list[str]) -> str:
    """The message the webhook refuses an invalid graph with, and its Ready condition says."""
    return "invalid graph:\n" + "\n".join(f"  - {p}" for p in problems)
