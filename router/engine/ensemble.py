"""Ensemble: every step runs concurrently on the node input; the replies merge into one object.

The result is ``{"<step name or index>": <step body>, ...}`` with status 200, soft failures
included. Each body must be a JSON object (or ``null``). A Hard step with a non-2xx status
decides the result (the first such step in step order) and the branches still running are
cancelled; any branch error fails the ensemble at once and cancels the rest.

With ``minSuccess: k`` (``join: any`` is k = 1) the ensemble answers as soon as k steps
succeeded and every Hard step did, cancels the rest, and merges only those successes (in step
order; of branches that finished at the same moment, the first in step order count). A Soft
step's failure, error or unmergeable body just does not count; a Hard step's failure decides the
result as above. Once k successes can no longer be reached, the ensemble fails as its last
failing step did (its reply, or its error).

Bodies are checked with ``jsontext.valid``, which is safe at any depth (a model echoing a client
body nested a million levels deep must not crash the router), and kept as they are.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from infergraph.router.engine import jsontext
from infergraph.router.engine.errors import EnsembleMergeError
from infergraph.router.engine.mapping import input_from_node
from infergraph.router.engine.transport import Reply

if TYPE_CHECKING:
    from infergraph.router.engine.context import ExecutionContext
    from infergraph.router.engine.payload import Payload
    from infergraph.router.engine.plan import NodePlan, StepPlan
    from infergraph.router.engine.steps import StepRunner

JSON = "application/json"


def object_body(step: StepPlan, reply: Reply) -> bytes:
    """The body if it is a JSON object or ``null``, else ``EnsembleMergeError``."""
    body = reply.body.strip()
    if body == b"null" or (body[:1] == b"{" and jsontext.valid(body)):
        return body
    kind = "empty" if not body else "not a JSON object"
    raise EnsembleMergeError(
        f"ensemble step {step.key!r} returned a body that is {kind} (status {reply.status})"
    )


def merge(keyed: list[tuple[str, bytes]]) -> bytes:
    """Concatenate already-validated JSON bodies into one object without re-encoding them."""
    parts = [jsontext.dumps(key) + b":" + body for key, body in keyed]
    return b"{" + b",".join(parts) + b"}"


async def run(
    node: NodePlan, payload: Payload, ctx: ExecutionContext, run_step: StepRunner, final: bool
) -> Reply:
    if node.min_success is not None:
        return await _quorum(node, node.min_success, payload, ctx, run_step)

    async def branch(step: StepPlan) -> tuple[Reply, bytes]:
        reply = await run_step(step, input_from_node(step.input, payload), ctx, False)
        return reply, object_body(step, reply)

    tasks = [asyncio.ensure_future(branch(step)) for step in node.steps]
    try:
        merged: list[tuple[str, bytes]] = []
        pending: set[asyncio.Future[tuple[Reply, bytes]]] = set(tasks)
        while True:
            # Results are taken in step order, so the first Hard failure in order decides.
            while len(merged) < len(tasks) and tasks[len(merged)].done():
                step = node.steps[len(merged)]
                reply, body = tasks[len(merged)].result()
                if step.hard and not reply.ok:
                    return Reply(reply.status, body, JSON)
                merged.append((step.key, body))
            if len(merged) == len(tasks):
                return Reply(200, merge(merged), JSON)
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                if finished.exception() is not None:
                    finished.result()  # a failing branch fails the ensemble now
    finally:
        await _cancel(node, dict(zip(tasks, node.steps, strict=True)), ctx)


async def _cancel(
    node: NodePlan, tasks: dict[asyncio.Future[Any], StepPlan], ctx: ExecutionContext
) -> None:
    """Cancel the branches still running (and say so), and retrieve every finished one's
    exception so none is reported as never retrieved."""
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.gather(*running, return_exceptions=True)
        if ctx.observer is not None:
            ctx.observer.branches_cancelled(node, [tasks[t] for t in running])
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # seen: a failure after the answer is not "never retrieved"


async def _quorum(
    node: NodePlan, needed: int, payload: Payload, ctx: ExecutionContext, run_step: StepRunner
) -> Reply:
    """Answer once ``needed`` steps (and every Hard step) succeeded."""
    tasks: dict[asyncio.Future[Reply], StepPlan] = {}
    for step in node.steps:
        branch = run_step(step, input_from_node(step.input, payload), ctx, False)
        tasks[asyncio.ensure_future(branch)] = step
    order = {step.key: step.index for step in node.steps}
    hard_waiting = {step.key for step in node.steps if step.hard}
    successes: dict[str, bytes] = {}
    failure: Reply | BaseException | None = None
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: tasks[t].index):
                step = tasks[task]
                error = task.exception()
                if error is not None:
                    if step.hard:
                        raise error
                    failure = error
                    continue
                reply = task.result()
                if not reply.ok:
                    if step.hard:
                        return Reply(reply.status, reply.body, reply.content_type)
                    failure = reply
                    continue
                try:
                    successes[step.key] = object_body(step, reply)
                except EnsembleMergeError as exc:
                    if step.hard:
                        raise
                    failure = exc
                    continue
                hard_waiting.discard(step.key)
                if len(successes) >= needed and not hard_waiting:
                    break  # enough: the rest that finished at once count as cancelled
            if len(successes) >= needed and not hard_waiting:
                keyed = sorted(successes.items(), key=lambda item: order[item[0]])
                return Reply(200, merge(keyed), JSON)
            if len(successes) + len(pending) < needed:
                break
    finally:
        await _cancel(node, tasks, ctx)
    if isinstance(failure, Reply):
        return Reply(failure.status, failure.body, failure.content_type)
    assert failure is not None
    raise failure
