"""Calling a step that has a policy: its bulkhead, its replicas, retries with backoff, one
hedge, the per-attempt timeout within the graph's deadline, and its fallback.

A step without a policy never comes here (``steps.run_step`` calls the transport directly, as
KServe's router would). The rules, in order:

1. ``maxInFlight``: past it the call fails at once with ``StepOverloaded`` (503).
2. With ``endpoints`` and a fallback, a step whose every replica is failing goes straight to
   the fallback (``NoHealthyReplica``).
3. Each attempt goes to a replica chosen by ``runtime.ReplicaSet.pick`` (another one for a
   retry when there is one) and is bounded by the step's ``timeout`` (or
   ``routerTimeouts.serviceClient``) and by what is left of the graph's ``timeout``.
4. A hedge: when the only attempt in flight has not answered after ``hedge.afterMs``, one more
   is sent; the first answer that is not a retriable failure wins, the other is cancelled.
5. A retriable failure with nothing else in flight is retried after a fully jittered
   exponential backoff, while retries remain, the retry budget allows it and the backoff ends
   before the graph's deadline. Otherwise the last failure stands.
6. A failure that stands (a 5xx status or an error of the step call) goes to the fallback,
   if there is one; the context notes which target answered.

A streamed reply is committed once its first chunk arrived: a stream that breaks before that is
a reset, and retried like one; after that nothing is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from infergraph.router.engine.errors import (
    DeadlineExceeded,
    GraphRequestError,
    GraphTimeout,
    NoHealthyReplica,
    StepOverloaded,
    StepTimeout,
    UpstreamTimeout,
)
from infergraph.router.engine.policy import Failure, failure_of
from infergraph.router.engine.transport import Reply

if TYPE_CHECKING:
    from infergraph.router.engine.context import ExecutionContext
    from infergraph.router.engine.payload import Payload
    from infergraph.router.engine.plan import StepPlan, StepPolicy, StepTarget
    from infergraph.router.engine.runtime import ReplicaSet


@dataclass(frozen=True, slots=True)
class Attempt:
    """How ``send`` makes one call: to which replica (None: the step's own service), within
    how many seconds, which attempt it is and whether it is a hedge."""

    replica: StepTarget | None = None
    seconds: float | None = None
    number: int = 1
    hedge: bool = False


# send(step, payload, ctx, final, attempt): one call to the transport.
Send = Callable[["StepPlan", "Payload", "ExecutionContext", bool, Attempt], Awaitable[Reply]]
StepRunner = Callable[["StepPlan", "Payload", "ExecutionContext", bool], Awaitable[Reply]]


def graph_timeout(ctx: ExecutionContext) -> GraphTimeout:
    """The 504 of a graph whose ``timeout`` ran out, naming what was running."""
    running = ", ".join(sorted(set(ctx.running or ()))) or "none (between steps)"
    return GraphTimeout(f"the graph's timeout of {ctx.timeout} s ran out; running: step {running}")


def _falls_back(error: GraphRequestError) -> bool:
    return error.status >= 500 and not isinstance(error, DeadlineExceeded | GraphTimeout)


async def run(
    step: StepPlan,
    payload: Payload,
    ctx: ExecutionContext,
    final: bool,
    *,
    send: Send,
    run_step: StepRunner,
) -> Reply:
    """Run a step that has a policy (``step.policy``), its fallback included."""
    policy = step.policy
    running, fallbacks = ctx.running, ctx.fallbacks
    assert policy is not None
    assert running is not None
    assert fallbacks is not None
    running.append(policy.label)  # what a GraphTimeout names while this step runs
    try:
        outcome = await _Loop(step, policy, payload, ctx, final, send).primary(run_step)
    finally:
        running.remove(policy.label)
    if isinstance(outcome, Reply):
        return outcome
    reason = outcome
    assert policy.fallback is not None
    if ctx.observer is not None:
        ctx.observer.policy_event(
            step, "fallback", {"reason": reason, "target": policy.fallback_label}
        )
    fallbacks.append(f"{policy.label}={policy.fallback_label}")
    return await run_step(policy.fallback, payload, ctx, final)


@dataclass(slots=True)
class _Attempt:
    replica: int | None
    budgeted: bool  # a retry or hedge: counted in the retry budget while in flight


@dataclass(slots=True)
class _Outcome:
    reply: Reply | None
    error: GraphRequestError | None
    retriable: bool


class _Loop:
    """The attempts of one step call."""

    def __init__(  # noqa: PLR0917 (one call site: run's own arguments)
        self,
        step: StepPlan,
        policy: StepPolicy,
        payload: Payload,
        ctx: ExecutionContext,
        final: bool,
        send: Send,
    ) -> None:
        self.step, self.policy, self.payload, self.ctx = step, policy, payload, ctx
        self.final, self.send = final, send
        assert ctx.runtime is not None
        self.runtime = ctx.runtime
        self.replicas: ReplicaSet | None = self.runtime.replicas.get(policy.label)
        self.running: dict[asyncio.Task[Reply], _Attempt] = {}
        self.tried: list[int] = []
        self.started = 0
        self.last_start = 0.0

    def pick(self) -> int | None:
        """The replica for the next attempt (None: the step's one service), counted as
        outstanding."""
        replicas = self.replicas
        if replicas is None:
            return None
        ctx = self.ctx
        replica, back = replicas.pick(ctx.rng, ctx.clock(), self.tried)
        if back:
            self._changed(back, "returned")
        self.tried.append(replica)
        replicas.replicas[replica].outstanding += 1
        return replica

    def launch(self, *, budgeted: bool, hedge: bool, reserved: bool = False) -> asyncio.Task[Reply]:
        """Start an attempt as a task; ``reserved``: its place in the budget is taken."""
        replica = self.pick()
        self.started += 1
        if budgeted and not reserved:
            self.runtime.retries_in_flight += 1
        self.last_start = self.ctx.clock()
        task = asyncio.ensure_future(self.attempt(replica, self.started, hedge))
        self.running[task] = _Attempt(replica, budgeted)
        return task

    def _changed(self, replicas: list[int], kind: str, seconds: float = 0.0) -> None:
        observer = self.ctx.observer
        if observer is None or self.replicas is None:
            return
        for index in replicas:
            observer.policy_event(
                self.step,
                kind,
                {
                    "replica": index,
                    "url": _url(self.policy.replicas[index]),
                    "seconds": seconds,
                    "ejected": self.replicas.ejected_count(),
                },
            )

    def prepare(self, replica: int | None, number: int, hedge: bool) -> tuple[Attempt, bool]:
        """How attempt ``number`` calls ``replica``: within the step's timeout and what is
        left of the graph's (True when the latter bounds it); GraphTimeout when none is."""
        ctx, policy = self.ctx, self.policy
        target = policy.replicas[replica] if replica is not None else None
        timeout = policy.timeout if policy.timeout is not None else ctx.service_timeout
        by_deadline = False
        if ctx.deadline is not None:
            remaining = ctx.deadline - ctx.clock()
            if remaining <= 0:
                raise graph_timeout(ctx)
            if timeout is None or remaining < timeout:
                timeout, by_deadline = remaining, True
        return Attempt(target, timeout, number, hedge), by_deadline

    def timed_out(
        self, error: UpstreamTimeout, by_deadline: bool, number: int
    ) -> GraphRequestError:
        """What an attempt whose call timed out fails with: the graph's 504 when its deadline
        bounded the call, the step's when its own ``timeout`` did."""
        if by_deadline:
            return graph_timeout(self.ctx)
        if self.policy.timeout is not None:
            return StepTimeout(
                f"step {self.policy.label}: no answer within its timeout of "
                f"{self.policy.timeout} s (attempt {number})"
            )
        return error

    async def attempt(self, replica: int | None, number: int, hedge: bool) -> Reply:
        """One attempt, as a task's coroutine (``inline`` makes one in the step's own task)."""
        attempt, by_deadline = self.prepare(replica, number, hedge)
        try:
            reply = await self.send(self.step, self.payload, self.ctx, self.final, attempt)
        except UpstreamTimeout as exc:
            failure = self.timed_out(exc, by_deadline, number)
            if failure is exc:
                raise
            raise failure from exc
        if reply.stream is not None and reply.ok:
            return await _committed(reply)
        return reply

    def settle(self, task: asyncio.Task[Reply]) -> _Outcome:
        """A finished attempt task's outcome, counted for its replica and the budget."""
        attempt = self.running.pop(task)
        if attempt.budgeted:
            self.runtime.retries_in_flight -= 1
        error = task.exception()
        return self.judge(attempt.replica, None if error is not None else task.result(), error)

    def judge(
        self, replica: int | None, reply: Reply | None, error: BaseException | None
    ) -> _Outcome:
        """An attempt's outcome (its reply or its error): retriable or not, and counted for
        its replica's health. An error that is no outcome (a bug) is raised."""
        retry = self.policy.retry
        status: int | None = None
        failure: Failure | None = None
        if reply is not None:
            status = reply.status
            outcome = _Outcome(reply, None, retry.retries_status(status))
            if status >= 500:
                failure = Failure.STATUS
        elif isinstance(error, GraphRequestError):
            failure = failure_of(error)
            outcome = _Outcome(None, error, failure is not None and retry.retries(failure))
        else:  # a bug, not an outcome: nothing to count
            outcome = _Outcome(None, None, False)
        replicas = self.replicas
        if replica is not None and replicas is not None:
            replicas.replicas[replica].outstanding -= 1
            if not isinstance(error, GraphTimeout):
                change = replicas.record(replica, self.ctx.clock(), status, failure)
                if change is not None:
                    self._changed([change.replica], change.kind, change.seconds)
        if outcome.reply is None and outcome.error is None:
            assert error is not None
            raise error
        return outcome

    async def cancel_all(self) -> None:
        tasks = list(self.running)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if task in self.running:
                attempt = self.running.pop(task)
                self._release(attempt.replica, budgeted=attempt.budgeted)
                if not task.cancelled() and task.exception() is None:
                    stream = task.result().stream
                    if stream is not None:
                        await stream.aclose()

    async def primary(self, run_step: StepRunner) -> Reply | str:
        """The step's own answer, or why its fallback must answer instead."""
        step, policy = self.step, self.policy
        try:
            if step.node is not None:
                reply = await run_step(step, self.payload, self.ctx, self.final)
            elif policy.max_in_flight is None:
                reply = await self.attempts()
            else:
                reply = await self.bulkhead(policy.max_in_flight)
        except GraphRequestError as error:
            if policy.fallback is None or not _falls_back(error):
                raise
            return error.cause
        if policy.fallback is None or reply.status < 500:
            return reply
        if reply.stream is not None:
            await reply.stream.aclose()
        return f"status {reply.status}"

    async def bulkhead(self, limit: int) -> Reply:
        """The attempts, within the step's ``maxInFlight``."""
        step, policy, runtime = self.step, self.policy, self.runtime
        in_flight = runtime.in_flight
        count = in_flight.get(policy.label, 0)
        if count >= limit:
            if self.ctx.observer is not None:
                self.ctx.observer.policy_event(step, "shed", {"in_flight": count, "limit": limit})
            raise StepOverloaded(
                f"step {policy.label} has {count} calls in flight, its maxInFlight: not queued"
            )
        in_flight[policy.label] = count + 1
        try:
            return await self.attempts()
        finally:
            in_flight[policy.label] -= 1

    def attempts(self) -> Awaitable[Reply]:
        """Attempts until one answers for good, or the last failure stands (the rules above):
        the coroutine that makes them (no frame of its own in between)."""
        policy = self.policy
        replicas = self.replicas
        can_skip = replicas is not None and policy.fallback is not None  # to the fallback
        if can_skip and replicas is not None and not replicas.healthy(self.ctx.clock()):
            raise NoHealthyReplica(f"step {policy.label}: every replica is failing")
        if policy.hedge_after is None:
            return self.serial()
        return self.hedged(policy.hedge_after)

    async def serial(self) -> Reply:
        """One attempt at a time, in this task (no hedge: nothing runs beside it)."""
        retries = 0
        while True:
            replica, reply, error = await self.inline(budgeted=retries > 0)
            if retries:
                self.runtime.retries_in_flight -= 1
            outcome = self.judge(replica, reply, error)
            if not outcome.retriable:
                return _result(outcome)
            retries += 1
            if not await self.retry(retries, outcome, launch=False):
                return _result(outcome)

    async def inline(
        self, *, budgeted: bool
    ) -> tuple[int | None, Reply | None, GraphRequestError | None]:
        """One attempt awaited in this task: its replica and its reply or failure. Ended by
        anything else (a cancellation), its counts are given back (``budgeted``: its place in
        the retry budget too) and that is raised."""
        replica = self.pick()
        self.started = number = self.started + 1
        by_deadline = False
        try:
            attempt, by_deadline = self.prepare(replica, number, False)
            reply = await self.send(self.step, self.payload, self.ctx, self.final, attempt)
            if reply.stream is not None and reply.ok:
                reply = await _committed(reply)
            return replica, reply, None
        except UpstreamTimeout as exc:
            failure = self.timed_out(exc, by_deadline, number)
            if failure is not exc:
                failure.__cause__ = exc
            return replica, None, failure
        except GraphRequestError as failed:
            return replica, None, failed
        except BaseException:
            self._release(replica, budgeted=budgeted)
            raise

    def _release(self, replica: int | None, *, budgeted: bool) -> None:
        """An attempt that ended in no outcome (cancelled, or not waited for): its counts
        given back."""
        if budgeted:
            self.runtime.retries_in_flight -= 1
        if replica is not None and self.replicas is not None:
            self.replicas.replicas[replica].outstanding -= 1

    async def hedged(self, hedge_after: float) -> Reply:
        """The first attempt, awaited in this task, with a timer for the hedge; tasks only
        from when the hedge goes out or the first attempt must be retried.

        When the hedge's time comes, it runs as a task beside the first attempt; a hedge that
        answers for good first interrupts this task (a cancellation of our own, taken back
        with ``uncancel``) and its outcome stands."""
        watch = _HedgeWatch(self)
        loop, timers = self.ctx.loop(), self.runtime.timers
        timer = timers.at(loop, loop.time() + hedge_after, watch.fire)
        try:
            replica, reply, error = await self.inline(budgeted=False)
        except asyncio.CancelledError:  # its counts given back by inline
            timers.cancel(timer)
            won = watch.won
            if won is not None and watch.main.uncancel() == 0:  # the hedge's answer came
                await self.cancel_all()
                if isinstance(won, BaseException):
                    raise won from None
                return _result(won)
            watch.waiting = False
            await self._drop(won)
            raise
        except BaseException:
            timers.cancel(timer)
            watch.waiting = False
            await self.cancel_all()
            raise
        # No await since the attempt ended: the hedge cannot have interrupted it.
        watch.waiting = False
        timers.cancel(timer)
        try:
            outcome = self.judge(replica, reply, error)
        except BaseException:
            await self.cancel_all()
            raise
        if not outcome.retriable:
            if self.running:
                await self.cancel_all()
            return _result(outcome)
        return await self.tasks(None if watch.fired else hedge_after, outcome)

    async def _drop(self, won: _Outcome | BaseException | None) -> None:
        """A hedge's winning reply that nobody will read, closed; the other attempts
        cancelled."""
        if isinstance(won, _Outcome) and won.reply is not None:
            stream = won.reply.stream
            if stream is not None:
                await stream.aclose()
        await self.cancel_all()

    async def tasks(self, hedge_after: float | None, last: _Outcome | None) -> Reply:
        """Attempts as tasks, after a first attempt that failed (retriable) or whose hedge
        is running (in ``self.running``)."""
        ctx = self.ctx
        retries = 0
        try:
            while True:
                if not self.running:
                    retries += 1
                    if not await self.retry(retries, last):
                        break
                wait_for = None
                if hedge_after is not None and len(self.running) == 1:
                    wait_for = max(0.0, self.last_start + hedge_after - ctx.clock())
                done = await _first_done(self.running, wait_for)
                if not done:  # the hedge's time came
                    hedge_after = None
                    self.hedge()
                    continue
                for task in done:
                    outcome = self.settle(task)
                    if not outcome.retriable:
                        return _result(outcome)
                    last = outcome
        finally:
            await self.cancel_all()
        assert last is not None
        return _result(last)

    def hedge(self) -> asyncio.Task[Reply] | None:
        """Send the hedge, if the budget allows it: its task."""
        observer = self.ctx.observer
        if not self.runtime.retry_allowed():
            if observer is not None:
                observer.policy_event(self.step, "budget_exhausted", {"for": "hedge"})
            return None
        if observer is not None:
            observer.policy_event(self.step, "hedge", {"attempt": self.started + 1})
        return self.launch(budgeted=True, hedge=True)

    async def retry(self, number: int, last: _Outcome | None, *, launch: bool = True) -> bool:
        """Back off and send retry ``number`` (``launch``: as a task; else the caller makes
        it, its place in the budget taken); False when no retry is left, the budget is spent,
        or the backoff would end past the graph's deadline."""
        ctx, retry, observer = self.ctx, self.policy.retry, self.ctx.observer
        if number > retry.max_retries:
            return False
        if not self.runtime.retry_allowed():
            if observer is not None:
                observer.policy_event(self.step, "budget_exhausted", {"for": "retry"})
            return False
        delay = retry.backoff(number, ctx.rng.random())
        if ctx.deadline is not None and ctx.clock() + delay >= ctx.deadline:
            return False
        if observer is not None:
            detail = {"attempt": self.started + 1, "delay_ms": delay * 1000, "reason": _why(last)}
            observer.policy_event(self.step, "retry", detail)
        # The retry holds its place in the budget from now: the backoff included.
        self.runtime.retries_in_flight += 1
        try:
            await asyncio.sleep(delay)
        except BaseException:
            self.runtime.retries_in_flight -= 1
            raise
        if launch:
            self.launch(budgeted=True, hedge=False, reserved=True)
        return True


class _HedgeWatch:
    """The hedge beside a first attempt that runs in the step's own task: sends it when its
    time comes, and interrupts that task when the hedge answers for good first."""

    def __init__(self, loop: _Loop) -> None:
        main = asyncio.current_task(loop.ctx.loop())
        assert main is not None
        self.attempts, self.main = loop, main
        self.waiting = True  # the first attempt is still being awaited
        self.fired = False
        self.won: _Outcome | BaseException | None = None  # the hedge's outcome that stands

    def fire(self) -> None:
        self.fired = True
        task = self.attempts.hedge()
        if task is not None:
            task.add_done_callback(self.done)

    def done(self, task: asyncio.Task[Reply]) -> None:
        if not self.waiting or task not in self.attempts.running:
            return  # the first attempt moved on: the task loop settles the hedge
        try:
            outcome = self.attempts.settle(task)
        except BaseException as bug:  # raised again in the main task
            self.won = bug
        else:
            if outcome.retriable:
                return  # the first attempt may still answer
            self.won = outcome
        self.waiting = False
        self.main.cancel()


async def _first_done(
    tasks: dict[asyncio.Task[Reply], _Attempt], within: float | None
) -> list[asyncio.Task[Reply]]:
    """The tasks done once one is, or after ``within`` seconds (then maybe none):
    ``asyncio.wait``'s FIRST_COMPLETED with one waiter and no set bookkeeping."""
    done = [task for task in tasks if task.done()]
    if done:
        return done
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for task in tasks:
        task.add_done_callback(wake)
    timer = loop.call_later(within, wake) if within is not None else None
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()
        for task in tasks:
            task.remove_done_callback(wake)
    return [task for task in tasks if task.done()]


def _result(outcome: _Outcome) -> Reply:
    if outcome.error is not None:
        raise outcome.error
    assert outcome.reply is not None
    return outcome.reply


def _why(outcome: _Outcome | None) -> str:
    if outcome is None:
        return ""
    if outcome.reply is not None:
        return f"status {outcome.reply.status}"
    assert outcome.error is not None
    return outcome.error.cause


def _url(target: StepTarget) -> str:
    return target.service.url if target.service is not None else ""


async def _committed(reply: Reply) -> Reply:
    """The stream's first chunk read, so a stream that breaks before it is a failed attempt."""
    stream = reply.stream
    assert stream is not None
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:  # a reset (retriable), or the attempt cancelled
        await stream.aclose()
        raise
    return Reply(reply.status, b"", reply.content_type, _prepended(first, stream), reply.attempts)


async def _prepended(
    first: bytes | None, rest: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    try:
        if first is None:
            return
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()
