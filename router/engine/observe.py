"""Hooks through which tracing and metrics watch a request run, without the engine knowing them.

The engine calls an ``Observer`` (if the context has one) when a node starts and ends, when a
Switch or Splitter picks a step, when an Ensemble cancels branches, and when a resilience
policy acts (``policy_event``: retry, hedge, ejected, unhealthy, returned, fallback, shed,
budget_exhausted; the step is None for the graph's own shedding); and a request's
``CallWatcher`` when each step call starts and ends, with its outcome. Implementations live
outside the engine (``infergraph.router.observability``), so the engine imports no telemetry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from infergraph.router.engine.plan import NodePlan, StepPlan
    from infergraph.router.engine.transport import Reply, StepCall


class Observer(Protocol):
    def node_started(self, node: NodePlan) -> object: ...

    def node_finished(
        self, token: object, node: NodePlan, reply: Reply | None, error: BaseException | None
    ) -> None: ...

    def step_chosen(self, node: NodePlan, step: StepPlan, reason: str) -> None: ...

    def branches_cancelled(self, node: NodePlan, steps: Sequence[StepPlan]) -> None: ...

    def policy_event(
        self, step: StepPlan | None, event: str, detail: Mapping[str, object]
    ) -> None: ...


class CallWatcher(Protocol):
    """One request's view of its step calls: the recorder measures the time spent waiting on
    them, and each call's latency and outcome (step metrics)."""

    def call_started(self) -> float:
        """A call is sent; the time it started, given back to ``call_finished``."""
        ...

    def call_finished(
        self, call: StepCall, started: float, reply: Reply | None, error: BaseException | None
    ) -> None:
        """The call ended: with ``reply``, or raising ``error``."""
        ...


class Observers:
    """Several observers as one."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def node_started(self, node: NodePlan) -> object:
        return [o.node_started(node) for o in self.observers]

    def node_finished(
        self, token: object, node: NodePlan, reply: Reply | None, error: BaseException | None
    ) -> None:
        assert isinstance(token, list)
        for observer, own in zip(reversed(self.observers), reversed(token), strict=True):
            observer.node_finished(own, node, reply, error)

    def step_chosen(self, node: NodePlan, step: StepPlan, reason: str) -> None:
        for observer in self.observers:
            observer.step_chosen(node, step, reason)

    def branches_cancelled(self, node: NodePlan, steps: Sequence[StepPlan]) -> None:
        for observer in self.observers:
            observer.branches_cancelled(node, steps)

    def policy_event(self, step: StepPlan | None, event: str, detail: Mapping[str, object]) -> None:
        for observer in self.observers:
            observer.policy_event(step, event, detail)
