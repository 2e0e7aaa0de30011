"""Resilience policies in the engine, exact: the fake transport on a virtual-time loop, with a
seeded RNG, so every backoff, hedge and ejection time is an equality."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import (
    BadRequest,
    GraphOverloaded,
    GraphRequestError,
    GraphSpecError,
    GraphTimeout,
    StepOverloaded,
    StepTimeout,
    UpstreamConnectFailed,
    UpstreamConnectionError,
    UpstreamTimeout,
)
from infergraph.router.engine.plan import GraphPlan
from infergraph.router.engine.policy import BudgetPolicy, OutlierPolicy, RetryPolicy
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.testing import virtual_time
from infergraph.testing.fakes import plan, reply, url

OK = {"ok": True}


@dataclass
class Server:
    """A scripted model server on virtual time: ``answers`` in turn (the last one repeats),
    each a status, an exception, or ("slow", seconds, status); every call's time recorded."""

    answers: list[Any] = field(default_factory=lambda: [200])
    times: list[float] = field(default_factory=list)
    cancelled: int = 0
    in_flight: int = 0
    peak: int = 0

    async def __call__(self, call: StepCall) -> Reply:
        loop = asyncio.get_running_loop()
        self.times.append(round(loop.time(), 9))
        answer = self.answers[min(len(self.times) - 1, len(self.answers) - 1)]
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if isinstance(answer, tuple):
                await asyncio.sleep(answer[1])
                answer = answer[2]
            else:
                await asyncio.sleep(0)
            if isinstance(answer, BaseException):
                raise answer
            return reply(answer, {"status": answer, "from": call.target.url})
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1


@dataclass
class Fake:
    servers: dict[str, Server]
    calls: list[StepCall] = field(default_factory=list)

    async def send(self, call: StepCall) -> Reply:
        """As the real transports: the call's ``timeout`` ends in ``UpstreamTimeout``."""
        self.calls.append(call)
        name = call.target.url.split("//")[1].split(".")[0]
        try:
            async with asyncio.timeout(call.timeout):
                return await self.servers[name](call)
        except TimeoutError as exc:
            raise UpstreamTimeout(f"timeout {call.timeout} s") from exc


def ctx_for(fake: Fake, seed: int = 7, **kwargs: Any) -> ExecutionContext:
    return ExecutionContext(transport=fake, rng=random.Random(seed), **kwargs)


def one_step(step: dict[str, Any], **spec: Any) -> GraphPlan:
    return plan({"root": {"routerType": "Sequence", "steps": [{"name": "s", **step}]}}, **spec)


Run = Callable[[], Awaitable[Any]]


def go(graph: GraphPlan, fake: Fake, body: Any = None, seed: int = 7) -> Reply:
    async def main() -> Reply:
        return await run_graph(graph, orjson.dumps(body or {}), ctx_for(fake, seed))

    return virtual_time.run(main())


def draws(seed: int, count: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.random() for _ in range(count)]


# --- retries -------------------------------------------------------------------------------


def test_backoff_schedule_is_exponential_with_full_jitter_from_the_injected_rng() -> None:
    server = Server([503])
    graph = one_step({"serviceUrl": url("a"), "retry": {"maxRetries": 3, "initialDelayMs": 100}})
    answer = go(graph, Fake({"a": server}), seed=11)
    assert answer.status == 503
    d1, d2, d3 = draws(11, 3)
    t1 = d1 * 0.1
    t2 = t1 + d2 * 0.2
    t3 = t2 + d3 * 0.4
    assert server.times == [0.0, round(t1, 9), round(t2, 9), round(t3, 9)]


def test_backoff_is_capped_by_max_delay() -> None:
    policy = RetryPolicy(initial_delay_ms=100, max_delay_ms=250)
    assert [policy.backoff(n, 0.5) for n in (1, 2, 3, 4)] == [0.05, 0.1, 0.125, 0.125]
    assert policy.backoff(3, 0.0) == 0.0


def test_a_retry_that_succeeds_answers_with_the_success() -> None:
    server = Server([503, 502, 200])
    graph = one_step({"serviceUrl": url("a"), "retry": {}})
    assert go(graph, Fake({"a": server})).status == 200
    assert len(server.times) == 3


def test_default_retry_applies_to_every_service_step_and_a_step_value_wins() -> None:
    a, b = Server([503]), Server([503])
    graph = plan(
        {
            "root": {
                "routerType": "Ensemble",
                "steps": [
                    {"name": "a", "serviceUrl": url("a")},
                    {"name": "b", "serviceUrl": url("b"), "retry": {"maxRetries": 0}},
                ],
            }
        },
        defaultRetry={"maxRetries": 2, "initialDelayMs": 1},
    )
    go(graph, Fake({"a": a, "b": b}))
    assert (len(a.times), len(b.times)) == (3, 1)


RESET = UpstreamConnectionError("connection reset")
REFUSED = UpstreamConnectFailed("connection refused")


@pytest.mark.parametrize(
    ("retry_on", "codes", "answer", "retried"),
    [
        (None, None, 500, True),
        (None, None, 503, True),
        (None, None, 404, False),
        (None, None, RESET, True),
        (None, None, REFUSED, True),
        (["gateway-error"], None, 500, False),
        (["gateway-error"], None, 502, True),
        (["gateway-error"], None, 504, True),
        (["gateway-error"], None, RESET, True),
        (["reset"], None, 503, False),
        (["reset"], None, RESET, True),
        (["reset"], None, REFUSED, False),
        (["connect-failure"], None, REFUSED, True),
        (["connect-failure"], None, RESET, False),
        (["connect-failure"], None, 503, False),
        (["retriable-status-codes"], [409], 409, True),
        (["retriable-status-codes"], [409], 503, False),
        (["5xx", "retriable-status-codes"], [429], 429, True),
    ],
)
def test_retry_on_words_mean_what_envoys_mean(
    retry_on: list[str] | None, codes: list[int] | None, answer: Any, retried: bool
) -> None:
    server = Server([answer, 200])
    config: dict[str, Any] = {"maxRetries": 1, "initialDelayMs": 1}
    if retry_on is not None:
        config["retryOn"] = retry_on
    if codes is not None:
        config["retriableStatusCodes"] = codes
    graph = one_step({"serviceUrl": url("a"), "retry": config})
    try:
        go(graph, Fake({"a": server}))
    except GraphRequestError:
        assert not retried
    assert len(server.times) == (2 if retried else 1)


def test_per_try_timeout_is_a_504_and_retried_under_timeout() -> None:
    server = Server([("slow", 5.0, 200), ("slow", 0.1, 200)])
    graph = one_step(
        {
            "serviceUrl": url("a"),
            "timeout": 1.0,
            "retry": {"maxRetries": 1, "initialDelayMs": 1, "retryOn": ["timeout"]},
        }
    )
    assert go(graph, Fake({"a": server}), seed=3).status == 200
    assert server.times[0] == 0.0
    assert server.times[1] == round(1.0 + draws(3, 1)[0] * 0.001, 9)
    with pytest.raises(StepTimeout) as raised:
        go(
            one_step({"serviceUrl": url("a"), "timeout": 1.0}),
            Fake({"a": Server([("slow", 5, 200)])}),
        )
    assert raised.value.status == 504
    assert "root/s" in raised.value.cause


# --- the retry budget -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "minimum", "in_flight", "active", "allowed"),
    [
        (20, 3, 2, 1, True),
        (20, 3, 3, 1, False),
        (20, 3, 3, 20, True),  # 20% of 20 is 4
        (20, 3, 4, 20, False),
        (50, 0, 4, 10, True),
        (50, 0, 5, 10, False),
        (0, 0, 0, 100, False),
    ],
)
def test_budget_arithmetic(
    percent: float, minimum: int, in_flight: int, active: int, allowed: bool
) -> None:
    assert BudgetPolicy(percent, minimum).allows(in_flight, active) is allowed


def test_retries_in_flight_never_exceed_the_budget() -> None:
    """Ten concurrent requests to a backend that always fails slowly: with the budget at
    20% of 10 active (2) and a minimum of 1, at most 2 retries are in flight at once."""
    server = Server([("slow", 0.5, 503)])
    graph = one_step(
        {"serviceUrl": url("a"), "retry": {"maxRetries": 5, "initialDelayMs": 1}},
        retryBudget={"percent": 20, "minRetryConcurrency": 1},
    )
    fake = Fake({"a": server})
    peak_retries = 0

    async def watch() -> None:
        nonlocal peak_retries
        while True:
            peak_retries = max(peak_retries, graph.runtime.retries_in_flight)
            await asyncio.sleep(0.01)

    async def main() -> list[Reply]:
        watcher = asyncio.ensure_future(watch())
        try:
            return await asyncio.gather(
                *(run_graph(graph, b"{}", ctx_for(fake, seed)) for seed in range(10))
            )
        finally:
            watcher.cancel()

    answers = virtual_time.run(main())
    assert {a.status for a in answers} == {503}
    assert peak_retries == 2
    assert server.peak <= 12
    assert graph.runtime.retries_in_flight == 0
    assert graph.runtime.active == 0


# --- replicas and outlier detection ----------------------------------------------------------


def test_power_of_two_choices_prefers_the_replica_with_fewer_outstanding() -> None:
    servers = {name: Server([("slow", 1.0, 200)]) for name in "abc"}
    graph = one_step({"endpoints": [url(n) for n in "abc"]})
    fake = Fake(servers)

    async def main() -> None:
        await asyncio.gather(*(run_graph(graph, b"{}", ctx_for(fake, i)) for i in range(30)))

    virtual_time.run(main())
    spread = sorted(len(s.times) for s in servers.values())
    assert sum(spread) == 30
    assert spread[2] - spread[0] <= 2  # (random choice: about 9 apart at this size)


def test_an_error_no_retry_mends_from_a_replica_is_the_answer_and_not_counted() -> None:
    # A client mistake (400) says nothing of the replica's health: it is the answer as it is
    # (it once reached outlier detection's counting with neither status nor failure, a 500).
    servers = {"a": Server([BadRequest("no such input")]), "b": Server([BadRequest("no")])}
    graph = one_step({"endpoints": [url("a"), url("b")], "retry": {"maxRetries": 2}})
    with pytest.raises(BadRequest):
        go(graph, Fake(servers))
    replicas = graph.runtime.replicas["root/s"].replicas
    assert [r.outstanding for r in replicas] == [0, 0]
    assert [r.consecutive_5xx for r in replicas] == [0, 0]
    assert sum(len(s.times) for s in servers.values()) == 1  # not retried


def test_a_failing_replica_is_ejected_for_base_time_times_ejections_and_returns() -> None:
    bad, good = Server([503]), Server([200])
    graph = one_step(
        {"endpoints": [url("bad"), url("good")]},
        outlierDetection={
            "consecutive5xx": 2,
            "baseEjectionTimeMs": 30_000,
            "maxEjectionPercent": 50,
        },
    )
    fake = Fake({"bad": bad, "good": good})
    replicas = graph.runtime.replicas["root/s"]

    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        seen = []
        for second in range(0, 200):
            await asyncio.sleep(max(0.0, second - loop.time()))
            await run_graph(graph, b"{}", ctx_for(fake, second))
            seen.append((loop.time(), replicas.ejected_count()))
        return seen

    seen = virtual_time.run(main())
    ejected_at = [
        t for (t, n), (_, before) in zip(seen, [(0, 0), *seen], strict=False) if n and not before
    ]
    returned_at = [
        t for (t, n), (_, before) in zip(seen, [(0, 0), *seen], strict=False) if before and not n
    ]
    # Ejected after its second 5xx; back 30 s later; ejected again after two more 5xx, now
    # for 60 s (its second ejection in a row).
    assert len(ejected_at) >= 2
    assert returned_at[0] - ejected_at[0] == pytest.approx(30, abs=1)
    assert returned_at[1] - ejected_at[1] == pytest.approx(60, abs=1)
    assert len(bad.times) < len(good.times) / 5


def test_outlier_policy_never_ejects_every_replica() -> None:
    policy = OutlierPolicy()
    assert [policy.max_ejected(n) for n in (1, 2, 5, 10, 30)] == [0, 1, 1, 1, 3]
    assert OutlierPolicy(max_ejection_percent=100).max_ejected(3) == 2
    assert OutlierPolicy(max_ejection_percent=0).max_ejected(3) == 0
    assert [policy.ejection_seconds(n) for n in (1, 2, 11)] == [30, 60, 300]


def test_with_both_replicas_failing_only_one_is_ejected_and_a_fallback_answers() -> None:
    a, b, spare = Server([503]), Server([503]), Server([200])
    graph = one_step(
        {"endpoints": [url("a"), url("b")], "fallback": {"serviceUrl": url("spare")}},
        outlierDetection={"consecutive5xx": 1},
    )
    fake = Fake({"a": a, "b": b, "spare": spare})
    answers = [go(graph, fake, seed=i) for i in range(6)]
    replicas = graph.runtime.replicas["root/s"]
    assert replicas.ejected_count() == 1
    assert {r.status for r in answers} == {200}
    # Once both failed, the step has no healthy replica: the fallback answers straight away.
    assert len(a.times) + len(b.times) == 2
    assert len(spare.times) == 6


def test_a_retry_goes_to_another_replica() -> None:
    a, b = Server([503]), Server([200])
    graph = one_step({"endpoints": [url("a"), url("b")], "retry": {"initialDelayMs": 1}})
    fake = Fake({"a": a, "b": b})
    for seed in range(8):
        assert go(graph, fake, seed=seed).status == 200
    assert len(a.times) <= 8
    first_targets = [c.target.url for c in fake.calls if c.attempt == 2]
    assert all(t == url("b") for t in first_targets)


# --- hedging ------------------------------------------------------------------------------


def test_a_hedge_goes_out_after_after_ms_and_the_first_success_wins() -> None:
    slow, fast = Server([("slow", 0.2, 200)]), Server([("slow", 0.01, 200)])
    graph = one_step({"endpoints": [url("slow"), url("fast")], "hedge": {"afterMs": 50}})
    fake = Fake({"slow": slow, "fast": fast})

    async def main() -> tuple[Reply, float]:
        loop = asyncio.get_running_loop()
        # Seed 1 draws the slow replica first (checked below).
        answer = await run_graph(graph, b"{}", ctx_for(fake, 1))
        return answer, loop.time()

    answer, finished = virtual_time.run(main())
    assert [c.target.url for c in fake.calls] == [url("slow"), url("fast")]
    assert [c.hedge for c in fake.calls] == [False, True]
    assert fast.times == [0.05]
    assert orjson.loads(answer.body)["from"] == url("fast")
    assert finished == pytest.approx(0.06)
    assert slow.cancelled == 1


def timed(graph: GraphPlan, fake: Fake, seed: int = 7) -> tuple[Reply, float]:
    async def main() -> tuple[Reply, float]:
        answer = await run_graph(graph, b"{}", ctx_for(fake, seed))
        return answer, asyncio.get_running_loop().time()

    return virtual_time.run(main())


def test_the_first_attempt_can_still_win_after_the_hedge_went_out() -> None:
    slow, slower = Server([("slow", 0.08, 200)]), Server([("slow", 0.2, 200)])
    graph = one_step({"endpoints": [url("slow"), url("slower")], "hedge": {"afterMs": 50}})
    fake = Fake({"slow": slow, "slower": slower})
    answer, finished = timed(graph, fake, seed=1)  # seed 1 draws the first replica first
    assert [c.hedge for c in fake.calls] == [False, True]
    assert orjson.loads(answer.body)["from"] == url("slow")
    assert finished == pytest.approx(0.08)
    assert slower.cancelled == 1
    assert graph.runtime.retries_in_flight == 0
    assert [r.outstanding for r in graph.runtime.replicas["root/s"].replicas] == [0, 0]


def test_a_hedge_that_fails_leaves_the_first_attempt_running() -> None:
    slow, failing = Server([("slow", 0.2, 200)]), Server([503])
    graph = one_step(
        {
            "endpoints": [url("slow"), url("failing")],
            "hedge": {"afterMs": 50},
            "retry": {"maxRetries": 1, "initialDelayMs": 1},
        }
    )
    fake = Fake({"slow": slow, "failing": failing})
    answer, finished = timed(graph, fake, seed=1)
    assert failing.times == [0.05]
    assert orjson.loads(answer.body)["from"] == url("slow")
    assert finished == pytest.approx(0.2)
    assert slow.cancelled == 0
    assert graph.runtime.retries_in_flight == 0


def test_a_retry_after_a_quick_failure_is_hedged_too() -> None:
    server = Server([503, ("slow", 0.2, 200), ("slow", 0.01, 200)])
    graph = one_step(
        {
            "serviceUrl": url("a"),
            "hedge": {"afterMs": 50},
            "retry": {"maxRetries": 1, "initialDelayMs": 1},
        }
    )
    fake = Fake({"a": server})
    answer, _ = timed(graph, fake)
    assert answer.status == 200
    assert [c.hedge for c in fake.calls] == [False, False, True]
    assert server.times[2] == pytest.approx(server.times[1] + 0.05)
    assert server.cancelled == 1
    assert graph.runtime.retries_in_flight == 0


def test_an_outside_cancellation_during_the_first_attempt_leaves_no_count() -> None:
    slow, slower = Server([("slow", 1.0, 200)]), Server([("slow", 1.0, 200)])
    graph = one_step({"endpoints": [url("slow"), url("slower")], "hedge": {"afterMs": 50}})
    fake = Fake({"slow": slow, "slower": slower})

    async def main() -> None:
        task = asyncio.ensure_future(run_graph(graph, b"{}", ctx_for(fake, 1)))
        await asyncio.sleep(0.1)  # the hedge is out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    virtual_time.run(main())
    assert slow.cancelled == 1
    assert slower.cancelled == 1
    assert graph.runtime.retries_in_flight == 0
    assert [r.outstanding for r in graph.runtime.replicas["root/s"].replicas] == [0, 0]


def test_join_any_answers_with_one_branch_when_two_finish_at_once() -> None:
    graph = plan(
        {
            "root": {
                "routerType": "Ensemble",
                "join": "any",
                "steps": [
                    {"name": "a", "serviceUrl": url("a")},
                    {"name": "b", "serviceUrl": url("b")},
                ],
            }
        }
    )
    fake = Fake({"a": Server([200]), "b": Server([200])})  # both answer on the same loop pass
    assert list(orjson.loads(go(graph, fake).body)) == ["a"]


def test_no_hedge_when_the_answer_comes_in_time() -> None:
    server = Server([("slow", 0.03, 200)])
    graph = one_step({"serviceUrl": url("a"), "hedge": {"afterMs": 50}})
    assert go(graph, Fake({"a": server})).status == 200
    assert server.times == [0.0]


# --- fallback, bulkheads, shedding, deadline -------------------------------------------------


def test_fallback_after_retries_and_the_context_names_it() -> None:
    main_server, spare = Server([503]), Server([200])
    graph = one_step(
        {
            "serviceUrl": url("main"),
            "retry": {"maxRetries": 2, "initialDelayMs": 1},
            "fallback": {"serviceUrl": url("spare")},
        }
    )
    fake = Fake({"main": main_server, "spare": spare})

    async def main() -> tuple[Reply, list[str] | None]:
        ctx = ctx_for(fake)
        answer = await run_graph(graph, b"{}", ctx)
        return answer, ctx.fallbacks

    answer, fallbacks = virtual_time.run(main())
    assert answer.status == 200
    assert len(main_server.times) == 3
    assert fallbacks == [f"root/s={url('spare')}"]


def test_a_fallback_call_is_bounded_by_its_timeout_and_the_graphs_deadline() -> None:
    def graph(**spec: Any) -> Any:
        fallback = {"serviceUrl": url("spare"), "timeout": 0.5}
        return one_step({"serviceUrl": url("main"), "fallback": fallback}, **spec)

    fake = Fake({"main": Server([503]), "spare": Server([("slow", 5, 200)])})
    with pytest.raises(StepTimeout):
        go(graph(), fake)
    assert fake.calls[-1].timeout == pytest.approx(0.5)
    # The graph's deadline bounds it too, when that is nearer.
    fake = Fake({"main": Server([("slow", 0.8, 503)]), "spare": Server([("slow", 5, 200)])})
    with pytest.raises(GraphTimeout):
        go(graph(timeout=1.0), fake)
    assert fake.calls[-1].timeout == pytest.approx(0.2)


def test_a_client_error_does_not_fall_back() -> None:
    main_server, spare = Server([404]), Server([200])
    graph = one_step({"serviceUrl": url("main"), "fallback": {"serviceUrl": url("spare")}})
    assert go(graph, Fake({"main": main_server, "spare": spare})).status == 404
    assert spare.times == []


def test_fallback_to_a_node() -> None:
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "s", "serviceUrl": url("main"), "fallback": {"nodeName": "spare"}}
                ],
            },
            "spare": {"routerType": "Sequence", "steps": [{"serviceUrl": url("spare")}]},
        }
    )
    fake = Fake({"main": Server([REFUSED]), "spare": Server([200])})
    assert orjson.loads(go(graph, fake).body)["from"] == url("spare")


def test_bulkhead_fails_fast_past_max_in_flight() -> None:
    server = Server([("slow", 1.0, 200)])
    graph = one_step({"serviceUrl": url("a"), "maxInFlight": 2})
    fake = Fake({"a": server})

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(run_graph(graph, b"{}", ctx_for(fake)) for _ in range(3)), return_exceptions=True
        )

    results = virtual_time.run(main())
    assert [r.status for r in results if isinstance(r, Reply)] == [200, 200]
    (refused,) = [r for r in results if not isinstance(r, Reply)]
    assert isinstance(refused, StepOverloaded)
    assert refused.status == 503
    assert "maxInFlight" in refused.cause
    assert graph.runtime.in_flight == {"root/s": 0}


def test_graph_max_in_flight_sheds_at_once_with_retry_after() -> None:
    server = Server([("slow", 1.0, 200)])
    graph = one_step({"serviceUrl": url("a")}, maxInFlight=1)
    fake = Fake({"a": server})

    async def main() -> tuple[list[Any], float]:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(run_graph(graph, b"{}", ctx_for(fake)))
        await asyncio.sleep(0.1)
        try:
            await run_graph(graph, b"{}", ctx_for(fake))
        except GraphOverloaded as shed:
            refused_at = loop.time()
            return [await first, shed], refused_at
        raise AssertionError("not shed")

    (answer, shed), refused_at = virtual_time.run(main())
    assert answer.status == 200
    assert refused_at == pytest.approx(0.1)
    assert shed.status == 503
    assert ("Retry-After", "1") in shed.headers


def test_graph_timeout_answers_504_naming_the_running_step() -> None:
    graph = plan(
        {
            "root": {
                "routerType": "Sequence",
                "steps": [
                    {"name": "first", "serviceUrl": url("a")},
                    {"name": "second", "serviceUrl": url("b")},
                ],
            }
        },
        timeout=1.0,
    )
    fake = Fake({"a": Server([("slow", 0.4, 200)]), "b": Server([("slow", 5, 200)])})
    with pytest.raises(GraphTimeout) as raised:
        go(graph, fake)
    assert raised.value.status == 504
    assert "root/second" in raised.value.cause
    # The second step's call was bounded by what was left of the deadline.
    assert fake.calls[1].timeout == pytest.approx(0.6)


def test_no_retry_whose_backoff_ends_past_the_deadline() -> None:
    server = Server([503])
    graph = one_step(
        {"serviceUrl": url("a"), "retry": {"maxRetries": 10, "initialDelayMs": 400}}, timeout=1.0
    )
    answer = go(graph, Fake({"a": server}), seed=5)
    assert answer.status == 503
    assert server.times[-1] < 1.0


# --- streams ----------------------------------------------------------------------------------


def test_a_stream_that_breaks_before_its_first_chunk_is_retried_and_not_after() -> None:
    attempts: list[int] = []

    async def chunks(fail_first: bool) -> Any:
        if fail_first:
            raise UpstreamConnectionError("connection lost mid-stream")
        yield b"data: 1\n\n"
        raise UpstreamConnectionError("connection lost mid-stream")

    class Streaming:
        async def send(self, call: StepCall) -> Reply:
            attempts.append(call.attempt)
            return Reply(200, b"", "text/event-stream", stream=chunks(len(attempts) == 1))

    graph = one_step({"serviceUrl": url("a"), "retry": {"initialDelayMs": 1}})

    async def main() -> list[bytes]:
        ctx = ExecutionContext(transport=Streaming(), rng=random.Random(1))
        answer = await run_graph(graph, b"{}", ctx)
        assert answer.stream is not None
        got = [await answer.stream.__anext__()]
        with pytest.raises(UpstreamConnectionError):
            await answer.stream.__anext__()
        return got

    assert virtual_time.run(main()) == [b"data: 1\n\n"]
    assert attempts == [1, 2]


# --- ensemble joins ---------------------------------------------------------------------------


def ensemble(answers: dict[str, Any], **node: Any) -> tuple[GraphPlan, Fake]:
    steps = [{"name": n, "serviceUrl": url(n)} for n in answers]
    for step in steps:
        if step["name"].startswith("hard"):
            step["dependency"] = "Hard"
    graph = plan({"root": {"routerType": "Ensemble", "steps": steps, **node}})
    return graph, Fake({n: Server([a]) for n, a in answers.items()})


def test_quorum_answers_after_k_successes_and_cancels_the_rest() -> None:
    graph, fake = ensemble(
        {"a": ("slow", 0.1, 200), "b": ("slow", 0.2, 200), "c": ("slow", 9, 200)}, minSuccess=2
    )

    async def main() -> tuple[Reply, float]:
        answer = await run_graph(graph, b"{}", ctx_for(fake))
        return answer, asyncio.get_running_loop().time()

    answer, at = virtual_time.run(main())
    assert sorted(orjson.loads(answer.body)) == ["a", "b"]
    assert at == pytest.approx(0.2)
    assert fake.servers["c"].cancelled == 1


def test_quorum_skips_soft_failures_and_fails_when_out_of_reach() -> None:
    graph, fake = ensemble(
        {"a": 503, "b": ("slow", 0.1, 200), "c": ("slow", 0.2, 200)}, minSuccess=2
    )
    assert sorted(orjson.loads(go(graph, fake).body)) == ["b", "c"]
    graph, fake = ensemble({"a": 503, "b": 500, "c": ("slow", 5, 200)}, minSuccess=2)
    answer = go(graph, fake)
    assert answer.status in (500, 503)
    assert fake.servers["c"].cancelled == 1


def test_join_any_takes_the_first_success() -> None:
    graph, fake = ensemble({"a": ("slow", 0.3, 200), "b": ("slow", 0.1, 200)}, join="any")
    assert list(orjson.loads(go(graph, fake).body)) == ["b"]


def test_a_hard_step_must_succeed_even_under_quorum() -> None:
    graph, fake = ensemble({"a": ("slow", 0.01, 200), "hard": ("slow", 0.5, 503)}, minSuccess=1)
    assert go(graph, fake).status == 503
    graph, fake = ensemble({"a": ("slow", 0.01, 200), "hard": ("slow", 0.5, 200)}, minSuccess=1)
    assert sorted(orjson.loads(go(graph, fake).body)) == ["a", "hard"]


# --- load-time checks ---------------------------------------------------------------------------

S = {"name": "s", "serviceUrl": url("a")}


@pytest.mark.parametrize(
    ("nodes", "spec", "expected"),
    [
        ({"root": {"routerType": "Sequence", "steps": [{**S, "retry": {"retryOn": ["5xx", "oops"]}}]}}, {}, "node 'root', step 0: retry.retryOn.1: Input should be '5xx', 'gateway-error', 'reset', 'connect-failure', 'retriable-status-codes' or 'timeout'"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "retry": {"maxRetries": 11}}]}}, {}, "retry.maxRetries: Input should be less than or equal to 10"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "retry": {"maxRetires": 2}}]}}, {}, "maxRetires"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "retry": {"initialDelayMs": 500, "maxDelayMs": 100}}]}}, {}, "initialDelayMs 500 is above maxDelayMs 100"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "retry": {"retryOn": ["retriable-status-codes"]}}]}}, {}, "needs retriableStatusCodes"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "retry": {"retriableStatusCodes": [409]}}]}}, {}, "needs 'retriable-status-codes' in retryOn"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "fallback": {"nodeName": "root"}}]}}, {}, "fallback would loop: root -> root"),
        ({"root": {"routerType": "Sequence", "steps": [{"nodeName": "n"}]}, "n": {"routerType": "Sequence", "steps": [{**S, "fallback": {"nodeName": "root"}}]}}, {}, "fallback would loop: root -> n -> root"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "fallback": {"nodeName": "nope"}}]}}, {}, "fallback nodeName 'nope' is not a node"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "fallback": {}}]}}, {}, "fallback needs exactly one of nodeName and serviceUrl"),
        ({"root": {"routerType": "Ensemble", "minSuccess": 3, "steps": [S, {**S, "name": "t"}]}}, {}, "minSuccess 3 is more than the node's 2 steps"),
        ({"root": {"routerType": "Sequence", "minSuccess": 1, "steps": [S]}}, {}, "join and minSuccess belong to Ensemble nodes"),
        ({"root": {"routerType": "Ensemble", "join": "some", "steps": [S]}}, {}, "node 'root': join: Input should be 'all' or 'any'"),
        ({"root": {"routerType": "Ensemble", "join": "any", "minSuccess": 2, "steps": [S, {**S, "name": "t"}]}}, {}, "contradicts"),
        ({"root": {"routerType": "Sequence", "steps": [{"endpoints": [url("a"), url("a")]}]}}, {}, "endpoints lists"),
        ({"root": {"routerType": "Sequence", "steps": [{"endpoints": []}]}}, {}, "endpoints lists no URL"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "endpoints": [url("b")]}]}}, {}, "set serviceUrl or endpoints, not both"),
        ({"root": {"routerType": "Sequence", "steps": [{"endpoints": ["ftp://x"]}]}}, {}, "unsupported protocol scheme"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "timeout": 0.05, "hedge": {"afterMs": 50}}]}}, {}, "the hedge would never be sent"),
        ({"root": {"routerType": "Sequence", "steps": [{"nodeName": "n", "retry": {}}]}, "n": {"routerType": "Sequence", "steps": [S]}}, {}, "retry belongs on service steps"),
        ({"root": {"routerType": "Sequence", "steps": [S]}}, {"outlierDetection": {"baseEjectionTimeMs": 9, "maxEjectionTimeMs": 1}}, "baseEjectionTimeMs 9 is above maxEjectionTimeMs 1"),
        ({"root": {"routerType": "Sequence", "steps": [S]}}, {"defaultRetry": {"retryOn": ["nope"]}}, "defaultRetry.retryOn.0: Input should be '5xx'"),
        ({"root": {"routerType": "Sequence", "steps": [S]}}, {"retryBudget": {"percent": 120}}, "retryBudget.percent"),
        ({"root": {"routerType": "Sequence", "steps": [S]}}, {"timeout": 0}, "timeout"),
        ({"root": {"routerType": "Sequence", "steps": [{**S, "maxInFlight": 0}]}}, {}, "maxInFlight"),
    ],
)  # fmt: skip
def test_invalid_policies_are_refused_at_load_naming_node_and_step(
    nodes: dict[str, Any], spec: dict[str, Any], expected: str
) -> None:
    with pytest.raises(GraphSpecError) as raised:
        plan(nodes, **spec)
    assert expected in str(raised.value)


def test_a_graph_without_policies_keeps_the_plain_path() -> None:
    graph = one_step({"serviceUrl": url("a")})
    assert not graph.resilient
    assert graph.root.steps[0].policy is None
