"""Checking and compiling a graph's resilience fields (retry, timeout, endpoints, hedge,
fallback, maxInFlight; defaultRetry, retryBudget, outlierDetection, timeout) into
``engine.policy`` values. Problems are reported through the compiler's ``problem`` callback,
each with its node and step, like every other problem of a graph."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from infergraph.router.engine.policy import (
    BudgetPolicy,
    OutlierPolicy,
    RetryPolicy,
)
from infergraph.router.engine.spec import (
    InferenceGraphSpec,
    InferenceRouter,
    InferenceStep,
    RetryConfig,
)
from infergraph.router.engine.transport import parse_target

Problem = Callable[..., None]  # problem(message, node=None, step=None)


@dataclass(frozen=True, slots=True)
class GraphPolicy:
    """The graph-wide settings: deadline (seconds), shedding, budget, outlier detection."""

    timeout: float | None = None
    max_in_flight: int | None = None
    budget: BudgetPolicy = field(default_factory=BudgetPolicy)
    outlier: OutlierPolicy = field(default_factory=OutlierPolicy)


def retry_policy(
    config: RetryConfig, problem: Problem, node: str | None = None, step: str | None = None
) -> RetryPolicy:
    where = "defaultRetry" if node is None else "retry"
    words: list[str] = list(config.retry_on) if config.retry_on is not None else ["5xx"]
    codes = config.retriable_status_codes or []
    for code in codes:
        if not 100 <= code <= 599:
            problem(f"{where}.retriableStatusCodes: {code} is not an HTTP status", node, step)
    if codes and "retriable-status-codes" not in words:
        problem(
            f"{where}.retriableStatusCodes needs 'retriable-status-codes' in retryOn", node, step
        )
    if "retriable-status-codes" in words and not codes:
        problem(f"{where}.retryOn 'retriable-status-codes' needs retriableStatusCodes", node, step)
    if config.initial_delay_ms > config.max_delay_ms:
        problem(
            f"{where}.initialDelayMs {config.initial_delay_ms} is above maxDelayMs "
            f"{config.max_delay_ms}",
            node,
            step,
        )
    return RetryPolicy(
        max_retries=config.max_retries,
        initial_delay_ms=config.initial_delay_ms,
        max_delay_ms=config.max_delay_ms,
        retry_on=frozenset(words),
        retriable_status_codes=frozenset(codes),
    )


def graph_policy(spec: InferenceGraphSpec, problem: Problem) -> GraphPolicy:
    budget = BudgetPolicy()
    if spec.retry_budget is not None:
        budget = BudgetPolicy(spec.retry_budget.percent, spec.retry_budget.min_retry_concurrency)
    outlier = OutlierPolicy()
    detection = spec.outlier_detection
    if detection is not None:
        outlier = OutlierPolicy(
            consecutive_5xx=detection.consecutive_5xx,
            consecutive_gateway_failure=detection.consecutive_gateway_failure,
            base_ejection_time_ms=detection.base_ejection_time_ms,
            max_ejection_time_ms=detection.max_ejection_time_ms,
            max_ejection_percent=detection.max_ejection_percent,
        )
        if detection.base_ejection_time_ms > detection.max_ejection_time_ms:
            problem(
                f"outlierDetection.baseEjectionTimeMs {detection.base_ejection_time_ms} is "
                f"above maxEjectionTimeMs {detection.max_ejection_time_ms}"
            )
    if spec.default_retry is not None:
        retry_policy(spec.default_retry, problem)
    return GraphPolicy(spec.timeout, spec.max_in_flight, budget, outlier)


def check_join(name: str, router: InferenceRouter, problem: Problem) -> None:
    """``join`` and ``minSuccess`` belong to Ensembles and must fit their steps."""
    if router.join is None and router.min_success is None:
        return
    if router.router_type != "Ensemble":
        problem("join and minSuccess belong to Ensemble nodes", name)
        return
    count = len(router.steps)
    k = router.min_success
    if k is None:
        return
    if k > count:
        problem(f"minSuccess {k} is more than the node's {count} steps", name)
    if router.join == "any" and k != 1:
        problem(f"join any answers on the first success: minSuccess {k} contradicts it", name)
    if router.join == "all" and k != count:
        problem(f"join all waits for every step: minSuccess {k} contradicts it", name)


def check_step(node: str, label: str, step: InferenceStep, problem: Problem) -> None:
    """The resilience fields' shape: where they may appear and how they combine."""
    service_only = {
        "retry": step.retry,
        "timeout": step.timeout,
        "endpoints": step.endpoints,
        "hedge": step.hedge,
        "maxInFlight": step.max_in_flight,
    }
    if step.node_name:
        for field, value in service_only.items():
            if value is not None:
                problem(f"{field} belongs on service steps, not nodeName", node, label)
    if step.retry is not None:
        retry_policy(step.retry, problem, node, label)
    if step.endpoints is not None:
        if step.service_url:
            problem("set serviceUrl or endpoints, not both", node, label)
        if not step.endpoints:
            problem("endpoints lists no URL", node, label)
        seen: set[str] = set()
        for url in step.endpoints:
            if url in seen:
                problem(f"endpoints lists {url!r} twice", node, label)
            seen.add(url)
            target = parse_target(url)
            if target.error:
                problem(f"endpoints: {target.error}", node, label)
    hedge, timeout = step.hedge, step.timeout
    if hedge is not None and timeout is not None and hedge.after_ms >= timeout * 1000:
        problem(
            f"hedge.afterMs {hedge.after_ms} is not below the step's timeout "
            f"({timeout} s): the hedge would never be sent",
            node,
            label,
        )
    fallback = step.fallback
    if fallback is not None:
        if bool(fallback.node_name) == bool(fallback.service_url):
            problem("fallback needs exactly one of nodeName and serviceUrl", node, label)
        if fallback.node_name and (fallback.protocol or fallback.model):
            problem("fallback: protocol and model belong with serviceUrl", node, label)
