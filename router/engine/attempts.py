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

from infergraph.router.engine.context import running_task
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
    from infergraph.router.engine.plan import StepPlan, StepTarget
    from infergraph.router.engine.runtime import ReplicaSet


# send(step, payload, ctx, final, replica, seconds, number, hedge): one call to the transport,
# to ``replica`` (None: the step's own service) within ``seconds``, as attempt ``number``.
Send = Callable[
    ["StepPlan", "Payload", "ExecutionContext", bool, "StepTarget | None", float | None, int, bool],
    Awaitable[Reply],
]
StepRunner = Callable[["StepPlan", "Payload", "ExecutionContext", bool], Awaitable[Reply]]


def graph_timeout(ctx: ExecutionContext, label: str) -> GraphTimeout:
    """The 504 of a graph whose ``timeout`` ran out while step ``label`` ran (every service
    step of such a graph has a policy, so the step that meets the deadline names itself)."""
    return GraphTimeout(f"the graph's timeout of {ctx.timeout} s ran out; running: step {label}")


def _falls_back(error: GraphRequestError) -> bool:
    return error.status >= 500 and not isinstance(error, DeadlineExceeded | GraphTimeout)


@dataclass(slots=True)
class _Attempt:
    replica: int | None
    budgeted: bool  # a retry or hedge: counted in the retry budget while in flight


@dataclass(slots=True)
class _Outcome:
    """An attempt's outcome that does not stand as it is: a failure, or a reply that may be
    retried (``retriable``). A reply that stands is the ``Reply`` itself."""

    reply: Reply | None
    error: GraphRequestError | None
    retriable: bool


# A hedge's outcome that stands, or the error (a bug) raised again in the step's own task.
_Won = Reply | _Outcome | BaseException


class StepAttempts:
    """The attempts of one call to a step that has a policy (``step.policy``), its fallback
    included: ``StepAttempts(...).run()``, a coroutine with no frame of its own in between.
    Also the hedge beside the first attempt (``fire``, and ``hedge_done`` when the hedge
    answers while the first attempt is still awaited)."""

    __slots__ = (
        "ctx",
        "final",
        "fired",
        "last_start",
        "main",
        "payload",
        "policy",
        "replicas",
        "run_step",
        "running",
        "runtime",
        "send",
        "started",
        "step",
        "tried",
        "waiting",
        "won",
    )

    tried: list[int]  # the replicas tried, in order (set by ``run`` for a step with some)
    started: int  # attempts made (set by ``run``)
    last_start: float  # when the last attempt task was launched (set by ``launch``)
    # Set by ``run``, for a hedged first attempt only.
    main: asyncio.Task[object] | None  # the step's own task
    waiting: bool  # the first attempt is still being awaited
    fired: bool  # the hedge's time came
    won: _Won | None  # the hedge's outcome that stands

    def __init__(  # noqa: PLR0917 (one call site, steps.run_step, on every call)
        self,
        step: StepPlan,
        payload: Payload,
        ctx: ExecutionContext,
        final: bool,
        send: Send,
        run_step: StepRunner,
    ) -> None:
        policy = step.policy
        assert policy is not None
        self.step, self.policy, self.payload, self.ctx = step, policy, payload, ctx
        self.final, self.send, self.run_step = final, send, run_step
        runtime = ctx.runtime
        assert runtime is not None
        self.runtime = runtime
        self.replicas: ReplicaSet | None = (
            runtime.replicas.get(policy.label) if policy.replicas else None
        )
        self.running: dict[asyncio.Task[Reply], _Attempt] = {}

    async def run(self) -> Reply:  # noqa: PLR0915 (the first attempt written out: see below)
        """The step's own answer, within its bulkhead, or its fallback's.

        The first attempt is awaited here, in the step's own task, with a timer for the hedge
        (``fire``): one frame between the step and its call, as without a policy. Tasks
        come only when the hedge goes out or the first attempt must be retried (``after``).
        A hedge that answers for good first interrupts this task (a cancellation of our
        own, taken back with ``uncancel``) and its outcome stands (``first_failed``)."""
        step, policy, ctx = self.step, self.policy, self.ctx
        admitted = False
        try:
            if step.node is not None:
                reply = await self.run_step(step, self.payload, ctx, self.final)
            else:
                # What follows, to the call, is written out rather than in helpers: it runs
                # on every call (``pick``, ``prepare`` and ``judge`` say the same at length).
                limit = policy.max_in_flight
                if limit is not None:
                    in_flight = self.runtime.in_flight
                    count = in_flight.get(policy.label, 0)
                    if count >= limit:
                        raise self.shed(count, limit)
                    in_flight[policy.label] = count + 1
                    admitted = True
                replicas = self.replicas
                replica = None
                if replicas is None:
                    pass
                elif not replicas.out:  # every replica in: ``pick``'s common case
                    replica = replicas.any(ctx.rng)
                    self.tried = [replica]
                elif policy.fallback is not None and not replicas.healthy(ctx.clock()):
                    raise NoHealthyReplica(f"step {policy.label}: every replica is failing")
                else:
                    self.tried = []
                    replica = self.pick()
                self.started = 1
                hedge_after = policy.hedge_after
                hedged = hedge_after is not None
                deadline = ctx.deadline
                now = 0.0 if hedge_after is None and deadline is None else ctx.clock()
                if hedge_after is not None:  # the hedge's timer (``fire``)
                    loop = ctx.event_loop or ctx.loop()
                    self.main = running_task(loop)
                    self.waiting, self.fired, self.won = True, False, None
                    self.runtime.timers.at(loop, now + hedge_after, self)
                seconds = None
                try:
                    seconds = self.prepare(now)
                    target = None if replica is None else policy.replicas[replica]
                    reply = await self.send(
                        step, self.payload, ctx, self.final, target, seconds, 1, False
                    )
                    if reply.stream is not None and reply.ok:
                        reply = await _committed(reply)
                except BaseException as exc:
                    reply = await self.first_failed(exc, replica, seconds, hedged)
                else:
                    if hedged:
                        # No await since the attempt ended: the hedge cannot have
                        # interrupted it.
                        self.runtime.timers.cancel(self)
                        self.waiting = False
                    if (
                        reply.status < 500
                        and not policy.retry.retriable_status_codes
                        and not self.running
                    ):  # it stands: ``judge``'s common case
                        if replica is not None and replicas is not None:
                            replicas.answered(replica, ctx.clock)
                    else:
                        reply = await self.after(self.judge(replica, reply, None), hedged)
        except GraphRequestError as error:
            if policy.fallback is None or not _falls_back(error):
                raise
            reason = error.cause
        else:
            if policy.fallback is None or reply.status < 500:
                return reply
            if reply.stream is not None:
                await reply.stream.aclose()
            reason = f"status {reply.status}"
        finally:
            if admitted:
                self.runtime.in_flight[policy.label] -= 1
        if ctx.observer is not None:
            ctx.observer.policy_event(
                step, "fallback", {"reason": reason, "target": policy.fallback_label}
            )
        if ctx.fallbacks is None:
            ctx.fallbacks = []
        ctx.fallbacks.append(f"{policy.label}={policy.fallback_label}")
        fallback = policy.fallback
        if fallback.policy is not None:  # its ``timeout``, or the graph's deadline
            return await StepAttempts(
                fallback, self.payload, ctx, self.final, self.send, self.run_step
            ).run()
        return await self.run_step(fallback, self.payload, ctx, self.final)

    async def first_failed(
        self, error: BaseException, replica: int | None, seconds: float | None, hedged: bool
    ) -> Reply:
        """What follows a first attempt ended by ``error``: its failure judged, or a hedge's
        answer that interrupted it; anything else raised again."""
        if isinstance(error, asyncio.CancelledError):
            self._release(replica, budgeted=False)
            if not hedged:
                raise error
            self.runtime.timers.cancel(self)
            won, main = self.won, self.main
            if won is None or main is None or main.uncancel() != 0:
                self.waiting = False  # cancelled from outside
                await self._drop(won)
                raise error
            await self.cancel_all()  # the hedge's answer came
            return _stood(won)
        if hedged:
            self.runtime.timers.cancel(self)
            self.waiting = False
        failed = self.failure(error, seconds, 1)
        if failed is None:  # no outcome (a bug): raised
            self._release(replica, budgeted=False)
            await self.cancel_all()
            raise error
        return await self.after(self.judge(replica, None, failed), hedged)

    async def after(self, outcome: Reply | _Outcome, hedged: bool) -> Reply:
        """After the first attempt: its outcome if it stands (a hedge still running
        cancelled), else retries (as tasks beside a hedge, when the step has one)."""
        if isinstance(outcome, Reply) or not outcome.retriable:
            if self.running:
                await self.cancel_all()
            return _stood(outcome)
        hedge_after = self.policy.hedge_after
        if hedged and hedge_after is not None:
            return await self.tasks(None if self.fired else hedge_after, outcome)
        return await self.serial(outcome)

    def shed(self, count: int, limit: int) -> StepOverloaded:
        """The failure of a call past the step's ``maxInFlight`` (``count`` in flight)."""
        if self.ctx.observer is not None:
            self.ctx.observer.policy_event(self.step, "shed", {"in_flight": count, "limit": limit})
        return StepOverloaded(
            f"step {self.policy.label} has {count} calls in flight, its maxInFlight: not queued"
        )

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

    def step_timeout(self) -> float | None:
        """The step's own bound on an attempt: its ``timeout``, else ``serviceClient``."""
        timeout = self.policy.timeout
        return timeout if timeout is not None else self.ctx.service_timeout

    def prepare(self, now: float | None = None) -> float | None:
        """The seconds an attempt may take: the step's timeout, or what is left of the
        graph's when that is less (at ``now``, read from the clock when not given);
        GraphTimeout when nothing is left."""
        ctx = self.ctx
        timeout = self.step_timeout()
        if ctx.deadline is None:
            return timeout
        remaining = ctx.deadline - (ctx.clock() if now is None else now)
        if remaining <= 0:
            raise graph_timeout(ctx, self.policy.label)
        return remaining if timeout is None or remaining < timeout else timeout

    def timed_out(
        self, error: UpstreamTimeout, seconds: float | None, number: int
    ) -> GraphRequestError:
        """What an attempt whose call timed out fails with: the graph's 504 when its deadline
        bounded the call (``prepare`` gave it less than the step's timeout), the step's when
        its own ``timeout`` did."""
        policy = self.policy
        timeout = self.step_timeout()
        if self.ctx.deadline is not None and (
            timeout is None or seconds is None or seconds < timeout
        ):
            return graph_timeout(self.ctx, policy.label)
        if policy.timeout is not None:
            return StepTimeout(
                f"step {policy.label}: no answer within its timeout of "
                f"{policy.timeout} s (attempt {number})"
            )
        return error

    async def attempt(self, replica: int | None, number: int, hedge: bool) -> Reply:
        """One attempt, as a task's coroutine (``run`` and ``inline`` make theirs in the
        step's own task)."""
        seconds = self.prepare()
        target = None if replica is None else self.policy.replicas[replica]
        try:
            reply = await self.send(
                self.step, self.payload, self.ctx, self.final, target, seconds, number, hedge
            )
        except UpstreamTimeout as exc:
            failure = self.timed_out(exc, seconds, number)
            if failure is exc:
                raise
            raise failure from exc
        if reply.stream is not None and reply.ok:
            return await _committed(reply)
        return reply

    def settle(self, task: asyncio.Task[Reply]) -> Reply | _Outcome:
        """A finished attempt task's outcome, counted for its replica and the budget."""
        attempt = self.running.pop(task)
        if attempt.budgeted:
            self.runtime.retries_in_flight -= 1
        error = task.exception()
        return self.judge(attempt.replica, None if error is not None else task.result(), error)

    def judge(
        self, replica: int | None, reply: Reply | None, error: BaseException | None
    ) -> Reply | _Outcome:
        """An attempt's outcome (its reply or its error), counted for its replica's health:
        the reply itself when it stands. An error that is no outcome (a bug) is raised."""
        retry = self.policy.retry
        replicas = self.replicas
        if reply is not None and reply.status < 500:  # the common case: no failure to count
            if replica is not None and replicas is not None:
                replicas.answered(replica, self.ctx.clock)
            if retry.retriable_status_codes and retry.retries_status(reply.status):
                return _Outcome(reply, None, True)
            return reply
        status: int | None = None
        failure: Failure | None = None
        outcome: Reply | _Outcome
        if reply is not None:
            status = reply.status
            failure = Failure.STATUS
            outcome = _Outcome(reply, None, True) if retry.retries_status(status) else reply
        elif isinstance(error, GraphRequestError):
            failure = failure_of(error)
            outcome = _Outcome(None, error, failure is not None and retry.retries(failure))
        else:  # a bug, not an outcome: nothing to count
            outcome = _Outcome(None, None, False)
        if replica is not None and replicas is not None:
            replicas.replicas[replica].outstanding -= 1
            # A graph's timeout, or an error no retry mends, says nothing of the replica.
            if (status is not None or failure is not None) and not isinstance(error, GraphTimeout):
                change = replicas.record(replica, self.ctx.clock(), status, failure)
                if change is not None:
                    self._changed([change.replica], change.kind, change.seconds)
        if reply is None and error is not None and not isinstance(error, GraphRequestError):
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

    async def serial(self, last: _Outcome) -> Reply:
        """After a first attempt that did not answer for good and no hedge: one attempt at a
        time, in this task (nothing runs beside it)."""
        retries = 0
        while last.retriable:
            retries += 1
            if not await self.retry(retries, last, launch=False):
                break
            outcome = await self.inline(budgeted=True)
            if isinstance(outcome, Reply):
                return outcome
            last = outcome
        return _result(last)

    async def inline(self, *, budgeted: bool) -> Reply | _Outcome:
        """A retry awaited in this task, judged (``budgeted``: it holds a place in the retry
        budget). Ended by anything else (a cancellation), its counts are given back and that
        is raised."""
        replica = self.pick()
        self.started = number = self.started + 1
        seconds = None
        try:
            seconds = self.prepare()
            target = None if replica is None else self.policy.replicas[replica]
            reply = await self.send(
                self.step, self.payload, self.ctx, self.final, target, seconds, number, False
            )
            if reply.stream is not None and reply.ok:
                reply = await _committed(reply)
        except BaseException as exc:
            failed = self.failure(exc, seconds, number)
            if failed is None:
                self._release(replica, budgeted=budgeted)
                raise
            if budgeted:
                self.runtime.retries_in_flight -= 1
            return self.judge(replica, None, failed)
        if budgeted:
            self.runtime.retries_in_flight -= 1
        return self.judge(replica, reply, None)

    def failure(
        self, error: BaseException, seconds: float | None, number: int
    ) -> GraphRequestError | None:
        """The failure an attempt's exception is (it had ``seconds``); None when it is no
        outcome (a cancellation, or a bug)."""
        if isinstance(error, UpstreamTimeout):
            failure = self.timed_out(error, seconds, number)
            if failure is not error:
                failure.__cause__ = error
            return failure
        return error if isinstance(error, GraphRequestError) else None

    def _release(self, replica: int | None, *, budgeted: bool) -> None:
        """An attempt that ended in no outcome (cancelled, or not waited for): its counts
        given back."""
        if budgeted:
            self.runtime.retries_in_flight -= 1
        if replica is not None and self.replicas is not None:
            self.replicas.replicas[replica].outstanding -= 1

    def fire(self) -> None:
        """The hedge's time came: send it, watched while the first attempt is awaited."""
        self.fired = True
        task = self.hedge()
        if task is not None:
            task.add_done_callback(self.hedge_done)

    def hedge_done(self, task: asyncio.Task[Reply]) -> None:
        if not self.waiting or task not in self.running:
            return  # the first attempt moved on: the task loop settles the hedge
        try:
            outcome = self.settle(task)
        except BaseException as bug:  # raised again in the main task
            self.won = bug
        else:
            if isinstance(outcome, _Outcome) and outcome.retriable:
                return  # the first attempt may still answer
            self.won = outcome
        self.waiting = False
        assert self.main is not None
        self.main.cancel()

    async def _drop(self, won: _Won | None) -> None:
        """A hedge's winning reply that nobody will read, closed; the other attempts
        cancelled."""
        reply = won.reply if isinstance(won, _Outcome) else won
        if isinstance(reply, Reply) and reply.stream is not None:
            await reply.stream.aclose()
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
                    if isinstance(outcome, Reply) or not outcome.retriable:
                        return _stood(outcome)
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
    """The reply of an outcome that stands after all (its error raised)."""
    if outcome.error is not None:
        raise outcome.error
    assert outcome.reply is not None
    return outcome.reply


def _stood(outcome: _Won) -> Reply:
    """The step's reply from an outcome that stands (its error raised)."""
    if isinstance(outcome, Reply):
        return outcome
    if isinstance(outcome, BaseException):
        raise outcome from None
    return _result(outcome)


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
