"""The serverWrite sweeper: overdue requests are cancelled within one resolution, others are not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from infergraph.router.http.deadlines import Deadlines

T = TypeVar("T")


async def watched(deadlines: Deadlines, seconds: float, work: Awaitable[T]) -> T:
    """``work`` in a task that watches itself, as the handler and the fast client do."""
    deadlines.watch(seconds)
    return await work


async def test_overdue_task_is_cancelled_and_reported_expired() -> None:
    deadlines = Deadlines(resolution=0.01)
    deadlines.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        task = asyncio.ensure_future(watched(deadlines, 0.05, asyncio.sleep(5)))
        await asyncio.gather(task, return_exceptions=True)
        elapsed = loop.time() - started
        assert task.cancelled()
        assert 0.05 <= elapsed < 0.05 + 0.1
        assert deadlines.remove(task) is True
        assert deadlines.remove(task) is False
    finally:
        await deadlines.close()


async def test_task_that_finishes_in_time_is_left_alone() -> None:
    deadlines = Deadlines(resolution=0.01)
    deadlines.start()
    try:
        task = asyncio.ensure_future(watched(deadlines, 1.0, asyncio.sleep(0.02, result="done")))
        assert await task == "done"
        assert deadlines.remove(task) is False
        await asyncio.sleep(0.05)
    finally:
        await deadlines.close()
