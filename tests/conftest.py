"""Suite-wide checks: every async test fails if it leaves tasks running."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

# Tasks a fixture owns (e.g. a test server's connection handlers) carry this name prefix; the
# fixture's teardown ends them, after the test.
FIXTURE_TASK = "fixture:"


def _leak_checked(test: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        before = asyncio.all_tasks()
        result = await test(*args, **kwargs)
        for _ in range(3):  # let tasks that were cancelled on the way out finish
            await asyncio.sleep(0)
        me = asyncio.current_task()
        leaked = [
            t
            for t in asyncio.all_tasks() - before
            if t is not me and not t.done() and not t.get_name().startswith(FIXTURE_TASK)
        ]
        for task in leaked:
            task.cancel()
        assert not leaked, (
            f"the test left {len(leaked)} task(s) running: {leaked}; "
            "await or cancel every task you start"
        )
        return result

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = _leak_checked(item.obj)
