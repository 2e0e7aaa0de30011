"""Compile an InferenceGraph spec, once, into an immutable plan the engine walks per request.

Compilation resolves node references, compiles conditions, parses step URLs and checks weights.
Every problem is collected (not only the first) and raised together as ``GraphSpecError``, each
naming its node and step, so an invalid graph never reaches the request path.

Nodes may nest ``MAX_NESTING`` levels deep: the engine runs a nested node as a nested coroutine,
and some 330 levels would exhaust Python's recursion limit on every request (KServe's Go router
has no such limit, but no real graph comes near it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from infergraph.router.engine import policy_compile
from infergraph.router.engine.conditions import (
    Condition,
    ConditionSyntaxError,
    compile_condition,
)
from infergraph.router.engine.errors import GraphSpecError, SpecProblem
from infergraph.router.engine.mapping import (
    MappingSyntaxError,
    StepInput,
    compile_outputs_to_inputs,
    compile_selection,
    compile_template,
)
from infergraph.router.engine.policy import NO_RETRY, RetryPolicy
from infergraph.router.engine.policy_compile import GraphPolicy
from infergraph.router.engine.runtime import GraphRuntime, ReplicaSet
from infergraph.router.engine.spec import InferenceGraphSpec, InferenceStep, NamedSpec, load_text
from infergraph.router.engine.tensors import carries_tensors
from infergraph.router.engine.transport import ServiceTarget, parse_target
from infergraph.router.protocols import (
    OPENAI_CHAT,
    OPENAI_COMPLETIONS,
    Protocol,
    inference_path,
    parse_grpc_model_path,
)

ROOT = "root"
MAX_NESTING = 100


class RouterType(enum.StrEnum):
    SEQUENCE = "Sequence"
    SWITCH = "Switch"
    ENSEMBLE = "Ensemble"
    SPLITTER = "Splitter"


@dataclass(frozen=True, slots=True)
class StepPlan:
    """A compiled step. Exactly one of ``node`` and ``service`` is set.

    ``chat_service`` is the chat endpoint of an ``openai`` step given a base URL; the engine
    picks it for requests that carry ``messages``.
    """

    index: int
    key: str
    node: NodePlan | None
    service: ServiceTarget | None
    input: StepInput
    condition: Condition | None
    weight: int
    hard: bool
    protocol: Protocol | None = None
    model: str | None = None
    model_version: str | None = None
    chat_service: ServiceTarget | None = None
    owner: str = ""  # the name of the node this step belongs to
    # Retries, replicas, hedging, fallback, bulkhead; None on a step without any (the plain
    # path, exactly KServe's).
    policy: StepPolicy | None = None


@dataclass(frozen=True, slots=True)
class StepPolicy:
    """A step's resilience, compiled. ``label`` ("node/step") keys its running state."""

    label: str
    retry: RetryPolicy = NO_RETRY
    timeout: float | None = None  # per attempt, seconds; None: routerTimeouts.serviceClient
    replicas: tuple[StepTarget, ...] = ()  # endpoints; empty: the step's own service
    hedge_after: float | None = None  # seconds
    fallback: StepPlan | None = None
    fallback_label: str = ""  # how the response header names the fallback
    max_in_flight: int | None = None


@dataclass(frozen=True, slots=True)
class StepTarget:
    """Where a service step sends its requests, compiled from ``serviceUrl`` and ``protocol``."""

    service: ServiceTarget | None = None
    chat_service: ServiceTarget | None = None
    protocol: Protocol | None = None
    model: str | None = None
    model_version: str | None = None

    def fields(self) -> dict[str, Any]:
        """As ``StepPlan``'s keyword arguments."""
        return {
            "service": self.service,
            "chat_service": self.chat_service,
            "protocol": self.protocol,
            "model": self.model,
            "model_version": self.model_version,
        }


NO_SERVICE = StepTarget()


@dataclass(frozen=True, slots=True)
class NodePlan:
    name: str
    router_type: RouterType
    steps: tuple[StepPlan, ...]
    # Steps of a Sequence whose replies a later step selects (``$steps.<name>``): only these
    # are kept once the next step has run, so large bodies are not held longer than needed.
    referenced: frozenset[str] = frozenset()
    # The index of a Sequence's last step that reads the node input; after it, the graph's
    # own input is released (``Payload.release``). Other router types: -1, unused.
    last_input_step: int = -1
    # An Ensemble answers once this many steps succeeded (join any: 1); None: every step.
    min_success: int | None = None


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
    # True when some step speaks the OpenAI protocol, so "stream": true in a request matters.
    streams: bool = False
    policy: GraphPolicy = field(default_factory=GraphPolicy)
    # True when some step has a policy or the graph a timeout or maxInFlight: requests then
    # keep the running state's counts.
    resilient: bool = False
    # True when a binary OIP request can run through the graph as it is (engine.tensors).
    carries_tensors: bool = False
    # The one mutable part: requests in flight, bulkheads, replica health (engine.runtime).
    runtime: GraphRuntime = field(default_factory=GraphRuntime, compare=False)

    def summary(self) -> str:
        kinds = ", ".join(f"{n.name}:{n.router_type.value}" for n in self.nodes.values())
        steps = sum(len(n.steps) for n in self.nodes.values())
        binary = "; binary tensors over gRPC ingress" if self.carries_tensors else ""
        return f"{self.name}: {len(self.nodes)} nodes ({kinds}), {steps} steps{binary}"


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


def _ignore(message: str, node: str | None = None, step: str | None = None) -> None:
    """A problem reported already (the shape checks ran first)."""


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
        self.graph_policy = policy_compile.graph_policy(spec, self.problem)
        self.runtime = GraphRuntime(budget=self.graph_policy.budget)

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
        policy_compile.check_join(name, router, self.problem)
        if router.router_type == RouterType.SPLITTER and router.steps:
            weights = [s.weight for s in router.steps]
            if all(w is not None for w in weights) and sum(w or 0 for w in weights) != 100:
                self.problem(
                    f"Splitter weights sum to {sum(w or 0 for w in weights)}, not 100", name
                )

    def check_step_shape(
        self, node: str, router_type: str, label: str, step: InferenceStep
    ) -> None:
        service = step.service_name or step.service_url or step.endpoints
        if not step.node_name and not service:
            self.problem(
                "no target: set one of nodeName, serviceName, serviceUrl, endpoints", node, label
            )
        if step.node_name and service:
            self.problem("nodeName cannot be combined with serviceName/serviceUrl", node, label)
        if step.service_name and not (step.service_url or step.endpoints) and not step.node_name:
            self.problem(
                f"serviceName {step.service_name!r} has no serviceUrl (nothing resolved it)",
                node,
                label,
            )
        if step.node_name and step.node_name not in self.spec.nodes:
            self.problem(f"nodeName {step.node_name!r} is not a node of this graph", node, label)
        if step.dependency not in (None, "", "Soft", "Hard"):
            self.problem(f"dependency {step.dependency!r} must be Soft or Hard", node, label)
        if step.protocol is not None and step.protocol not in Protocol._value2member_map_:
            allowed = ", ".join(p.value for p in Protocol)
            self.problem(f"unknown protocol {step.protocol!r} (one of {allowed})", node, label)
        if step.node_name and (step.protocol or step.model):
            self.problem("protocol and model belong on service steps, not nodeName", node, label)
        policy_compile.check_step(node, label, step, self.problem)
        fallback = step.fallback
        if fallback is not None and fallback.node_name not in (None, *self.spec.nodes):
            self.problem(
                f"fallback nodeName {fallback.node_name!r} is not a node of this graph", node, label
            )
        if fallback is not None and fallback.protocol not in (None, *Protocol._value2member_map_):
            self.problem(f"fallback: unknown protocol {fallback.protocol!r}", node, label)
        if step.request is not None and step.data not in (None, "", "$request"):
            self.problem("set either data or request, not both", node, label)
        if step.outputs_to_inputs is not False and step.map_predictions_to_instances:
            self.problem(
                "outputsToInputs (v2) and mapPredictionsToInstances (v1) exclude each other",
                node,
                label,
            )
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

    def compile_input(
        self, node: str, router_type: str, label: str, step: InferenceStep, earlier: list[str]
    ) -> StepInput:
        try:
            data = None
            if step.data and step.data != "$request":
                data = compile_selection(step.data)
            template = compile_template(step.request) if step.request is not None else None
            step_input = StepInput(
                data=data,
                template=template,
                outputs_to_inputs=compile_outputs_to_inputs(step.outputs_to_inputs),
                map_predictions_to_instances=step.map_predictions_to_instances,
            )
        except MappingSyntaxError as exc:
            self.problem(str(exc), node, label)
            return StepInput()
        for selection in step_input.selections:
            if selection.root != "request" and router_type != RouterType.SEQUENCE:
                self.problem(
                    f"{selection.source}: only Sequence steps have earlier responses", node, label
                )
            if selection.root == "steps" and selection.step not in earlier:
                self.problem(
                    f"{selection.source}: {selection.step!r} is not an earlier step of this node",
                    node,
                    label,
                )
        return step_input

    def compile_target(self, node: str, label: str, step: InferenceStep) -> StepTarget:
        if step.node_name or not step.service_url:
            return NO_SERVICE
        target = parse_target(step.service_url)
        if step.protocol is None or step.protocol not in Protocol._value2member_map_:
            if target.scheme.startswith("grpc"):
                self.problem("a grpc:// URL needs protocol: v2-grpc", node, label)
            return StepTarget(service=target)
        protocol = Protocol(step.protocol)
        model, version = step.model, step.model_version
        chat = None
        bare = target.path in ("", "/")
        if protocol is Protocol.V2_GRPC:
            if not target.scheme.startswith("grpc"):
                self.problem("protocol v2-grpc needs a grpc://host:port URL", node, label)
            path_model, path_version = parse_grpc_model_path(target.path)
            model, version = model or path_model, version or path_version
            if not model:
                self.problem(
                    "protocol v2-grpc needs a model (model: NAME or grpc://host:port/v2/models/NAME)",
                    node,
                    label,
                )
        elif target.scheme.startswith("grpc"):
            self.problem(f"protocol {protocol} speaks HTTP: use an http(s):// URL", node, label)
        elif protocol is Protocol.OPENAI and bare:
            target, chat = target.with_path(OPENAI_COMPLETIONS), target.with_path(OPENAI_CHAT)
        elif bare:
            if not model:
                self.problem(
                    f"protocol {protocol} on a base URL needs a model (or give the full URL)",
                    node,
                    label,
                )
            else:
                target = target.with_path(inference_path(protocol, model, version))
        return StepTarget(target, chat, protocol, model, version)

    def compile_policy(
        self, node: str, label: str, index: int, key: str, step: InferenceStep
    ) -> StepPolicy | None:
        """The step's resilience; None when it has none (its shape was checked already)."""
        service = not step.node_name
        config = step.retry if step.retry is not None else None
        if config is None and service:
            config = self.spec.default_retry
        replicas = tuple(
            self.compile_target(node, label, step.model_copy(update={"service_url": url}))
            for url in step.endpoints or ()
        )
        fallback = self.compile_fallback(node, label, index, key, step)
        hedge = step.hedge.after_ms / 1000.0 if step.hedge is not None else None
        # With the graph's timeout, every service step is bounded by what is left of it.
        deadline = service and self.spec.timeout is not None
        if (
            not (config or fallback or step.timeout or replicas or hedge or step.max_in_flight)
            and not deadline
        ):
            return None
        retry = policy_compile.retry_policy(config, _ignore) if config is not None else NO_RETRY
        if replicas:
            self.runtime.replicas[f"{node}/{key}"] = ReplicaSet(
                len(replicas), self.graph_policy.outlier
            )
        described = ""
        if step.fallback is not None:
            described = step.fallback.service_url or f"node {step.fallback.node_name}"
        return StepPolicy(
            label=f"{node}/{key}",
            retry=retry,
            timeout=step.timeout,
            replicas=replicas,
            hedge_after=hedge,
            fallback=fallback,
            fallback_label=described,
            max_in_flight=step.max_in_flight,
        )

    def compile_fallback(
        self, node: str, label: str, index: int, key: str, step: InferenceStep
    ) -> StepPlan | None:
        """The fallback as a step of the same node, given the step's own input."""
        target = step.fallback
        if target is None or bool(target.node_name) == bool(target.service_url):
            return None
        common = {
            "index": index,
            "key": f"{key}.fallback",
            "input": StepInput(),
            "condition": None,
            "weight": 0,
            "hard": False,
            "owner": node,
        }
        if target.node_name:
            if target.node_name in self.visiting:
                loop = [*self.visiting[self.visiting.index(target.node_name) :], target.node_name]
                self.problem(f"fallback would loop: {' -> '.join(loop)}", node, label)
                return None
            child = self.build(target.node_name)
            if child is None:
                return None
            return StepPlan(node=child, service=None, **common)  # type: ignore[arg-type]
        own = InferenceStep.model_validate(
            {
                "serviceUrl": target.service_url,
                "protocol": target.protocol,
                "model": target.model,
                "modelVersion": target.model_version,
            }
        )
        compiled = self.compile_target(node, label, own)
        policy = None
        if target.timeout is not None or self.spec.timeout is not None:
            # Bounded as a service step is: by its timeout and what is left of the deadline.
            policy = StepPolicy(label=f"{node}/{key}.fallback", timeout=target.timeout)
        return StepPlan(node=None, policy=policy, **compiled.fields(), **common)  # type: ignore[arg-type]

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
        if len(self.visiting) >= MAX_NESTING:
            chain = " -> ".join([*self.visiting[:3], "...", *self.visiting[-2:], name])
            self.problem(f"nodes nest more than {MAX_NESTING} levels deep: {chain}", name)
            self.failed.add(name)
            return None
        self.visiting.append(name)
        steps: list[StepPlan] = []
        broken = False
        earlier: list[str] = []
        for index, step in enumerate(router.steps):
            label = _step_label(index, step)
            child = None
            if step.node_name:
                child = self.build(step.node_name)
                broken |= child is None
            step_input = self.compile_input(name, router.router_type, label, step, earlier)
            key = step.name or str(index)
            earlier.append(key)
            target = self.compile_target(name, label, step)
            policy = self.compile_policy(name, label, index, key, step)
            if policy is not None and policy.replicas:
                target = policy.replicas[0]
            if step.fallback is not None and (policy is None or policy.fallback is None):
                broken = True
            steps.append(
                StepPlan(
                    index=index,
                    key=key,
                    node=child,
                    input=step_input,
                    condition=self.compile_condition(name, label, step.condition),
                    weight=step.weight or 0,
                    hard=step.dependency == "Hard",
                    owner=name,
                    policy=policy,
                    **target.fields(),
                )
            )
        self.visiting.pop()
        if broken or router.router_type not in RouterType._value2member_map_:
            self.failed.add(name)
            return None
        referenced = frozenset(
            selection.step
            for step_plan in steps
            for selection in step_plan.input.selections
            if selection.root == "steps" and selection.step is not None
        )
        last_input_step = -1
        if router.router_type == RouterType.SEQUENCE.value:
            last_input_step = max(
                (s.index for s in steps if s.index == 0 or s.input.reads_node_input), default=-1
            )
        min_success = router.min_success
        if router.join == "any":
            min_success = 1
        elif min_success == len(steps):
            min_success = None
        plan = NodePlan(
            name=name,
            router_type=RouterType(router.router_type),
            steps=tuple(steps),
            referenced=referenced,
            last_input_step=last_input_step,
            min_success=min_success,
        )
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
        raise GraphSpecError(list(dict.fromkeys(compiler.problems)), source)
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
    nodes = MappingProxyType(dict(compiler.built))
    graph_policy = compiler.graph_policy
    if spec.outlier_detection is not None and not compiler.runtime.replicas:
        compiler.warnings.append(SpecProblem("outlierDetection: no step has endpoints"))
    resilient = (
        graph_policy.timeout is not None
        or graph_policy.max_in_flight is not None
        or any(s.policy is not None for n in nodes.values() for s in n.steps)
    )
    return GraphPlan(
        name=named.name,
        root=compiler.built[ROOT],
        nodes=nodes,
        timeouts=_timeouts(spec),
        warnings=tuple(compiler.warnings),
        streams=any(s.protocol is Protocol.OPENAI for n in nodes.values() for s in n.steps),
        policy=graph_policy,
        resilient=resilient,
        carries_tensors=carries_tensors(compiler.built[ROOT]),
        runtime=compiler.runtime,
    )


def load_plan(text: str | bytes, *, default_name: str, source: str | None = None) -> GraphPlan:
    """Read and compile a graph from JSON or YAML text (bare spec or whole custom resource)."""
    return compile_plan(load_text(text, default_name=default_name, source=source), source=source)
