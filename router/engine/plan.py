"""Compile an InferenceGraph spec, once, into an immutable plan the engine walks per request.

Compilation resolves node references, compiles conditions, parses step URLs and checks weights.
Every problem is collected (not only the first) and raised together as ``GraphSpecError``, each
naming its node and step, so an invalid graph never reaches the request path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from infergraph.router.engine.conditions import (
    Condition,
    ConditionSyntaxError,
    compile_condition,
)
from infergraph.router.engine.errors import GraphSpecError, SpecProblem
from infergraph.router.engine.spec import InferenceGraphSpec, InferenceStep, NamedSpec, load_text
from infergraph.router.engine.transport import ServiceTarget, parse_target

ROOT = "root"


class RouterType(enum.StrEnum):
    SEQUENCE = "Sequence"
    SWITCH = "Switch"
    ENSEMBLE = "Ensemble"
    SPLITTER = "Splitter"


@dataclass(frozen=True, slots=True)
class StepPlan:
    """A compiled step. Exactly one of ``node`` and ``service`` is set."""

    index: int
    key: str
    node: NodePlan | None
    service: ServiceTarget | None
    data: Literal["$request", "$response"]
    condition: Condition | None
    weight: int
    hard: bool
    map_predictions_to_instances: bool


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    router_type: RouterType
    steps: tuple[StepPlan, ...]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; ``None`` means no limit."""

    server_read: float | None = 60.0
    server_write: float | None = 60.0
    server_idle: float | None = 180.0
    service_client: float | None = None


@dataclass(frozen=True, slots=True)
class GraphPlan:
    name: str
    root: NodePlan
    nodes: MappingProxyType[str, NodePlan]
    timeouts: Timeouts
    warnings: tuple[SpecProblem, ...] = field(default=())

    def summary(self) -> str:
        kinds = ", ".join(f"{n.name}:{n.router_type.value}" for n in self.nodes.values())
        steps = sum(len(n.steps) for n in self.nodes.values())
        return f"{self.name}: {len(self.nodes)} nodes ({kinds}), {steps} steps"


def _seconds(value: float | None, default: float | None) -> float | None:
    if value is None:
        return default
    return None if value == 0 else float(value)


def _timeouts(spec: InferenceGraphSpec) -> Timeouts:
    t = spec.router_timeouts
    if t is None:
        return Timeouts()
    return Timeouts(
        server_read=_seconds(t.server_read, 60.0),
        server_write=_seconds(t.server_write, 60.0),
        server_idle=_seconds(t.server_idle, 180.0),
        service_client=_seconds(t.service_client, None),
    )


def _step_label(index: int, step: InferenceStep) -> str:
    return f"{index} ({step.name!r})" if step.name else str(index)


class _Compiler:
    def __init__(self, spec: InferenceGraphSpec) -> None:
        self.spec = spec
        self.problems: list[SpecProblem] = []
        self.warnings: list[SpecProblem] = []
        self.built: dict[str, NodePlan] = {}
        self.visiting: list[str] = []
        self.failed: set[str] = set()

    def problem(self, message: str, node: str | None = None, step: str | None = None) -> None:
        self.problems.append(SpecProblem(message, node, step))

    def check_node_shape(self, name: str) -> None:
        router = self.spec.nodes[name]
        if router.router_type not in RouterType._value2member_map_:
            allowed = ", ".join(t.value for t in RouterType)
            self.problem(f"unknown routerType {router.router_type!r} (one of {allowed})", name)
        if not router.steps:
            self.problem(f"a {router.router_type} node needs at least one step", name)
        seen: dict[str, int] = {}
        for index, step in enumerate(router.steps):
            label = _step_label(index, step)
            if step.name:
                if step.name in seen:
                    self.problem(f"duplicate step name (also step {seen[step.name]})", name, label)
                seen.setdefault(step.name, index)
            self.check_step_shape(name, router.router_type, label, step)
        if router.router_type == RouterType.SPLITTER and router.steps:
            weights = [s.weight for s in router.steps]
            if all(w is not None for w in weights) and sum(w or 0 for w in weights) != 100:
                self.problem(
                    f"Splitter weights sum to {sum(w or 0 for w in weights)}, not 100", name
                )

    def check_step_shape(
        self, node: str, router_type: str, label: str, step: InferenceStep
    ) -> None:
        service = step.service_name or step.service_url
        if not step.node_name and not service:
            self.problem("no target: set one of nodeName, serviceName, serviceUrl", node, label)
        if step.node_name and service:
            self.problem("nodeName cannot be combined with serviceName/serviceUrl", node, label)
        if step.service_name and not step.service_url and not step.node_name:
            self.problem(
                f"serviceName {step.service_name!r} has no serviceUrl (nothing resolved it)",
                node,
                label,
            )
        if step.node_name and step.node_name not in self.spec.nodes:
            self.problem(f"nodeName {step.node_name!r} is not a node of this graph", node, label)
        if step.dependency not in (None, "", "Soft", "Hard"):
            self.problem(f"dependency {step.dependency!r} must be Soft or Hard", node, label)
        if step.data not in (None, "", "$request", "$response"):
            self.problem(f"data {step.data!r} must be $request or $response", node, label)
        if router_type == RouterType.SPLITTER:
            if step.weight is None:
                self.problem("a Splitter step needs a weight", node, label)
            elif step.weight < 0:
                self.problem(f"weight {step.weight} is negative", node, label)
        if router_type == RouterType.SWITCH and not step.condition:
            self.warnings.append(
                SpecProblem("Switch step without a condition never runs", node, label)
            )
        if step.service_url and not step.node_name:
            target = parse_target(step.service_url)
            if target.error:
                self.warnings.append(SpecProblem(f"calls will fail: {target.error}", node, label))

    def compile_condition(self, node: str, label: str, source: str | None) -> Condition | None:
        if not source:
            return None
        try:
            return compile_condition(source)
        except ConditionSyntaxError as exc:
            self.problem(str(exc), node, label)
            return None

    def build(self, name: str) -> NodePlan | None:
        """Build a node after the nodes it refers to; report a cycle once, where it closes."""
        if name in self.built:
            return self.built[name]
        if name in self.failed:
            return None
        if name in self.visiting:
            cycle = [*self.visiting[self.visiting.index(name) :], name]
            self.problem(f"cycle between nodes: {' -> '.join(cycle)}", name)
            return None
        router = self.spec.nodes.get(name)
        if router is None:
            return None
        self.visiting.append(name)
        steps: list[StepPlan] = []
        broken = False
        for index, step in enumerate(router.steps):
            label = _step_label(index, step)
            child = None
            if step.node_name:
                child = self.build(step.node_name)
                broken |= child is None
            condition = self.compile_condition(name, label, step.condition)
            service = parse_target(step.service_url) if step.service_url else None
            steps.append(
                StepPlan(
                    index=index,
                    key=step.name or str(index),
                    node=child,
                    service=None if step.node_name else service,
                    data="$response" if step.data == "$response" else "$request",
                    condition=condition,
                    weight=step.weight or 0,
                    hard=step.dependency == "Hard",
                    map_predictions_to_instances=step.map_predictions_to_instances,
                )
            )
        self.visiting.pop()
        if broken or router.router_type not in RouterType._value2member_map_:
            self.failed.add(name)
            return None
        plan = NodePlan(name=name, router_type=RouterType(router.router_type), steps=tuple(steps))
        self.built[name] = plan
        return plan


def compile_plan(named: NamedSpec, *, source: str | None = None) -> GraphPlan:
    """Compile a spec into a ``GraphPlan``, or raise ``GraphSpecError`` listing every problem."""
    spec = named.spec
    compiler = _Compiler(spec)
    if ROOT not in spec.nodes:
        compiler.problem(f"the graph has no node named {ROOT!r} (nodes: {', '.join(spec.nodes)})")
    for name in spec.nodes:
        compiler.check_node_shape(name)
    for name in spec.nodes:
        compiler.build(name)
    if compiler.problems:
        raise GraphSpecError(compiler.problems, source)
    reachable: set[str] = set()
    pending = [ROOT]
    while pending:
        node = compiler.built[pending.pop()]
        if node.name not in reachable:
            reachable.add(node.name)
            pending.extend(s.node.name for s in node.steps if s.node is not None)
    for name in spec.nodes:
        if name not in reachable:
            compiler.warnings.append(SpecProblem("not reachable from root", name))
    return GraphPlan(
        name=named.name,
        root=compiler.built[ROOT],
        nodes=MappingProxyType(dict(compiler.built)),
        timeouts=_timeouts(spec),
        warnings=tuple(compiler.warnings),
    )


def load_plan(text: str | bytes, *, default_name: str, source: str | None = None) -> GraphPlan:
    """Read and compile a graph from JSON or YAML text (bare spec or whole custom resource)."""
    return compile_plan(load_text(text, default_name=default_name, source=source), source=source)
