"""Request deadlines (``serverWrite``) enforced by one periodic sweep instead of a timer each.

A per-request ``asyncio.timeout`` costs a timer handle and its bookkeeping on every request;
here a request only enters and leaves a dict, and one task wakes every ``resolution`` seconds to
cancel the requests that are past their deadline. Deadlines are therefore honoured to within
``resolution`` (50 ms by default), far finer than the whole seconds ``routerTimeouts`` uses.

The loop is kept from ``start``: ``asyncio.get_running_loop`` (and ``current_task`` without a
loop) makes a getpid system call each time, which on every request added up to about 5% of the
router's CPU in a profile.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress


class Deadlines:
    def __init__(self, resolution: float = 0.05) -> None:
        self.resolution = resolution
        self._due: dict[asyncio.Task[object], float] = {}
        self._expired: set[asyncio.Task[object]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.create_task(self._sweep())

    def current_task(self) -> asyncio.Task[object] | None:
        """The running task (``asyncio.current_task``, without looking the loop up again)."""
        return asyncio.current_task(self._loop or asyncio.get_running_loop())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def add(self, task: asyncio.Task[object], seconds: float) -> None:
        self._due[task] = (self._loop or asyncio.get_running_loop()).time() + seconds

    def remove(self, task: asyncio.Task[object]) -> bool:
        """Stop watching ``task``; True if it was cancelled for running past its deadline."""
        self._due.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.resolution)
            if not self._due:
                continue
            now = loop.time()
            overdue = [task for task, due in self._due.items() if due <= now]
            for task in overdue:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
