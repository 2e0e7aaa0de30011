"""Ensemble: concurrent branches merged by step name; Hard failures decide and cancel the rest."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from infergraph.router.engine.context import ExecutionContext
from infergraph.router.engine.errors import EnsembleMergeError, UpstreamTimeout
from infergraph.router.engine.steps import run_graph
from infergraph.router.engine.transport import Reply, StepCall
from infergraph.router.observability.recorder import UpstreamTime
from infergraph.testing.fakes import FakeTransport, plan, reply, run, url


def ensemble(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"root": {"routerType": "Ensemble", "steps": list(steps)}}


async def test_merges_by_name_and_index(fake: FakeTransport) -> None:
    fake.script[url("m1")] = reply(body={"p": 1})
    fake.script[url("m2")] = reply(body={"p": 2})
    fake.script[url("m3")] = reply(raw=b"null")
    graph = plan(
        ensemble(
            {"name": "model1", "serviceUrl": url("m1")},
            {"serviceUrl": url("m2")},
            {"name": "model3", "serviceUrl": url("m3")},
        )
    )
    result = await run(graph, fake, {"x": 1})
    assert result.status == 200
    assert result.content_type == "application/json"
    assert orjson.loads(result.body) == {"model1": {"p": 1}, "1": {"p": 2}, "model3": None}


async def test_soft_failure_is_included_with_status_200(fake: FakeTransport) -> None:
    fake.script[url("m2")] = reply(404, {"error": "not found"})
    graph = plan(
        ensemble({"name": "a", "serviceUrl": url("m1")}, {"name": "b", "serviceUrl": url("m2")})
    )
    result = await run(graph, fake, {"x": 1})
    assert result.status == 200
    assert orjson.loads(result.body) == {"a": {"x": 1}, "b": {"error": "not found"}}


@pytest.mark.parametrize("raw", [b"[1, 2]", b"3", b"text", b"", b'"s"'])
async def test_non_object_body_fails_the_ensemble(raw: bytes, fake: FakeTransport) -> None:
    fake.script[url("m2")] = reply(raw=raw)
    graph = plan(
        ensemble({"name": "a", "serviceUrl": url("m1")}, {"name": "b", "serviceUrl": url("m2")})
    )
    with pytest.raises(EnsembleMergeError, match="'b'") as caught:
        await run(graph, fake, {"x": 1})
    assert caught.value.status == 500


def blocked_until_cancelled(started: asyncio.Event) -> Any:
    async def answer(call: StepCall) -> Reply:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return answer


async def test_hard_failure_returns_its_reply_and_cancels_running_branches(
    fake: FakeTransport,
) -> None:
    started = asyncio.Event()
    fake.script[url("slow")] = blocked_until_cancelled(started)
    fake.script[url("bad")] = reply(503, {"error": "overloaded"})
    graph = plan(
        ensemble(
            {"name": "bad", "serviceUrl": url("bad"), "dependency": "Hard"},
            {"name": "slow", "serviceUrl": url("slow")},
        )
    )
    result = await run(graph, fake, {"x": 1})
    assert (result.status, orjson.loads(result.body)) == (503, {"error": "overloaded"})
    assert fake.cancelled == [url("slow")]


async def test_first_hard_failure_in_step_order_decides(fake: FakeTransport) -> None:
    async def late_failure(call: StepCall) -> Reply:
        await asyncio.sleep(0.01)
        return reply(500, {"from": "first"})

    fake.script[url("first")] = late_failure
    fake.script[url("second")] = reply(404, {"from": "second"})
    graph = plan(
        ensemble(
            {"name": "first", "serviceUrl": url("first"), "dependency": "Hard"},
            {"name": "second", "serviceUrl": url("second"), "dependency": "Hard"},
        )
    )
    result = await run(graph, fake, {})
    assert (result.status, orjson.loads(result.body)) == (500, {"from": "first"})


async def test_branch_error_fails_at_once_and_cancels_the_rest(fake: FakeTransport) -> None:
    started = asyncio.Event()
    fake.script[url("slow")] = blocked_until_cancelled(started)
    fake.script[url("broken")] = UpstreamTimeout("deadline exceeded")
    graph = plan(
        ensemble(
            {"name": "slow", "serviceUrl": url("slow")},
            {"name": "broken", "serviceUrl": url("broken")},
        )
    )
    with pytest.raises(UpstreamTimeout):
        await run(graph, fake, {})
    assert fake.cancelled == [url("slow")]


async def test_branches_run_concurrently(fake: FakeTransport) -> None:
    both_started = asyncio.Barrier(2)

    async def meet(call: StepCall) -> Reply:
        await asyncio.wait_for(both_started.wait(), 1)
        return reply(body={"ok": True})

    fake.script[url("a")] = meet
    fake.script[url("b")] = meet
    graph = plan(
        ensemble({"name": "a", "serviceUrl": url("a")}, {"name": "b", "serviceUrl": url("b")})
    )
    result = await run(graph, fake, {})
    assert orjson.loads(result.body) == {"a": {"ok": True}, "b": {"ok": True}}


async def test_outer_cancellation_cancels_every_branch(fake: FakeTransport) -> None:
    started = asyncio.Event()
    fake.script[url("a")] = blocked_until_cancelled(started)
    fake.script[url("b")] = blocked_until_cancelled(asyncio.Event())
    graph = plan(
        ensemble({"name": "a", "serviceUrl": url("a")}, {"name": "b", "serviceUrl": url("b")})
    )
    task = asyncio.ensure_future(run(graph, fake, {}))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(fake.cancelled) == [url("a"), url("b")]


async def test_upstream_wait_is_measured_on_the_injected_clock_without_double_counting() -> None:
    """Two overlapping calls of 3 and 5 ticks, started together, are 5 ticks of waiting."""
    now = [0.0]
    gates = {url("a"): asyncio.Event(), url("b"): asyncio.Event()}

    both_called = asyncio.Barrier(3)

    async def gated(call: StepCall) -> Reply:
        await both_called.wait()
        await gates[call.target.url].wait()
        return reply(body={})

    fake = FakeTransport(script={url("a"): gated, url("b"): gated})
    graph = plan(
        ensemble({"name": "a", "serviceUrl": url("a")}, {"name": "b", "serviceUrl": url("b")})
    )
    upstream = UpstreamTime(clock=lambda: now[0])
    ctx = ExecutionContext(transport=fake, rng=random.Random(0), calls=upstream)
    task = asyncio.ensure_future(run_graph(graph, b"{}", ctx))
    await asyncio.wait_for(both_called.wait(), 1)
    now[0] = 3.0
    gates[url("a")].set()
    await asyncio.sleep(0.01)
    now[0] = 5.0
    gates[url("b")].set()
    await task
    assert (len(fake.calls), upstream.seconds) == (2, 5.0)
